"""Capture speed: lstm_doctor against PyTorch nn.LSTM (and Keras 3), same process, same run.

    python benchmarks/bench_capture.py [--T 150 --B 256 --D 256 --H 256 --repeats 5 --threads 1]
    python benchmarks/bench_capture.py --scaling         # time vs N, T and H (lstm_doctor only)
    python benchmarks/bench_capture.py --json out.json   # also write the numbers

Every implementation runs the same float32 workload (B sequences of T steps of
D features, one LSTM layer of H units, the same weights). They run in
alternation, round after round (the order rotates each round), after one
warm-up call each, so that a noisy neighbour or a frequency change hits all of
them alike. The table shows medians and each median's ratio to nn.LSTM's median
in the same run.

Threads: the thread count (default 1) is set in the environment before NumPy is
imported (OMP/OpenBLAS/MKL), again through threadpoolctl when it is installed,
and with torch.set_num_threads. ``--unset-openblas-coretype`` drops
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from this process's environment before
NumPy loads OpenBLAS (some machines set them for old OpenBLAS builds; they slow
a current NumPy); the header says which were in effect.
"""

from __future__ import annotations

import os
import sys


def _early_argument(name: str, default: str | None = None) -> str | None:
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


# Must happen before NumPy (and its BLAS) is imported.
THREADS = _early_argument("--threads", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = THREADS
OPENBLAS_ENV_BEFORE = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
if "--unset-openblas-coretype" in sys.argv:
    os.environ.pop("OPENBLAS_CORETYPE", None)
    os.environ.pop("OPENBLAS_L2_SIZE", None)
os.environ.setdefault("KERAS_BACKEND", "numpy")  # only read by Keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import numpy as np  # noqa: E402

try:  # optional: pins the BLAS pools and says which kernel OpenBLAS chose
    import threadpoolctl
except ImportError:  # pragma: no cover
    threadpoolctl = None


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = []
    if threadpoolctl is not None:
        for pool in threadpoolctl.threadpool_info():
            blas.append(
                {
                    k: pool.get(k)
                    for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")
                }
            )
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "threads": int(THREADS),
        "blas": blas,
        "openblas_env_at_start": OPENBLAS_ENV_BEFORE,
        "openblas_env_in_run": {k: os.environ.get(k) for k in OPENBLAS_ENV_BEFORE},
    }


def make_model(D: int, H: int, seed: int = 0):
    """One float32 layer with PyTorch's default init (uniform ±1/√H)."""
    from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction

    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    W = rng.uniform(-k, k, (D, 4 * H))
    U = rng.uniform(-k, k, (H, 4 * H))
    b = rng.uniform(-k, k, 4 * H) + rng.uniform(-k, k, 4 * H)
    params = make_direction(W, U, b, dtype=np.float32)
    return LSTMModel((Layer(params, None, Activations()),), name="bench")


def implementations(model, x_btd: np.ndarray, *, pytensor: bool, keras: bool, torch_ok: bool) -> dict:
    """name -> zero-argument callable running the workload once."""
    from lstm_doctor.capture.engines import run_chunk
    from lstm_doctor.capture.numpy_loop import (
        CAPTURE_FULL,
        CAPTURE_HIDDEN,
        run_direction,
    )
    from lstm_doctor.capture.pipeline import CaptureOptions, capture
    from lstm_doctor.load.inputs import InputSource

    layer = model.layers[0]
    params = layer.forward
    source = InputSource(x_btd, "btd")
    x_tbd = np.ascontiguousarray(x_btd.transpose(1, 0, 2))
    B = x_btd.shape[0]
    impls = {
        FUSED: lambda: capture(model, source, CaptureOptions(engine="fused")),
        "lstm_doctor capture, full statistics, --engine numpy": lambda: capture(
            model, source, CaptureOptions(engine="numpy")
        ),
        "lstm_doctor capture, h only": lambda: run_chunk(model, x_tbd, None, "numpy", CAPTURE_HIDDEN),
        "NumPy reference, all gates kept (no statistics)": lambda: run_direction(
            params, layer, x_tbd, None, CAPTURE_FULL
        ),
    }
    if pytensor:
        impls["lstm_doctor capture, full statistics, --engine pytensor"] = lambda: capture(
            model, source, CaptureOptions(engine="pytensor", chunk_size=B)
        )
    if torch_ok:
        import torch

        torch.set_num_threads(int(THREADS))
        lstm = torch.nn.LSTM(params.D, params.H)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(params.W.T)))
            lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(params.U.T)))
            lstm.bias_ih_l0.copy_(torch.from_numpy(np.array(params.b)))
            lstm.bias_hh_l0.zero_()
        xt = torch.from_numpy(x_tbd)

        def torch_forward():
            with torch.no_grad():
                return lstm(xt)

        impls["PyTorch nn.LSTM forward (h only, fused)"] = torch_forward
    if keras:
        import keras as K

        klayer = K.layers.LSTM(params.H, return_sequences=True)
        klayer.build((B, x_btd.shape[1], params.D))
        klayer.set_weights([np.array(params.W), np.array(params.U), np.array(params.b)])
        impls["Keras 3 LSTM, numpy backend (h only)"] = lambda: klayer(x_btd)
    return impls


TORCH = "PyTorch nn.LSTM forward (h only, fused)"
FUSED = "lstm_doctor capture, full streaming statistics, --engine fused"


def check_agreement(model, x_btd, torch_ok: bool) -> float | None:
    """Max |h| difference between lstm_doctor's reference and nn.LSTM (sanity check)."""
    if not torch_ok:
        return None
    import torch

    from lstm_doctor.capture.numpy_loop import CAPTURE_HIDDEN, run_direction

    params = model.layers[0].forward
    x_tbd = np.ascontiguousarray(x_btd.transpose(1, 0, 2))
    ours = run_direction(params, model.layers[0], x_tbd, None, CAPTURE_HIDDEN).h
    lstm = torch.nn.LSTM(params.D, params.H)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(params.W.T)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(params.U.T)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(np.array(params.b)))
        lstm.bias_hh_l0.zero_()
        theirs = lstm(torch.from_numpy(x_tbd))[0].numpy()
    return float(np.abs(ours - theirs).max())


def run_rounds(impls: dict, repeats: int) -> dict[str, list[float]]:
    names = list(impls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up: imports, JIT/compile caches, page faults
        impls[name]()
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            started = time.perf_counter()
            impls[name]()
            times[name].append(time.perf_counter() - started)
    return times


def gemm_rate(T: int, B: int, D: int, H: int) -> dict:
    """Single-call GEMM rates of this NumPy/BLAS on the workload's two GEMM shapes."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T * B, D), dtype=np.float32)
    W = rng.standard_normal((D, 4 * H), dtype=np.float32)
    h = rng.standard_normal((B, H), dtype=np.float32)
    U = rng.standard_normal((H, 4 * H), dtype=np.float32)
    out_big = np.empty((T * B, 4 * H), np.float32)
    out_step = np.empty((B, 4 * H), np.float32)

    def best(f, n):
        f()
        times = []
        for _ in range(n):
            s = time.perf_counter()
            f()
            times.append(time.perf_counter() - s)
        return statistics.median(times)

    big = best(lambda: np.matmul(x, W, out=out_big), 5)

    def steps():
        for _ in range(T):
            np.matmul(h, U, out=out_step)

    step = best(steps, 5)
    flops = 2.0 * T * B * D * 4 * H
    flops_rec = 2.0 * T * B * H * 4 * H
    return {
        "input_gemm_seconds": big,
        "input_gemm_gflops": flops / big / 1e9,
        "recurrent_gemms_seconds": step,
        "recurrent_gemm_gflops": flops_rec / step / 1e9,
        "gemm_bound_seconds": big + step,
    }


def workload_flops(T, B, D, H) -> float:
    return 2.0 * T * B * 4 * H * (D + H)


def print_table(times: dict[str, list[float]], T, B, D, H) -> dict:
    med = {n: statistics.median(v) for n, v in times.items()}
    ref = med.get(TORCH)
    flops = workload_flops(T, B, D, H)
    width = max(len(n) for n in med)
    print(f"\n{'implementation':<{width}}  {'median s':>9}  {'min s':>7}  {'× nn.LSTM':>9}  {'GFLOP/s':>7}")
    rows = {}
    for name, m in med.items():
        ratio = m / ref if ref else float("nan")
        rows[name] = {"median": m, "min": min(times[name]), "ratio_to_torch": ratio, "gflops": flops / m / 1e9,
                      "all": times[name]}
        print(f"{name:<{width}}  {m:9.3f}  {min(times[name]):7.3f}  {ratio:9.2f}  {flops / m / 1e9:7.1f}")
    return rows


def scaling(repeats: int, torch_ok: bool) -> list[dict]:
    """Time of the default capture against N (sequences), T and H, with the GEMM bound."""
    from lstm_doctor.capture.pipeline import CaptureOptions, capture
    from lstm_doctor.load.inputs import InputSource

    grid = []
    for N in (64, 128, 256, 512, 1024):
        grid.append((N, 150, 256))
    for T in (50, 100, 300):
        grid.append((256, T, 256))
    for H in (64, 128, 512):
        grid.append((256, 150, H))
    out = []
    print(f"\n{'N':>5} {'T':>4} {'H':>4}  {'capture s':>9}  {'µs per N·T':>10}  {'GEMM bound s':>12}  {'GEMM share':>10}"
          f"  {'nn.LSTM s':>9}  {'×':>5}")
    for N, T, H in grid:
        D = H
        model = make_model(D, H)
        x = np.random.default_rng(0).standard_normal((N, T, D), dtype=np.float32)
        source = InputSource(x, "btd")
        run = lambda: capture(model, source, CaptureOptions(engine="fused"))  # noqa: E731
        impls = {"capture": run}
        if torch_ok:
            import torch

            lstm = torch.nn.LSTM(D, H)
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))

            def fwd():
                with torch.no_grad():
                    lstm(xt)

            impls["torch"] = fwd
        times = run_rounds(impls, repeats)
        t = statistics.median(times["capture"])
        tt = statistics.median(times["torch"]) if torch_ok else float("nan")
        bound = gemm_rate(T, min(N, CaptureOptions().chunk_size), D, H)["gemm_bound_seconds"] * (
            N / min(N, CaptureOptions().chunk_size)
        )
        row = {"N": N, "T": T, "H": H, "D": D, "capture_s": t, "us_per_seq_step": t / (N * T) * 1e6,
               "gemm_bound_s": bound, "gemm_share": bound / t, "torch_s": tt, "ratio": t / tt}
        out.append(row)
        print(f"{N:5d} {T:4d} {H:4d}  {t:9.3f}  {row['us_per_seq_step']:10.2f}  {bound:12.3f}  {bound / t:10.0%}"
              f"  {tt:9.3f}  {t / tt:5.2f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=150)
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-pytensor", action="store_true", help="skip the PyTensor engine")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--unset-openblas-coretype", action="store_true",
                    help="drop OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this run")
    ap.add_argument("--scaling", action="store_true", help="time vs N, T, H instead of the comparison")
    ap.add_argument("--json", help="write all numbers to this file")
    args = ap.parse_args(argv)

    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(args.threads)
    info = machine_info()
    print(f"{info['date']}  Python {info['python']}  NumPy {info['numpy']}  nproc {info['nproc']}  CPU {info['cpu']}")
    print(f"threads {args.threads}; BLAS {info['blas'] or 'threadpoolctl not installed'}")
    print(f"OPENBLAS_CORETYPE/L2_SIZE at start {info['openblas_env_at_start']}, in this run {info['openblas_env_in_run']}")

    try:
        import torch

        torch.set_num_threads(args.threads)
        info["torch"] = torch.__version__
        torch_ok = True
    except ImportError:
        torch_ok = False
        print("torch not installed: no nn.LSTM reference, ratios are n/a")
    result = {"machine": info, "args": vars(args)}

    if args.scaling:
        result["scaling"] = scaling(args.repeats, torch_ok)
    else:
        pytensor = False
        if not args.no_pytensor:
            try:
                import lstm_doctor.capture.symbolic.scan  # noqa: F401

                pytensor = True
                import pytensor as pt_module

                info["pytensor"] = pt_module.__version__
            except Exception as exc:  # ImportError, or a backend that does not build
                print(f"PyTensor engine not available: {exc}")
        keras = False
        if not args.no_keras:
            try:
                import keras as K

                keras = K.backend.backend() == "numpy"
                info["keras"] = K.__version__
                if not keras:
                    print(f"Keras backend is {K.backend.backend()}, not numpy: skipped")
            except Exception as exc:
                print(f"Keras not available: {exc}")
        T, B, D, H = args.T, args.B, args.D, args.H
        print(f"workload: T={T} B={B} D={D} H={H} float32, {workload_flops(T, B, D, H) / 1e9:.1f} GFLOP of GEMMs; "
              f"{args.repeats} rounds")
        model = make_model(D, H)
        x = np.random.default_rng(0).standard_normal((B, T, D), dtype=np.float32)
        diff = check_agreement(model, x, torch_ok)
        if diff is not None:
            print(f"h of the NumPy engine vs nn.LSTM: max |Δ| = {diff:.2g}")
        impls = implementations(model, x, pytensor=pytensor, keras=keras, torch_ok=torch_ok)
        times = run_rounds(impls, args.repeats)
        rows = print_table(times, T, B, D, H)
        gemm = gemm_rate(T, B, D, H)
        print(
            f"\nGEMM alone (this NumPy/BLAS): input projection {gemm['input_gemm_seconds']:.3f} s "
            f"({gemm['input_gemm_gflops']:.0f} GFLOP/s), {T} recurrent GEMMs {gemm['recurrent_gemms_seconds']:.3f} s "
            f"({gemm['recurrent_gemm_gflops']:.0f} GFLOP/s): GEMM bound {gemm['gemm_bound_seconds']:.3f} s"
        )
        from lstm_doctor.capture.engines import resolve_engine

        print(f"--engine auto picks {resolve_engine('auto', model, T, B)} here (fused whenever its C kernel is built)")
        result.update({"workload": {"T": T, "B": B, "D": D, "H": H}, "rows": rows, "gemm": gemm,
                       "max_abs_diff_vs_torch": diff})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
