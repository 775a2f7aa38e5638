"""Overhead of watching training (lstm_doctor.callbacks.TorchWatcher) on a PyTorch training loop.

A Tweet2Vec-like model (embedding → Conv1d → time-major LSTM → linear head) trains with Adam
on batches of 32 sequences; with a watcher at the default interval (every=None: the time budget) and at fixed
intervals. Overhead = time inside ``watcher.step`` over time inside the training steps, both
measured in the same run. One torch thread, short runs (under a minute).

    python benchmarks/bench_callback.py [--steps 400] [--hidden 128]
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


def run(steps: int, hidden: int, watcher_kwargs: dict) -> dict:
    """Train ``steps`` steps with a watcher; time spent in the watcher and in training, interleaved.

    Both are measured in the same run, step by step, as wall time and as this process's CPU
    time, so that load from other processes on a shared machine hits both alike (comparing
    separate runs with and without a watcher is dominated by that load).
    """
    torch.manual_seed(0)
    model = Tweet2VecLike(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 70, (1024, 40), generator=gen)
    labels = torch.randint(0, 8, (1024,), generator=gen)
    watcher = TorchWatcher(model, data[:32], **watcher_kwargs)
    warnings.simplefilter("ignore", LSTMDoctorWarning)  # training this toy model raises W102; not the point here
    wall = {"watch": 0.0, "train": 0.0}
    cpu = {"watch": 0.0, "train": 0.0}

    def timed(kind, fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall[kind] += time.perf_counter() - w
        cpu[kind] += time.process_time() - c

    for step in range(steps):
        timed("watch", lambda: watcher.step(step))

        def train_step():
            idx = torch.arange(step * 32, step * 32 + 32) % len(data)
            opt.zero_grad()
            nn.functional.cross_entropy(model(data[idx]), labels[idx]).backward()
            opt.step()

        timed("train", train_step)
    return {
        "wall": wall, "cpu": cpu, "checks": len(watcher.history),
        "check_ms": statistics.mean(c.seconds for c in watcher.history) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(20, args.hidden, {"every": 10})  # warm up torch and lstm_doctor's imports
    configs = {"default (every=None, budget 3 %)": {}, "every=100": {"every": 100}, "every=500": {"every": 500}}
    print(f"{args.steps} steps, H={args.hidden}, batch 32 × 40 steps, 1 torch thread; overhead = time in the "
          "watcher / time in training steps, same run (step 0's check included)")
    for name, kwargs in configs.items():
        r = run(args.steps, args.hidden, kwargs)
        print(
            f"{name:34s} {r['checks']} checks of {r['check_ms']:.0f} ms, training step "
            f"{r['wall']['train'] / args.steps * 1000:.1f} ms: overhead wall {r['wall']['watch'] / r['wall']['train']:.1%}, "
            f"CPU {r['cpu']['watch'] / r['cpu']['train']:.1%}"
        )


if __name__ == "__main__":
    main()
