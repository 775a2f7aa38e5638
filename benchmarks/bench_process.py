"""What a user waits for: whole processes, from the shell prompt back to it.

    python benchmarks/bench_process.py [--B 256 --T 150 --D 256 --H 256 --rounds 5] [--no-keras]

The same model and inputs for every command (one float32 LSTM layer with
PyTorch's default init; B sequences of T steps of D features, batch first):

- ``lstm-doctor diagnose m.pt --inputs x.npy --format json`` (its default
  engine, ``auto``), the report to a file;
- ``torch``: a script that imports torch, loads the same ``state_dict`` into
  ``nn.LSTM(batch_first=True)`` and runs its forward pass on ``x.npy``;
- ``keras`` (unless ``--no-keras``): a script that loads the same layer saved
  as ``.keras`` and runs ``predict`` (``KERAS_BACKEND=numpy``);
- ``gemm floor``: the GEMMs of the forward pass alone in NumPy (the input
  projection and T recurrent GEMMs), timed inside a process: no lstm_doctor,
  no Python start-up; the least any capture on NumPy's BLAS can take.

Every command runs with one thread (OMP/OpenBLAS/MKL = 1, torch.set_num_threads(1))
in a fresh process, round after round, the order rotating each round, after
one untimed run of each; the table gives medians and ranges of wall time and
their ratio to the GEMM floor, and the median CPU time (user + sys) of the
process, which other load on the machine disturbs less than the wall time.

Bytecode: an installed package has its modules compiled (pip compiles them,
and torch's and NumPy's ``__pycache__`` exist), but an editable install under
``PYTHONDONTWRITEBYTECODE=1`` recompiles lstm_doctor's ~90 modules in every
process (~0.07 s). So every command runs with ``PYTHONDONTWRITEBYTECODE``
unset and ``PYTHONPYCACHEPREFIX`` in the scratch folder, which the untimed
runs fill: each command imports compiled modules, as after an ordinary install.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

TORCH_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
sd = torch.load(sys.argv[1], weights_only=True)
D, H = sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1]
lstm = torch.nn.LSTM(D, H, batch_first=True)
lstm.load_state_dict(sd)
with torch.no_grad():
    out, _ = lstm(torch.from_numpy(np.load(sys.argv[2])))
print(float(out[0, -1, 0]))
"""

KERAS_SCRIPT = """
import sys, numpy as np, keras
m = keras.saving.load_model(sys.argv[1])
out = m.predict(np.load(sys.argv[2]), batch_size=1 << 30, verbose=0)
print(float(out[0, 0]))
"""

GEMM_SCRIPT = """
import sys, time, numpy as np
T, B, D, H = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
x = rng.standard_normal((T * B, D), dtype=np.float32)
W = rng.standard_normal((D, 4 * H), dtype=np.float32)
U = rng.standard_normal((H, 4 * H), dtype=np.float32)
h = rng.standard_normal((B, H), dtype=np.float32)
out, rec = np.empty((T * B, 4 * H), np.float32), np.empty((B, 4 * H), np.float32)
np.matmul(x, W, out=out)
t0 = time.perf_counter()
np.matmul(x, W, out=out)
for t in range(T):
    np.matmul(h, U, out=rec)
print(time.perf_counter() - t0)
"""


def write_inputs(folder: str, B: int, T: int, D: int, H: int, keras_ok: bool) -> dict:
    import numpy as np
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(D, H, batch_first=True)
    torch.save(lstm.state_dict(), os.path.join(folder, "m.pt"))
    x = np.random.default_rng(0).standard_normal((B, T, D), dtype=np.float32)
    np.save(os.path.join(folder, "x.npy"), x)
    files = {"pt": os.path.join(folder, "m.pt"), "x": os.path.join(folder, "x.npy")}
    if keras_ok:
        os.environ["KERAS_BACKEND"] = "numpy"
        import keras

        sd = {k: v.numpy() for k, v in lstm.state_dict().items()}
        layer = keras.layers.LSTM(H)
        model = keras.Sequential([keras.Input((T, D)), layer])
        # torch's gate blocks i, f, g, o are Keras' i, f, c, o: the same order
        layer.set_weights([sd["weight_ih_l0"].T, sd["weight_hh_l0"].T, sd["bias_ih_l0"] + sd["bias_hh_l0"]])
        files["keras"] = os.path.join(folder, "m.keras")
        model.save(files["keras"])
    return files


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds user + sys, stdout) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):  # diagnose exits 1 when a finding reaches --fail-on
        raise SystemExit(f"{' '.join(cmd[:3])}… failed ({out.returncode}):\n{out.stderr[-600:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=256)
    p.add_argument("--T", type=int, default=150)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-keras", action="store_true")
    args = p.parse_args()

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = "1"
    env["KERAS_BACKEND"] = "numpy"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    doctor = shutil.which("lstm-doctor") or "lstm-doctor"
    folder = tempfile.mkdtemp(prefix="bench_process_")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled modules, as installed (module docstring)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(folder, "pycache")
    try:
        files = write_inputs(folder, args.B, args.T, args.D, args.H, not args.no_keras)
        report = os.path.join(folder, "report.json")
        commands = {
            "lstm-doctor diagnose m.pt --inputs x.npy --format json": [
                doctor, "diagnose", files["pt"], "--inputs", files["x"], "--layout", "btd", "--format", "json",
                "--output", report, "--exit-zero"],
            "torch: load the state_dict, nn.LSTM forward": [sys.executable, "-c", TORCH_SCRIPT, files["pt"], files["x"]],
        }
        if "keras" in files:
            commands["keras (numpy backend): load_model, predict"] = [
                sys.executable, "-c", KERAS_SCRIPT, files["keras"], files["x"]]
        gemm_cmd = [sys.executable, "-c", GEMM_SCRIPT, str(args.T), str(args.B), str(args.D), str(args.H)]
        names = list(commands) + ["gemm floor"]
        walls: dict[str, list[float]] = {name: [] for name in names}
        cpus: dict[str, list[float]] = {name: [] for name in names}
        engines, stage_times = set(), []
        for cmd in commands.values():
            timed(cmd, env)  # untimed: fills the bytecode cache and the disk cache
        loads = [os.getloadavg()[0]]
        for k in range(args.rounds):
            order = names[k % len(names):] + names[: k % len(names)]
            for name in order:
                if name == "gemm floor":
                    _, _, out = timed(gemm_cmd, env)
                    walls[name].append(float(out.strip()))
                    continue
                wall, cpu, _ = timed(commands[name], env)
                walls[name].append(wall)
                cpus[name].append(cpu)
                if name.startswith("lstm-doctor"):
                    import json

                    with open(report) as fh:
                        rep = json.load(fh)
                    engines.add(str(rep.get("engine")))
                    stage_times.append(rep.get("timings", {}))
                loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    floor = statistics.median(walls["gemm floor"])
    print(f"B={args.B} T={args.T} D={args.D} H={args.H}, float32, one thread, {args.rounds} rounds; "
          f"load average {min(loads):.2f}–{max(loads):.2f}; lstm-doctor engine: {', '.join(sorted(engines))}\n")
    print("| command | wall s, median (range) | × GEMM floor | CPU s (user + sys), median |")
    print("|---|---:|---:|---:|")
    for name in names:
        v = walls[name]
        cpu = f"{statistics.median(cpus[name]):.2f}" if cpus[name] else "–"
        print(f"| {name} | {statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f}) | "
              f"{statistics.median(v) / floor:.1f} | {cpu} |")
    torch_name = "torch: load the state_dict, nn.LSTM forward"
    doctor_name = next(n for n in names if n.startswith("lstm-doctor"))
    ours, theirs = walls[doctor_name], walls[torch_name]
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs))
    print(f"\nlstm-doctor / torch script: wall {statistics.median(ours) / statistics.median(theirs):.2f}× "
          f"(per round {per_round}), CPU "
          f"{statistics.median(cpus[doctor_name]) / statistics.median(cpus[torch_name]):.2f}×")
    if stage_times:
        keys = [k for k in stage_times[0] if k.endswith("_seconds")]
        print("\nlstm-doctor's own stage times (report `timings`, medians): " + ", ".join(
            f"{k.removesuffix('_seconds')} {statistics.median(t.get(k, 0.0) for t in stage_times):.2f} s" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
