"""Regenerate this folder's files: python examples/tweet2vec_like/make_example.py

The generator lives in ``lstm_doctor/example.py`` (so ``lstm-doctor demo`` can
rebuild the same files where no checkout exists); its docstring says what each
file is and which case-study defect it carries. Seeded: the output is reproducible.
"""

from pathlib import Path

from lstm_doctor.example import write_example

if __name__ == "__main__":
    print(f"wrote the example to {write_example(Path(__file__).resolve().parent)}")
