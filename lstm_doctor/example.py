"""The bundled example: a Tweet2Vec-like encoder with the case study's defects, and its fixed twin.

``examples/tweet2vec_like/make_example.py`` calls ``write_example`` to produce
the committed files; ``lstm-doctor demo`` uses them from a source checkout and
regenerates the identical files (seeded) into a cache folder otherwise.
Writes (all small):

- ``conv_output.npy``  (B=96, C=256, L=10) float32: what a Theano/Lasagne conv
  stack hands the LSTM, channels-first, ReLU (non-negative, many exact zeros),
  values 0 to ~0.07, smooth along positions and unrelated across channels.
- ``broken/``  lstm.toml + weights.npz: H = 64, every gate weight (W, U,
  peepholes) drawn from Normal(mean=0.1, std=0.05) (defect 1), h = o·σ(c)
  (defect 2), raw tiny inputs (defect 3), and the conv output read as
  (batch, time, features): 256 "steps" of 10 features (defect 4, layout btd).
- ``fixed/``  the twin with all four fixed: uniform ±1/√H init with forget bias
  1, h = o·tanh(c), no peepholes, and the conv output read channels-first
  (layout bct: 10 steps of 256 features) from ``conv_output_standardized.npy``
  (per-channel zero mean, unit variance).

Both encoders are random (untrained): the example reproduces the case's
mechanics, not its trained weights. Seeded, so the files are reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

B, C, L, H = 96, 256, 10, 64
SEED = 2016  # Tweet2Vec's year


def conv_like_output(rng: np.random.Generator) -> np.ndarray:
    """(B, C, L) non-negative conv-like features: smooth over L, independent over C."""
    noise = rng.standard_normal((B, C, L + 4))
    kernel = np.array([1, 2, 3, 2, 1], dtype=np.float64) / 9.0  # overlap of receptive fields
    smooth = np.stack([np.convolve(row, kernel, mode="valid") for row in noise.reshape(-1, L + 4)])
    smooth = smooth.reshape(B, C, L) - 0.3 + rng.normal(0, 0.3, (1, C, 1))  # per-filter offset
    relu = np.maximum(smooth, 0.0)
    return (relu * (0.07 / relu.max())).astype(np.float32)


def write_model(folder: Path, arrays: dict, spec: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "weights.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
    (folder / "lstm.toml").write_text(spec.strip() + "\n", encoding="utf-8")


def write_example(folder: Path) -> Path:
    """Write the example files into folder ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x = conv_like_output(rng)
    np.save(folder / "conv_output.npy", x)
    mean = x.mean(axis=(0, 2), keepdims=True)
    std = x.std(axis=(0, 2), keepdims=True)
    np.save(folder / "conv_output_standardized.npy", ((x - mean) / np.where(std > 0, std, 1)).astype(np.float32))

    # Defect 1: Normal(mean=0.1, std=0.05) for every gate weight (a misread Normal(0.1)).
    D_broken = L  # defect 4: the 10 positions taken as features
    positive = lambda *shape: rng.normal(0.1, 0.05, shape)  # noqa: E731
    write_model(
        folder / "broken",
        {
            "W": positive(D_broken, 4 * H),
            "U": positive(H, 4 * H),
            "b": np.zeros(4 * H),
            "peephole": positive(3, H),
        },
        """
# Tweet2Vec-like encoder with the four defects of the case study, docs/case-study.md (see examples/tweet2vec_like/make_example.py).
[model]
name = "tweet2vec_like_broken"
weights = "weights.npz"
gate_order = "ifgo"
input_layout = "btd"          # defect 4: channels-first conv output read as (batch, time, features)

[activations]
gate = "sigmoid"
candidate = "tanh"
cell_output = "sigmoid"       # defect 2: h = o·σ(c) instead of o·tanh(c)

[[layers]]
W = "W"
U = "U"
b = "b"
peephole = "peephole"
""",
    )

    # The fixed twin: D = C channels, PyTorch-style init, forget bias 1, tanh.
    bound = 1.0 / np.sqrt(H)
    b = np.zeros(4 * H)
    b[H : 2 * H] = 1.0
    write_model(
        folder / "fixed",
        {
            "W": rng.uniform(-bound, bound, (C, 4 * H)),
            "U": rng.uniform(-bound, bound, (H, 4 * H)),
            "b": b,
        },
        """
# The fixed twin: zero-mean init with forget bias 1, h = o·tanh(c), time = conv positions.
[model]
name = "tweet2vec_like_fixed"
weights = "weights.npz"
gate_order = "ifgo"
input_layout = "bct"          # channels-first: 10 steps of 256 features

[activations]
gate = "sigmoid"
candidate = "tanh"
cell_output = "tanh"

[[layers]]
W = "W"
U = "U"
b = "b"
""",
    )
    return folder


def example_folder() -> Path:
    """The example folder: the checkout's ``examples/tweet2vec_like`` if present,
    else a cache folder where the (seeded, identical) files are generated once."""
    checkout = Path(__file__).resolve().parents[1] / "examples" / "tweet2vec_like"
    if (checkout / "broken" / "lstm.toml").is_file():
        return checkout
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm_doctor" / "tweet2vec_like"
    if not (cache / "fixed" / "lstm.toml").is_file():
        write_example(cache)
    return cache
