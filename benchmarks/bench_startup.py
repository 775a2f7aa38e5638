"""Wall time of short commands: --help, rules, explain, inspect (a .keras and a .pt of the
corpus: reading a model, the target is under 0.3 s), and the demo warm and cold.

    python benchmarks/bench_startup.py [--repeats 7] [--demo-repeats 3] [--json out.json]

Each command runs as a subprocess, as a user types it; the table shows the
median and the minimum wall time.

- "warm" runs the environment as it is, after one untimed run.
- "warm, bytecode cached" unsets PYTHONDONTWRITEBYTECODE and points
  PYTHONPYCACHEPREFIX at a folder that the untimed run fills: lstm_doctor's own
  modules are then not recompiled (an ordinary install, where pip compiles
  them, behaves so).
- "cold" points PYTHONPYCACHEPREFIX at a new empty folder for every run, so
  every imported module (the standard library, NumPy, rich, click, lstm_doctor)
  is compiled from source, and PYTENSOR_FLAGS at a new compile directory: the
  first run on a fresh machine, minus the disk cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def lstm_doctor_command() -> list[str]:
    exe = shutil.which("lstm-doctor", path=str(Path(sys.executable).parent)) or shutil.which("lstm-doctor")
    return [exe] if exe else [sys.executable, "-m", "lstm_doctor"]


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--demo-repeats", type=int, default=3)
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)

    exe = lstm_doctor_command()
    base_env = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix="lstm-doctor-startup-"))
    cached_env = dict(base_env)
    cached_env.pop("PYTHONDONTWRITEBYTECODE", None)
    cached_env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")

    def cold_env() -> dict:
        env = dict(base_env)
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(dir=scratch, prefix="cold-pycache-")
        env["PYTENSOR_FLAGS"] = f"compiledir={tempfile.mkdtemp(dir=scratch, prefix='cold-pytensor-')}"
        return env

    cases = [
        ("lstm-doctor --help", exe + ["--help"], args.repeats),
        ("python -m lstm_doctor --help", [sys.executable, "-m", "lstm_doctor", "--help"], args.repeats),
        ("lstm-doctor rules", exe + ["rules"], args.repeats),
        ("lstm-doctor explain S301", exe + ["explain", "S301"], args.repeats),
        # A whole process that reads a model: h5py (.keras) or the zip and the pickle (.pt).
        ("lstm-doctor inspect .keras", exe + ["inspect", str(CORPUS / "keras_hardsig" / "model.keras")], args.repeats),
        ("lstm-doctor inspect .pt", exe + ["inspect", str(CORPUS / "adding" / "model.pt")], args.repeats),
    ]
    if not args.no_demo:
        cases.append(("lstm-doctor demo", exe + ["demo"], args.demo_repeats))
    rows = []
    print(f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')!r} in this environment")
    print(f"{'command':<32} {'warm median':>11} {'min':>6} {'warm, bytecode cached':>22} {'cold':>7}")
    try:
        for label, cmd, repeats in cases:
            timed(cmd, base_env)  # untimed: disk cache
            warm = [timed(cmd, base_env) for _ in range(repeats)]
            timed(cmd, cached_env)  # untimed: fills the bytecode cache
            cached = [timed(cmd, cached_env) for _ in range(repeats)]
            cold = [timed(cmd, cold_env()) for _ in range(max(1, min(repeats, 2)))]
            row = {"command": label, "warm_median": statistics.median(warm), "warm_min": min(warm),
                   "cached_median": statistics.median(cached), "cold_median": statistics.median(cold),
                   "warm": warm, "cached": cached, "cold": cold}
            rows.append(row)
            print(f"{label:<32} {row['warm_median']:10.2f}s {row['warm_min']:5.2f}s "
                  f"{row['cached_median']:21.2f}s {row['cold_median']:6.2f}s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")}, fh,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
