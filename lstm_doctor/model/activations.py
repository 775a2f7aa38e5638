"""The activation functions an LSTM may be configured with, in NumPy.

Each activation has a name (the public spelling used in specs, JSON and
findings), a NumPy implementation, and the facts the analyzers need: its
range, whether it is zero-centred and bounded. The symbolic (PyTensor/Theano)
versions live in ``lstm_doctor.capture.symbolic.scan`` and are tested against these.

``hard_sigmoid`` is the Theano / Keras 2 / ONNX form ``clip(0.2·x + 0.5, 0, 1)``.
``hard_sigmoid6`` is the Keras 3 form ``relu6(x + 3) / 6 = clip(x/6 + 0.5, 0, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lstm_doctor.errors import ConfigError


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5·tanh(0.5·x) + 0.5 is exact, overflow-free and uses NumPy's SIMD tanh.
    out = np.tanh(x * 0.5)
    out *= 0.5
    out += 0.5
    return out


def _hard_sigmoid(x):
    return np.clip(0.2 * x + 0.5, 0.0, 1.0).astype(x.dtype, copy=False)


def _hard_sigmoid6(x):
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0).astype(x.dtype, copy=False)


def _softplus(x):
    return np.logaddexp(0, x).astype(x.dtype, copy=False)


def _softsign(x):
    return x / (1 + np.abs(x))


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    low: float  # infimum of the range
    high: float  # supremum of the range
    equation: str  # how it is spelled in a finding, e.g. "σ"

    @property
    def bounded(self) -> bool:
        return np.isfinite(self.low) and np.isfinite(self.high)

    @property
    def zero_centred(self) -> bool:
        """Symmetric range around 0 (tanh-like): can both add to and subtract from."""
        return self.bounded and self.low == -self.high

    @property
    def symmetric(self) -> bool:
        """Range symmetric around 0 (tanh, identity): a candidate can add and subtract."""
        return self.low == -self.high

    @property
    def gate_like(self) -> bool:
        """Range within [0, 1]: usable as a multiplicative gate."""
        return self.low >= 0.0 and self.high <= 1.0


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("sigmoid", _sigmoid, 0.0, 1.0, "σ"),
        Activation("hard_sigmoid", _hard_sigmoid, 0.0, 1.0, "hard_σ"),
        Activation("hard_sigmoid6", _hard_sigmoid6, 0.0, 1.0, "hard_σ6"),
        Activation("tanh", np.tanh, -1.0, 1.0, "tanh"),
        Activation("softsign", _softsign, -1.0, 1.0, "softsign"),
        Activation("identity", lambda x: x, -np.inf, np.inf, "id"),
        Activation("relu", lambda x: np.maximum(x, 0), 0.0, np.inf, "relu"),
        Activation("softplus", _softplus, 0.0, np.inf, "softplus"),
    ]
}

# Other spellings found in Keras, ONNX and Lasagne configurations.
ALIASES = {
    "linear": "identity",
    "affine": "identity",
    "none": "identity",
    "logistic": "sigmoid",
    "rectify": "relu",
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name (case-insensitive, common aliases accepted)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[key]


def activation_derivative(name: str, value: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The derivative of activation ``name`` expressed through its output value, in ``dtype``."""
    v = np.asarray(value, dtype)
    if name == "sigmoid":
        return v * (1 - v)
    if name == "tanh":
        return 1 - v * v
    if name == "hard_sigmoid":
        return np.where((v > 0) & (v < 1), 0.2, 0.0).astype(dtype)
    if name == "hard_sigmoid6":
        return np.where((v > 0) & (v < 1), 1 / 6, 0.0).astype(dtype)
    if name == "identity":
        return np.ones_like(v)
    if name == "relu":
        return (v > 0).astype(dtype)
    if name == "softsign":
        return (1 - np.abs(v)) ** 2
    if name == "softplus":
        return 1 - np.exp(-v)
    raise ValueError(f"no derivative for activation {name!r}")
