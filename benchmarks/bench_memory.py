"""Peak memory and time of `lstm-doctor diagnose` against the number of sequences.

    python benchmarks/bench_memory.py [--n 2000 5000 20000] [--T 150 --D 256 --H 256] [--chunk-size N]

For each N it writes a memory-mapped float32 input (N, T, D) to a temporary
folder (N = 20,000 at T = 150, D = 256 is 3.07 GB), a 256-unit model in the
native format next to it, and runs `lstm-doctor diagnose MODEL --inputs X.npy
--format json` as a subprocess under `/usr/bin/time -v` (or, without it, with
`resource.getrusage(RUSAGE_CHILDREN)`), reporting the peak resident set size
and the wall time. Everything it wrote is deleted at the end.

The input is generated in blocks of sequences (an AR(1) process along time,
standardised features), so writing it needs no more memory than a block.
Set the thread count with --threads (default 1, as the speed benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_inputs(path: Path, N: int, T: int, D: int, seed: int = 0, block: int = 500) -> None:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(N, T, D))
    for start in range(0, N, block):
        n = min(block, N - start)
        noise = rng.standard_normal((n, T, D), dtype=np.float32)
        x = np.empty_like(noise)
        x[:, 0] = noise[:, 0]
        for t in range(1, T):  # AR(1) along time: neighbouring steps correlate
            x[:, t] = 0.8 * x[:, t - 1] + 0.6 * noise[:, t]
        out[start : start + n] = x
    out.flush()
    del out


def write_model(folder: Path, D: int, H: int, seed: int = 0) -> Path:
    from lstm_doctor.load.native import save
    from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction

    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    params = make_direction(
        rng.uniform(-k, k, (D, 4 * H)),
        rng.uniform(-k, k, (H, 4 * H)),
        rng.uniform(-k, k, 4 * H) + rng.uniform(-k, k, 4 * H),
        dtype=np.float32,
    )
    model = LSTMModel((Layer(params, None, Activations()),), name="bench256")
    save(model, folder)
    return folder


def lstm_doctor_command() -> list[str]:
    exe = shutil.which("lstm-doctor", path=str(Path(sys.executable).parent)) or shutil.which("lstm-doctor")
    return [exe] if exe else [sys.executable, "-m", "lstm_doctor"]


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; return wall seconds, peak RSS (MB) and the exit code."""
    time_bin = shutil.which("time", path="/usr/bin:/bin")
    started = time.perf_counter()
    if time_bin:
        proc = subprocess.run([time_bin, "-v", *cmd], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak_mb = int(match.group(1)) / 1024 if match else float("nan")
        probe = "/usr/bin/time -v"
    else:  # the largest child so far: run each N in a fresh parent to be exact
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        probe = "getrusage(RUSAGE_CHILDREN)"
    return {"wall_s": wall, "peak_rss_mb": peak_mb, "exit_code": proc.returncode, "probe": probe,
            "stderr_tail": proc.stderr.strip().splitlines()[-3:] if proc.returncode not in (0, 1) else []}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 5000, 20000])
    ap.add_argument("--T", type=int, default=150)
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, help="pass --chunk-size to diagnose (default: the CLI's)")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--dir", help="where to write the inputs (default: a new folder under /tmp)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="lstm-doctor-mem-", dir=args.dir or "/tmp"))
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = args.threads
    rows = []
    try:
        model = write_model(root / "model", args.D, args.H)
        print(f"T={args.T} D={args.D} H={args.H} float32; model {model}; threads {args.threads}")
        print(f"{'N':>7} {'input GB':>9} {'peak RSS MB':>12} {'wall s':>8} {'ms per seq':>11}  exit")
        for N in args.n:
            x_path = root / f"x_{N}.npy"
            write_inputs(x_path, N, args.T, args.D)
            size_gb = x_path.stat().st_size / 1e9
            cmd = lstm_doctor_command() + ["diagnose", str(model), "--inputs", str(x_path), "--format", "json",
                                           "--output", str(root / f"report_{N}.json"), "--exit-zero"]
            if args.chunk_size:
                cmd += ["--chunk-size", str(args.chunk_size)]
            result = run_measured(cmd, env)
            x_path.unlink()
            row = {"N": N, "input_gb": size_gb, **result}
            rows.append(row)
            print(f"{N:7d} {size_gb:9.2f} {result['peak_rss_mb']:12.0f} {result['wall_s']:8.1f} "
                  f"{1000 * result['wall_s'] / N:11.2f}  {result['exit_code']} {' '.join(result['stderr_tail'])}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
