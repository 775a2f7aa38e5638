"""Overhead of watching training (lstm_doctor.callbacks.TorchWatcher) on a PyTorch training loop.

A Tweet2Vec-like model (embedding → Conv1d → time-major LSTM → linear head) trains with Adam
on batches of 32 sequences; the same number of steps runs without a watcher and with one, at
the default interval (every=None: the time budget) and at fixed intervals. Overhead = extra
wall time over the run without a watcher. One torch thread, short runs (under a minute).

    python benchmarks/bench_callback.py [--steps 400] [--hidden 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

from lstm_doctor.callbacks import LSTMDoctorWarning, TorchWatcher


class Tweet2VecLike(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(70, 32)
        self.conv = nn.Conv1d(32, 64, 3, padding=1)
        self.rnn = nn.LSTM(64, hidden)
        self.head = nn.Linear(hidden, 8)

    def forward(self, chars):
        feats = torch.relu(self.conv(self.emb(chars).transpose(1, 2)))
        _, (h, _) = self.rnn(feats.permute(2, 0, 1))
        return self.head(h[-1])


def run(steps: int, hidden: int, watcher_kwargs: dict | None) -> tuple[float, int, float]:
    """(seconds, checks, seconds per check) for ``steps`` training steps."""
    torch.manual_seed(0)
    model = Tweet2VecLike(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 70, (1024, 40), generator=gen)
    labels = torch.randint(0, 8, (1024,), generator=gen)
    watcher = None if watcher_kwargs is None else TorchWatcher(model, data[:32], **watcher_kwargs)
    warnings.simplefilter("ignore", LSTMDoctorWarning)  # training this toy model raises W102; not the point here
    started = time.perf_counter()
    for step in range(steps):
        if watcher is not None:
            watcher.step(step)
        idx = torch.arange(step * 32, step * 32 + 32) % len(data)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data[idx]), labels[idx]).backward()
        opt.step()
    seconds = time.perf_counter() - started
    if watcher is None:
        return seconds, 0, 0.0
    checks = watcher.history
    return seconds, len(checks), statistics.mean(c.seconds for c in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(20, args.hidden, {"every": 10})  # warm up torch and lstm_doctor's imports
    configs = {"default (every=None, budget 3 %)": {}, "every=100": {"every": 100}, "every=500": {"every": 500}}
    base = []
    results: dict[str, list[tuple[float, int, float]]] = {name: [] for name in configs}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every configuration
        base.append(run(args.steps, args.hidden, None)[0])
        for name, kwargs in configs.items():
            results[name].append(run(args.steps, args.hidden, kwargs))
    plain = statistics.median(base)
    print(f"{args.steps} steps, H={args.hidden}, batch 32 × 40 steps, 1 torch thread, {args.repeats} runs each")
    print(f"no watcher: {plain:.2f} s ({plain / args.steps * 1000:.1f} ms per training step)")
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        overheads = sorted((r[0] - b) / b for r, b in zip(runs, base))
        print(
            f"{name:34s} {seconds:.2f} s, {runs[0][1]} checks of {statistics.mean(r[2] for r in runs) * 1000:.0f} ms: "
            f"overhead {statistics.median(overheads):+.1%} (runs {', '.join(f'{o:+.1%}' for o in overheads)})"
        )


if __name__ == "__main__":
    main()
