"""lstm_doctor: a command-line doctor for LSTM layers, and its Python API.

Pipeline (one module or folder per stage):
load → model → scan (capture) → stats (streaming) → analyzers (findings) → report.

``lstm_doctor.diagnose(model, batch)`` (``lstm_doctor.api``) diagnoses a live
PyTorch or Keras model, or a model file; ``lstm_doctor.callbacks`` watches
training. They are imported on first use, so ``import lstm_doctor`` stays light
(no NumPy-heavy module, no torch, no keras).
"""

import importlib

__version__ = "0.1.0"

__all__ = ["__version__", "diagnose", "Report", "callbacks"]


def __getattr__(name: str):
    if name in ("diagnose", "Report"):
        from lstm_doctor import api

        return getattr(api, name)
    if name == "callbacks":
        return importlib.import_module("lstm_doctor.callbacks")
    raise AttributeError(f"module 'lstm_doctor' has no attribute {name!r}")
