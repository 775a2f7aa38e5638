"""Tasks, models and evaluations of the corpus of trained, working LSTMs.

Shared by ``corpus/train.py`` (which trains and writes every model) and
``tests/test_corpus_models.py`` (which re-evaluates the committed files and
never trains). Everything here is deterministic given the committed files:
the held-out sets are either committed arrays or slices of the committed text.

Models (B sequences, T steps, D input features, H units, V classes):

- ``charlm``: Embedding(V, 32) → 2-layer LSTM(H = 96) → Linear(H, V) on the
  characters of Genesis (KJV); next-character cross-entropy in nats/char.
- ``classifier``: one-hot symbols (B, T = 40, D = 8) → LSTM(H = 48) → Linear
  on h_T; which of 4 first-order Markov sources emitted the sequence.
- ``adding``: the adding problem (Hochreiter & Schmidhuber 1997), x_t =
  (value ~ U(0, 1), marker ∈ {0, 1}), T = 100, target the sum of the two marked
  values (one among the first 10 steps, one in the first half), LSTM(H = 32)
  → Linear on h_T; the sum must be held ≥ 50 steps.
- ``tagger``: word segmentation of spaceless lower-case text, one tag per
  letter (B, I, E, S: begin, inside, end of a word, single-letter word);
  Embedding(27, 16, padding 0) → bidirectional LSTM(H = 48), packed
  variable-length batches → Linear(2H, 4).
- ``keras_hardsig`` (Keras 3, built in train.py): noisy sinusoids, 3
  frequency classes, (B, T = 50, D = 2), LSTM(32, recurrent_activation =
  "hard_sigmoid") → Dense(3, softmax).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEXT = HERE / "genesis_kjv.txt"
HELDOUT_FRACTION = 0.1          # the last 10% of the verses is held out

# ---------------------------------------------------------------------------
# Text


def read_text() -> str:
    """The committed text: Genesis, King James Version, one verse per line."""
    return TEXT.read_text(encoding="utf-8")


def split_text(text: str) -> tuple[str, str]:
    """(train, held-out): the held-out part starts at the first verse of the last 10%."""
    lines = text.splitlines(keepends=True)
    cut = int(round(len(lines) * (1 - HELDOUT_FRACTION)))
    return "".join(lines[:cut]), "".join(lines[cut:])


def vocabulary(text: str) -> list[str]:
    """Sorted characters of the whole text (the model's V classes)."""
    return sorted(set(text))


# ---------------------------------------------------------------------------
# Torch models (imported lazily so this module loads without torch)


def torch_models():
    """The torch module classes, built on first use."""
    import torch
    from torch import nn

    class CharLM(nn.Module):
        """Embedding (V, E) → nn.LSTM(E, H, num_layers) → Linear(H, V); logits (B, T, V)."""

        def __init__(self, V: int, E: int = 32, H: int = 96, layers: int = 2):
            super().__init__()
            self.embedding = nn.Embedding(V, E)
            self.lstm = nn.LSTM(E, H, num_layers=layers, batch_first=True)
            self.head = nn.Linear(H, V)

        def forward(self, tokens):
            out, _ = self.lstm(self.embedding(tokens))
            return self.head(out)

    class LastStep(nn.Module):
        """nn.LSTM(D, H) → Linear(H, K) on h_T: (B, T, D) → (B, K)."""

        def __init__(self, D: int, H: int, K: int):
            super().__init__()
            self.lstm = nn.LSTM(D, H, batch_first=True)
            self.head = nn.Linear(H, K)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    class Tagger(nn.Module):
        """Embedding(27, E, padding_idx 0) → bidirectional nn.LSTM(E, H) on packed sequences → Linear(2H, 4)."""

        def __init__(self, E: int = 16, H: int = 48):
            super().__init__()
            self.embedding = nn.Embedding(27, E, padding_idx=0)
            self.lstm = nn.LSTM(E, H, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * H, 4)

        def encode(self, x, lengths):
            """LSTM outputs (B, T, 2H) of embedded inputs x (B, T, E), zero past each length."""
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            packed = pack_padded_sequence(x, torch.as_tensor(lengths).cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            return out

        def forward(self, tokens, lengths):
            return self.head(self.encode(self.embedding(tokens), lengths))

    return CharLM, LastStep, Tagger


# ---------------------------------------------------------------------------
# charlm


def charlm_chunks(text: str, vocab: list[str], T: int) -> np.ndarray:
    """Non-overlapping (N, T) int64 token windows of ``text``, the tail dropped."""
    index = {ch: k for k, ch in enumerate(vocab)}
    ids = np.array([index[ch] for ch in text], dtype=np.int64)
    n = len(ids) // T
    return ids[: n * T].reshape(n, T)


def charlm_evaluate(model, text: str, vocab: list[str], T: int = 128) -> dict:
    """Held-out nats/char and top-1 accuracy of next-character prediction.

    Each window of T characters starts from a zero state; characters 1..T-1 are
    predicted from their prefix. The unigram baseline uses the training text's
    character frequencies (add-one smoothed).
    """
    import torch

    chunks = torch.from_numpy(charlm_chunks(text, vocab, T))
    with torch.no_grad():
        logits = model(chunks[:, :-1])
        logp = torch.log_softmax(logits.double(), dim=-1)
        target = chunks[:, 1:]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        acc = (logits.argmax(-1) == target).double().mean().item()
    return {"nats_per_char": float(nll.mean().item()), "top1_accuracy": float(acc),
            "heldout_chars": int(target.numel())}


def unigram_baseline(train: str, heldout: str, vocab: list[str], T: int = 128) -> dict:
    """nats/char and top-1 accuracy of the training text's unigram on the same targets."""
    counts = np.ones(len(vocab))
    index = {ch: k for k, ch in enumerate(vocab)}
    for ch in train:
        counts[index[ch]] += 1
    logp = np.log(counts / counts.sum())
    target = charlm_chunks(heldout, vocab, T)[:, 1:].ravel()
    return {"nats_per_char": float(-logp[target].mean()),
            "top1_accuracy": float((target == counts.argmax()).mean())}


# ---------------------------------------------------------------------------
# classifier: which Markov source


CLS_SYMBOLS, CLS_CLASSES, CLS_T = 8, 4, 40


def markov_sources(seed: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """(start (K, S), transitions (K, S, S)) of the K sources, Dirichlet(0.5) rows."""
    rng = np.random.default_rng(seed)
    start = rng.dirichlet(np.full(CLS_SYMBOLS, 0.5), size=CLS_CLASSES)
    trans = rng.dirichlet(np.full(CLS_SYMBOLS, 0.5), size=(CLS_CLASSES, CLS_SYMBOLS))
    return start, trans


def markov_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbols (n, T) int8, labels (n,) int64) drawn from the sources (inverse-CDF sampling, vectorised over n)."""
    start, trans = markov_sources()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLS_CLASSES, size=n)
    cum_start = np.cumsum(start, axis=-1)
    cum_trans = np.cumsum(trans, axis=-1)
    u = rng.random((n, CLS_T))
    sym = np.empty((n, CLS_T), dtype=np.int8)
    s = np.minimum((cum_start[labels] < u[:, :1]).sum(-1), CLS_SYMBOLS - 1)
    sym[:, 0] = s
    for t in range(1, CLS_T):
        s = np.minimum((cum_trans[labels, s] < u[:, t : t + 1]).sum(-1), CLS_SYMBOLS - 1)
        sym[:, t] = s
    return sym, labels.astype(np.int64)


def one_hot(symbols: np.ndarray, size: int = CLS_SYMBOLS) -> np.ndarray:
    """(n, T) integers → (n, T, size) float32 one-hot."""
    return np.eye(size, dtype=np.float32)[symbols.astype(np.int64)]


# ---------------------------------------------------------------------------
# adding problem


ADD_T = 100


def adding_sample(n: int, seed: int, T: int = ADD_T) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, T, 2) float32, y (n,) float32): values U(0, 1), two markers, y their sum."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, T, 2), dtype=np.float32)
    x[:, :, 0] = rng.random((n, T), dtype=np.float32)
    first = rng.integers(0, T // 10, size=n)
    second = rng.integers(T // 10, T // 2, size=n)
    x[np.arange(n), first, 1] = 1.0
    x[np.arange(n), second, 1] = 1.0
    y = x[np.arange(n), first, 0] + x[np.arange(n), second, 0]
    return x, y.astype(np.float32)


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, dtype=np.float64).ravel() - y.astype(np.float64)) ** 2))


# ---------------------------------------------------------------------------
# tagger: word segmentation


TAGS = "BIES"
TAG_MAX_LETTERS = 80


def tagger_segments(text: str) -> list[list[str]]:
    """Verses cut into runs of whole lower-case words of 10–80 letters in all."""
    segments = []
    for line in text.splitlines():
        words = [w for w in re.sub(r"[^a-z]+", " ", line.lower()).split() if w]
        cur, n = [], 0
        for w in words:
            if cur and n + len(w) > TAG_MAX_LETTERS:
                if n >= 10:
                    segments.append(cur)
                cur, n = [], 0
            cur.append(w)
            n += len(w)
        if cur and n >= 10:
            segments.append(cur)
    return segments


def tagger_arrays(segments: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (N, 80) int64 with a..z = 1..26 and 0 padding, tags (N, 80) int64 with -1 padding, lengths (N,))."""
    N = len(segments)
    tokens = np.zeros((N, TAG_MAX_LETTERS), dtype=np.int64)
    tags = np.full((N, TAG_MAX_LETTERS), -1, dtype=np.int64)
    lengths = np.zeros(N, dtype=np.int64)
    for b, words in enumerate(segments):
        t = 0
        for w in words:
            for j, ch in enumerate(w):
                tokens[b, t] = ord(ch) - ord("a") + 1
                if len(w) == 1:
                    tags[b, t] = 3
                elif j == 0:
                    tags[b, t] = 0
                elif j == len(w) - 1:
                    tags[b, t] = 2
                else:
                    tags[b, t] = 1
                t += 1
        lengths[b] = t
    return tokens, tags, lengths


def tag_accuracy(pred: np.ndarray, tags: np.ndarray) -> float:
    """Per-letter accuracy over the valid (non-padding) positions."""
    valid = tags >= 0
    return float((pred[valid] == tags[valid]).mean())


# ---------------------------------------------------------------------------
# keras_hardsig: frequency of a noisy sinusoid


SIN_T, SIN_CLASSES = 50, 3
SIN_FREQS = (0.04, 0.07, 0.10)  # cycles per step


def sine_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, T, 2) float32, labels (n,)): channel 0 = sin(2π f t + φ) + N(0, 0.4²), channel 1 = N(0, 1) distractor."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SIN_CLASSES, size=n)
    f = np.asarray(SIN_FREQS)[labels][:, None]
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1))
    t = np.arange(SIN_T)[None, :]
    x = np.empty((n, SIN_T, 2), dtype=np.float32)
    x[:, :, 0] = np.sin(2 * math.pi * f * t + phase) + 0.4 * rng.standard_normal((n, SIN_T))
    x[:, :, 1] = rng.standard_normal((n, SIN_T))
    return x, labels.astype(np.int64)
