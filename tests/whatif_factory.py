"""Planted-defect models for the what-if tests, built from ``factory``'s builders.

``planted(code)`` returns ``(model, source)`` with one defect whose mechanical
fix is ``FIX_FOR[code]``; ``two_defects()`` plants two independent defects.
"""

from __future__ import annotations

import hashlib

import numpy as np
from factory import case_like, conv_like, model, normal_inputs, with_acts, with_weights

from lstm_doctor.load.inputs import InputSource

H, D = 16, 8

# The defect's code -> the fix that should rank first.
FIX_FOR = {
    "W101": "center-weights",
    "W102": "rescale-recurrent",
    "W103": "forget-bias-1",
    "A201": "tanh-cell-output",
    "A202": "sigmoid-gates",
    "A203": "tanh-candidate",
    "I501": "standardize-inputs",
    "I502": "rescale-inputs",
    "I506": "mask-padding",
}


def healthy():
    return model(D, H, init="torch", seed=0)


def source(x: np.ndarray, layout: str = "btd", lengths=None) -> InputSource:
    return InputSource(array=x, layout=layout, lengths=lengths)


def planted(code: str):
    m = healthy()
    p = m.layers[0].forward
    x = normal_inputs(D=D)
    if code == "W101":  # every gate block of W and U offset by +0.5 (std ≈ 0.14)
        return with_weights(m, W=p.W + 0.5, U=p.U + 0.5), source(x)
    if code == "W102":  # zero-mean U, 25× too large
        return with_weights(m, U=p.U * 25), source(x)
    if code == "W103":  # forget bias −8: memory wiped at every step
        b = np.array(p.b)
        b[H : 2 * H] = -8
        return with_weights(m, b=b), source(x)
    if code == "A201":
        return with_acts(m, cell_output="sigmoid"), source(x)
    if code == "A202":
        return with_acts(m, gate="tanh"), source(x)
    if code == "A203":
        return with_acts(m, candidate="sigmoid"), source(x)
    if code == "I501":  # inputs 1e-4 of unit scale
        return m, source(normal_inputs(D=D, scale=1e-4))
    if code == "I502":  # inputs 40× unit scale
        return m, source(normal_inputs(D=D, scale=40))
    if code == "I506":  # 25 trailing zero steps of 40, no lengths
        x = normal_inputs(D=D, T=40)
        x[:, 15:] = 0
        return m, source(x)
    raise KeyError(code)


def two_defects():
    """h = o·σ(c) (A201) and inputs 1e-4 of unit scale (I501): independent defects."""
    return with_acts(healthy(), cell_output="sigmoid"), source(normal_inputs(D=D, scale=1e-4))


def time_axis_suspect():
    """CASE.md's defect 4 alone: (B, 128 channels, 10 positions) read as 128 steps of 10 features."""
    return model(10, H, init="torch"), source(conv_like(C=128))


def case_like_pair():
    """factory.case_like (CASE.md's encoder, H=64) on conv-like inputs read as 64 steps of 10 features."""
    return case_like(), source(conv_like(C=64)[:, :, :10])


def model_digest(m) -> str:
    """A hash of every array, activation and layout of ``m``."""
    h = hashlib.sha256()
    for k, d, layer, params in m.units():
        h.update(f"{k}{d}{layer.activations}{layer.clip}".encode())
        for name, arr in sorted(params.arrays().items()):
            h.update(name.encode())
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
    h.update(f"{m.input_layout}{m.notes}".encode())
    return h.hexdigest()


def file_digests(folder) -> dict[str, str]:
    from pathlib import Path

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }
