"""Candidates for a fast capture path that costs nothing to start, side by side.

    python benchmarks/bench_fastpath.py [--B 256 32 --T 150 --D 256 --H 256 --rounds 3 --calls 3]
    python benchmarks/bench_fastpath.py --json out.json

Every candidate captures one direction with ALL the streaming statistics (the
chunk tables of ``stats.DirectionReducer``, folded by ``finish``; a sample of
64 sequences), float32, one thread, on the same inputs and weights:

- ``numpy``: today's NumPy loop (``capture/numpy_loop.py`` + ``DirectionReducer``);
- ``numpy-blocks`` (a): the same loop with the statistics over blocks of
  steps at this size too (``BLOCK_BYTES`` raised from 4 MB to 64 MB: 13 steps
  per reducer call instead of 1, so ~20 fewer NumPy passes per step over the run);
- ``numexpr`` (b): the step's element-wise part (z, σ, tanh, c, h) in
  numexpr, the statistics in ``DirectionReducer`` (numexpr cannot express the
  reductions over rows that the statistics are);
- ``c`` (c): the ``fused`` engine with its C kernel (``_kernels.c``, built at install);
- ``numba-cached`` (d): the same engine with the previous Numba kernel
  (``benchmarks/_numba_kernel.py``), loaded from Numba's on-disk cache.
  (Numba's ahead-of-time compiler, ``numba.pycc``, is deprecated and was not tried.)

Each measurement is a fresh process (``--worker``). In it: NumPy and
lstm_doctor's own modules are imported first (every engine pays them), then
the clock starts, the candidate's own module is imported and the first capture
runs on 2 sequences of 2 steps: **start-up = import + that first call**
(what a process pays before its first real step). A first full-size call
follows (warm-up, ``first_s`` in the JSON). Then the candidate
and PyTorch's ``nn.LSTM`` forward (h only, the bar) alternate ``--calls``
times: steady time per capture, per step, and the ratio of the medians in that
process. Alternating with them, the floors: the capture's two GEMMs alone, as
the fused engine issues them, in NumPy's BLAS and in ``torch.mm`` (PyTorch's
BLAS), each as a ratio to ``nn.LSTM``'s whole forward in that process: a
capture that calls NumPy's BLAS cannot go below the first. The parent runs the workers round after round, the order rotating
each round, and reports medians and ranges over rounds, with the load average.
"""

# ruff: noqa: F841 -- the numexpr candidate's expressions read these locals by name
from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = ("numpy", "numpy-blocks", "numexpr", "c", "numba-cached")
KEEP = 64


def _numexpr_run(ne):
    """run_direction with the element-wise step in numexpr; statistics by the reducer."""
    import numpy as np

    from lstm_doctor.capture.numpy_loop import StepRecord, blas_threads_context, step_permutation

    def run(params, layer, x, mask, capture, *, observer, keep=0, keep_fields=None, final_h_only=False):
        T, B, D = x.shape
        H = params.H
        H3, H4 = 3 * H, 4 * H
        keep = min(keep, B)
        perm = step_permutation(H)
        W, U = np.ascontiguousarray(params.W[:, perm]), np.ascontiguousarray(params.U[:, perm])
        bias = np.ascontiguousarray(params.b[perm])
        xw, rec = np.empty((B, H4), np.float32), np.empty((B, H4), np.float32)
        z, act = np.empty((B, H4), np.float32), np.empty((B, H4), np.float32)
        actc = np.empty((B, H), np.float32)
        cells = np.empty((2, B, H), np.float32)
        h_seq = np.empty((T, B, H), np.float32)
        h = np.zeros((B, H), np.float32)
        c = np.zeros((B, H), np.float32)
        sample = {name: np.empty((T, keep, H), np.float32) for name in "ifgoc"}
        with blas_threads_context(B, D, H):
            for t in range(T):
                np.matmul(x[t], W, out=xw)
                np.matmul(h, U, out=rec)
                ne.evaluate("xw + rec + bias", out=z)
                zs, zg = z[:, :H3], z[:, H3:]
                ne.evaluate("1 / (1 + exp(-zs))", out=act[:, :H3])
                ne.evaluate("tanh(zg)", out=act[:, H3:])
                i, f, o, g = act[:, :H], act[:, H : 2 * H], act[:, 2 * H : H3], act[:, H3:]
                c_new, h_new = cells[t % 2], h_seq[t]
                ne.evaluate("f * c + i * g", out=c_new)
                ne.evaluate("tanh(c_new)", out=actc)
                ne.evaluate("o * actc", out=h_new)
                observer.step(t, x[t], xw, rec, None, z, act, actc, c_new, h_new, h)
                for j, name in enumerate("ifog"):
                    sample[name][t] = act[:keep, j * H : (j + 1) * H]
                sample["c"][t] = c_new[:keep]
                c, h = c_new, h_new
        out = StepRecord(h=h_seq, c=None, bias=params.b)
        out.sample = StepRecord(h=h_seq[:, :keep].copy(), bias=params.b, **sample)
        return out

    return run


class _NumbaKernels:
    """The Numba kernel behind the C kernel's calling convention."""

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        return getattr(self.module, name)

    def fused_step(self, t, T, B, H, K, *rest):
        return self.module.fused_step(t, *rest)


def setup_candidate(name: str):
    """Import what the candidate needs beyond NumPy and lstm_doctor; its run_direction."""
    if name in ("numpy", "numpy-blocks"):
        from lstm_doctor.capture import numpy_loop

        if name == "numpy-blocks":
            numpy_loop.BLOCK_BYTES = 64 * 1024 * 1024
        return numpy_loop.run_direction
    if name == "numexpr":
        import numexpr

        numexpr.set_num_threads(1)
        return _numexpr_run(numexpr)
    from lstm_doctor.capture.fused import engine

    if name == "c":
        engine.kernels()  # imports the extension
        return engine.run_direction
    if name == "numba-cached":
        sys.path.insert(0, HERE)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import _numba_kernel
        engine._KERNELS = _NumbaKernels(_numba_kernel)
        return engine.run_direction
    raise SystemExit(f"unknown candidate {name}")


def worker(args) -> dict:
    import numpy as np

    from lstm_doctor.capture.numpy_loop import CAPTURE_STATS
    from lstm_doctor.capture.pipeline import DEFAULT_SAMPLE_FIELDS
    from lstm_doctor.stats import DirectionStats, StatsConfig

    sys.path.insert(0, HERE)
    from bench_capture import make_model

    T, B, D, H = args.T, args.B[0], args.D, args.H
    model = make_model(D, H)
    layer, params = model.layers[0], model.layers[0].forward
    x = np.random.default_rng(0).standard_normal((T, B, D), dtype=np.float32)

    def capture(run, x=x):
        T, B = x.shape[:2]
        st = DirectionStats.empty(0, "fwd", T, H, StatsConfig())
        r = st.reducer(B, None, layer, params.h0, np.float32, params)
        # final_h_only: a one-layer model's h, as the pipeline asks for it (the encoding reads its final step)
        run(params, layer, x, None, CAPTURE_STATS, observer=r, keep=KEEP, keep_fields=DEFAULT_SAMPLE_FIELDS,
            final_h_only=True)
        r.finish()
        return st

    tiny = np.ascontiguousarray(x[:2, :2])
    t0 = time.perf_counter()
    run = setup_candidate(args.worker)
    t_import = time.perf_counter() - t0
    capture(run, tiny)  # the first call, on 2 sequences of 2 steps: what starting costs
    t_startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    capture(run)
    t_first = time.perf_counter() - t0

    import torch

    torch.set_num_threads(1)
    lstm = torch.nn.LSTM(D, H)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(params.W.T)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(params.U.T)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(np.array(params.b)))
        lstm.bias_hh_l0.zero_()
    xt = torch.from_numpy(x)

    def forward():
        with torch.no_grad():
            return lstm(xt)

    forward()
    numpy_gemms, torch_gemms = gemm_floors(torch, params, x)
    numpy_gemms(), torch_gemms()
    times = {"ours": [], "torch": [], "numpy_gemm": [], "torch_gemm": []}
    for _ in range(args.calls):
        for key, call in (("ours", lambda: capture(run)), ("torch", forward), ("numpy_gemm", numpy_gemms),
                          ("torch_gemm", torch_gemms)):
            s = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - s)
    steady, bar = statistics.median(times["ours"]), statistics.median(times["torch"])
    floor, torch_floor = statistics.median(times["numpy_gemm"]), statistics.median(times["torch_gemm"])
    return {
        "candidate": args.worker, "B": B, "import_s": t_import, "first_s": t_first,
        "startup_s": t_startup, "steady_s": steady, "torch_s": bar, "ratio": steady / bar,
        "step_ms": steady / T * 1e3, "numpy_gemm_s": floor, "torch_gemm_s": torch_floor,
        "floor_ratio": floor / bar, "torch_floor_ratio": torch_floor / bar,
    }


def gemm_floors(torch, params, x):
    """The capture's two GEMMs alone, as the fused engine issues them (x·W a block of
    steps at a time, then one h·U per step), in NumPy's BLAS and in PyTorch's
    ``torch.mm`` (the BLAS ``nn.LSTM``'s build links): what any capture that calls
    NumPy's BLAS pays before its first element-wise operation."""
    import numpy as np

    from lstm_doctor.capture.fused.engine import input_block_steps

    T, B, D = x.shape
    H4 = params.W.shape[1]
    W, U = np.ascontiguousarray(params.W, np.float32), np.ascontiguousarray(params.U, np.float32)
    steps = input_block_steps(B, H4 // 4, T)
    xw = np.empty((steps * B, H4), np.float32)
    rec = np.empty((B, H4), np.float32)
    h = np.full((B, H4 // 4), 0.1, np.float32)
    arrays = (x, W, U, xw, rec, h)
    tensors = tuple(torch.from_numpy(a) for a in arrays)

    def gemms(mm, x, W, U, xw, rec, h):  # mm(a, b, out=): np.matmul or torch.mm
        for t in range(T):
            if t % steps == 0:
                n = min(steps, T - t)
                mm(x[t : t + n].reshape(n * B, D), W, out=xw[: n * B])
            mm(h, U, out=rec)

    return (lambda: gemms(np.matmul, *arrays)), (lambda: gemms(torch.mm, *tensors))


def spread(values) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, nargs="+", default=[256, 32])
    p.add_argument("--T", type=int, default=150)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    results, loads = [], [os.getloadavg()[0]]
    print(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}  T={args.T} D={args.D} H={args.H}, "
          f"one thread, {args.rounds} rounds x {args.calls} calls; load {loads[0]:.2f}")
    for B in args.B:
        for k in range(args.rounds):
            order = args.candidates[k % len(args.candidates):] + args.candidates[: k % len(args.candidates)]
            for name in order:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--B", str(B), "--T", str(args.T),
                       "--D", str(args.D), "--H", str(args.H), "--calls", str(args.calls)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    print(f"{name} B={B}: failed\n{out.stderr.strip()[-400:]}")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["round"] = k
                results.append(row)
                loads.append(os.getloadavg()[0])
    print(f"load average (1 min) during the run: {min(loads):.2f}–{max(loads):.2f}\n")
    print("| candidate | B | start-up s (import + first tiny call) | import s | steady s per capture | ms per step "
          "| nn.LSTM s | × nn.LSTM | NumPy's GEMMs alone × nn.LSTM | torch.mm GEMMs alone × nn.LSTM |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for B in args.B:
        for name in args.candidates:
            rows = [r for r in results if r["candidate"] == name and r["B"] == B]
            if not rows:
                continue
            col = lambda key: [r[key] for r in rows]  # noqa: E731
            print(f"| {name} | {B} | {spread(col('startup_s'))} | {spread(col('import_s'))} | {spread(col('steady_s'))} "
                  f"| {statistics.median(col('step_ms')):.2f} | {spread(col('torch_s'))} | **{spread(col('ratio'))}** "
                  f"| {spread(col('floor_ratio'))} | {spread(col('torch_floor_ratio'))} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "loads": loads}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
