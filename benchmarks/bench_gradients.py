"""Gradient flow's cost against the capture's (issue 18 item 3): not a test, a measurement.

    python benchmarks/bench_gradients.py [--pytensor]

Times, in one process, the capture of (a) the bundled demo's broken encoder on
its inputs and (b) a random encoder at B = 256, T = 150, D = H = 256, then
``analyze_gradients`` on the capture's sample with the NumPy backward
recursion (the default) and, with ``--pytensor``, PyTensor's grad (compile
included, first call). The capture and the NumPy path alternate over
``ROUNDS`` rounds (the machine's load drifts between them); the line gives
both medians, their spread (min–max), the ratio of the medians and that of
the minima (the closest to a quiet machine when other processes share the
cores), with the 1-minute load average.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from lstm_doctor.capture.pipeline import CaptureOptions, capture
from lstm_doctor.experiments.gradients import analyze_gradients
from lstm_doctor.load import load_model
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import Layer, LSTMModel, make_direction


def demo():
    from lstm_doctor.example import example_folder

    folder = example_folder()
    return load_model(folder / "broken"), np.load(folder / "conv_output.npy")


def large(B=256, T=150, D=256, H=256):
    rng = np.random.default_rng(0)
    k = 1 / np.sqrt(H)
    d = make_direction(rng.uniform(-k, k, (D, 4 * H)), rng.uniform(-k, k, (H, 4 * H)), np.zeros(4 * H),
                       dtype=np.float32)
    return LSTMModel((Layer(d),), name="large"), rng.standard_normal((B, T, D)).astype(np.float32)


ROUNDS = 5


def measure(name, m, x, with_pytensor):
    source = InputSource(array=x, layout=m.input_layout)
    caps, grads, calls = [], [], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        cap = capture(m, source, CaptureOptions(engine="auto"))
        caps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        g = analyze_gradients(cap)
        grads.append(time.perf_counter() - t0)
        calls.append(g.extra["gradient_call_seconds"])
    cap_s, total, call = (float(np.median(v)) for v in (caps, grads, calls))
    line = (f"{name}: capture {cap_s:.3f} s ({min(caps):.3f}-{max(caps):.3f}, {cap.engine}); "
            f"gradients (numpy) {total:.3f} s ({min(grads):.3f}-{max(grads):.3f}; recursion {call:.3f} s) "
            f"= {100 * total / cap_s:.1f}% of the capture (minima: {100 * min(grads) / min(caps):.1f}%); T={g.T} H={m.layers[0].H} sequences={g.sequences} "
            f"probes={g.probes} exact={g.exact}; load {os.getloadavg()[0]:.2f}")
    if with_pytensor:
        t0 = time.perf_counter()
        analyze_gradients(cap, method="pytensor")
        line += f"; pytensor first call {time.perf_counter() - t0:.2f} s"
    print(line, flush=True)


if __name__ == "__main__":
    pt = "--pytensor" in sys.argv
    measure("demo (broken)", *demo(), pt)
    measure("B=256 T=150 D=H=256", *large(), pt)
