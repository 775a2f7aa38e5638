"""The Tweet2Vec front end: raw tweet → cleaned text → one-hot → conv stack → LSTM input.

Rebuilt from the facts in docs/case-study.md ("The Tweet2Vec front end"); the encoder LSTM
receives exactly what ``conv_stack_numpy`` / ``conv_stack_symbolic`` return.

Cleaning (``clean_tweet``)
--------------------------
What docs/case-study.md states, and is implemented as stated:

- the text is made lowercase ASCII;
- mentions become the marker ``U``, happy emoticons ``H``, sad emoticons ``S``;
- contractions are expanded;
- most punctuation is dropped;
- the result is wrapped as ``'B ' + text + ' E'``.

What docs/case-study.md does not pin down, and is therefore a **reconstruction by guess**
(each choice is the plainest one that fits the stated facts):

- *ASCII*: non-ASCII characters are dropped (``encode('ascii', 'ignore')``),
  not transliterated; HTML entities (``&amp;`` …) are unescaped first, and
  typographic quotes (’ ‘ ” “) become ASCII ones first, so that ``can’t`` is
  still a contraction.
- *URLs*: docs/case-study.md says URLs are replaced "by single marker letters" but the
  alphabet's markers are only B, E, S, H, U, all taken (begin, end, sad, happy,
  user mention). No letter is left for URLs, so a URL (``http…``, ``https…``,
  ``www.…``) is **removed** (replaced by a space). The public Tweet2Vec code,
  consulted only to check this, also removes URLs.
- *Mentions*: ``@`` followed by letters, digits or ``_``.
- *Emoticons*: a whitespace-delimited token made of eyes ``: ; = 8 x``, an
  optional nose ``- ' ^ o``, and a mouth (happy: ``) ] d p *`` or a ``<3``
  heart; sad: ``( [ / \\ |`` and ``:'(``), also written mouth-first
  (``(:``). The exact emoticon lists are a guess.
- *Contractions*: ``can't`` → ``can not``, ``won't`` → ``will not``,
  ``n't`` → `` not``, ``i'm`` → ``i am``, ``'re`` → `` are``, ``'s`` →
  `` is``, ``'ll`` → `` will``, ``'ve`` → `` have``, ``'d`` → `` would``
  (the list is a guess; ``'s`` is expanded even where it is a possessive).
- *Punctuation kept*: ``#`` (hashtags), ``!`` and ``?`` (runs collapsed to
  one), and word characters (letters, digits, ``_``). Everything else becomes a
  space; runs of spaces collapse to one. Which marks survive is a guess ("most
  punctuation is dropped").

Encoding (``one_hot``), as docs/case-study.md states
-----------------------------------------
The alphabet below (74 characters, ``-`` twice: the later index, 59, wins) plus
one unknown channel (74) gives 75 channels. The text is lowercased again before
encoding, so the markers B/E/U/H/S land on the ordinary letters b/e/u/h/s, and
the upper-case channels (0 ``P``, 69–73 ``BESHU``) and the first ``-`` (37)
are never set. The space is not in the alphabet, so every space lands on the
unknown channel (a consequence of the alphabet as documented). The first 150
characters are kept; the rest of the 150 positions are all-zero columns. The
matrix is built (150, 75) and transposed to channels-first (75, 150).

Conv stack, as docs/case-study.md states
-----------------------------
Four 1-D *true* convolutions (the kernel is flipped, as Theano's ``conv`` with
``filter_flip=True``): ``out[f, t] = b[f] + Σ_c Σ_k W[f, c, k] · x[c, t + K-1-k]``
with W stored (filters, in_channels, width), valid padding, stride 1, then
ReLU; a max-pool of size 3, stride 3 (remainder dropped) after the first two.
Lengths 150 → 144 → 48 → 42 → 14 → 12 → 10: the output is (B, 256, 10),
channels-first, which the original code feeds the LSTM with axis 1 as time.

``conv_stack_numpy`` is the reference (a loop over the kernel taps with the
flipped index written out); ``conv_stack_symbolic`` is the same stack as a
graph on ``lstm_doctor.capture.symbolic.backend`` (PyTensor or Theano), written as im2col + one
``tensordot`` per layer with the kernel reversed, compiled once per process
with ``backend.compile_mode()``. The two formulations are tested to agree.
"""

from __future__ import annotations

import html
import re
from typing import Iterable, Iterator, Sequence

import numpy as np

from lstm_doctor.errors import InputError

ALPHABET = "Pabcdefghijklmnopqrstuvwxyz0123456789-,;.!?:~'\"/\\|_@#$%^&*+-=<>()[]{}BESHU"
N_ALPHABET = len(ALPHABET)  # 74
UNKNOWN = N_ALPHABET  # the extra channel, 74
N_CHANNELS = N_ALPHABET + 1  # 75
MAX_CHARS = 150
# Dict construction lets the later '-' (index 59) overwrite the earlier (37).
CHANNEL_OF = {ch: k for k, ch in enumerate(ALPHABET)}
POOLS = (3, 3, None, None)  # max-pool after conv1 and conv2
WIDTHS = (7, 7, 3, 3)
FILTERS = 256

# Code point → channel for the 128 ASCII code points; anything else is unknown.
_ASCII_TABLE = np.full(128, UNKNOWN, dtype=np.int64)
for _ch, _k in CHANNEL_OF.items():
    _ASCII_TABLE[ord(_ch)] = _k


# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------

_URL = re.compile(r"(?:https?://|https?:|www\.)\S*")
_MENTION = re.compile(r"@\w+")
_EYES = r"[:;=8x]"
_NOSE = r"[-'^o]?"
_HAPPY = re.compile(
    rf"(?<!\S)(?:{_EYES}{_NOSE}[)\]dp*]+|[(\[]+{_NOSE}{_EYES}|<3+|\^_*\^)(?!\S)"
)
_SAD = re.compile(rf"(?<!\S)(?:{_EYES}'?{_NOSE}[(\[/\\|]+|[)\]]+{_NOSE}{_EYES})(?!\S)")
_CONTRACTIONS = (
    (re.compile(r"\bcan'?t\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"\bi'm\b"), "i am"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'s\b"), " is"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'d\b"), " would"),
)
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_REPEATED_MARK = re.compile(r"([!?])[!?]+")
_DROPPED = re.compile(r"[^\w#!? ]+")  # \w on ASCII text: letters, digits, _
_SPACES = re.compile(r"\s+")


def clean_tweet(text: str) -> str:
    """A tweet as the Tweet2Vec encoder saw it: ``'B ' + cleaned + ' E'``.

    See the module docstring for what is stated by docs/case-study.md and what is a guess.

    >>> clean_tweet("@bob I can't wait!!! :) http://t.co/x #fun")
    'B U i can not wait! H #fun E'
    """
    text = html.unescape(text).translate(_QUOTES)
    text = text.encode("ascii", "ignore").decode("ascii").lower()
    text = _URL.sub(" ", text)
    text = _MENTION.sub(" U ", text)
    text = _SPACES.sub(" ", text)
    # Emoticons are whole tokens; a token-bounded match keeps "8)" in "(see 8)" rare.
    text = _SAD.sub(" S ", text)
    text = _HAPPY.sub(" H ", text)
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _REPEATED_MARK.sub(r"\1", text)
    text = _DROPPED.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return f"B {text} E" if text else "B E"


CLEANERS = ("tweet2vec", "none")


def cleaner(name: str):
    """The text cleaning function for ``--text-clean``."""
    if name == "tweet2vec":
        return clean_tweet
    if name == "none":
        return lambda text: text
    raise InputError(f"unknown --text-clean {name!r}; choose one of {', '.join(CLEANERS)}")


# ---------------------------------------------------------------------------
# One-hot
# ---------------------------------------------------------------------------


def channels_of(text: str) -> np.ndarray:
    """Channel index of each of the first 150 characters of ``text.lower()``."""
    chars = text.lower()[:MAX_CHARS]
    if not chars:
        return np.zeros(0, dtype=np.int64)
    codes = np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
    out = np.full(codes.shape, UNKNOWN, dtype=np.int64)
    ascii_ = codes < 128
    out[ascii_] = _ASCII_TABLE[codes[ascii_]]
    return out


def one_hot(text: str) -> np.ndarray:
    """(75, 150) float32: the (150, 75) one-hot matrix of ``text``, transposed."""
    return one_hot_batch([text])[0]


def one_hot_batch(texts: Sequence[str]) -> np.ndarray:
    """(N, 75, 150) float32, channels-first; padding positions are all zero."""
    x = np.zeros((len(texts), MAX_CHARS, N_CHANNELS), dtype=np.float32)
    for n, text in enumerate(texts):
        ch = channels_of(text)
        x[n, np.arange(ch.size), ch] = 1.0
    return x.transpose(0, 2, 1)  # (N, 150, 75) → (N, 75, 150), as the original .T


# ---------------------------------------------------------------------------
# Conv stack: NumPy reference
# ---------------------------------------------------------------------------

ConvParams = Sequence[tuple[np.ndarray, np.ndarray]]


def output_length(length: int, widths: Iterable[int], pools: Iterable[int | None] = POOLS) -> int:
    """The sequence length after the stack (150 → 10 for the documented widths)."""
    for width, pool in zip(widths, pools):
        length = length - width + 1
        if pool:
            length //= pool
    return length


def check_params(conv_params: ConvParams, in_channels: int = N_CHANNELS, length: int = MAX_CHARS) -> None:
    """Fail in one line when the stack cannot read ``in_channels`` × ``length``."""
    if len(conv_params) > len(POOLS):
        raise InputError(f"a Tweet2Vec conv stack has {len(POOLS)} layers, got {len(conv_params)}")
    channels = in_channels
    for k, (W, b) in enumerate(conv_params):
        if W.ndim != 3 or b.shape != (W.shape[0],) or W.shape[1] != channels:
            raise InputError(
                f"conv{k + 1}: W {W.shape}, b {b.shape} cannot read {channels} channels "
                "(expected W (filters, in_channels, width), b (filters,))"
            )
        channels = W.shape[0]
    L = output_length(length, [W.shape[2] for W, _ in conv_params])
    if L < 1:
        raise InputError(f"the conv stack leaves no positions from {length} characters (length {L})")


def conv1d_numpy(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True 1-D convolution, valid, stride 1: (N, C, L) → (N, F, L-K+1).

    ``out[n, f, t] = b[f] + Σ_c Σ_k W[f, c, k] · x[n, c, t + K-1-k]``: tap k of
    the stored kernel meets input position t + K-1-k (the kernel is flipped).
    One matrix product per tap: (N·L_out, C) · (C, F).
    """
    N, C, L = x.shape
    F, C_w, K = W.shape
    if C_w != C:
        raise InputError(f"conv kernel reads {C_w} channels, input has {C}")
    L_out = L - K + 1
    xt = np.ascontiguousarray(np.swapaxes(x, 1, 2))  # (N, L, C)
    out = np.zeros((N * L_out, F), dtype=np.result_type(x, W))
    for k in range(K):
        start = K - 1 - k
        window = xt[:, start : start + L_out, :].reshape(N * L_out, C)
        out += window @ W[:, :, k].T
    return out.reshape(N, L_out, F).transpose(0, 2, 1) + b[None, :, None]


def max_pool_numpy(x: np.ndarray, size: int) -> np.ndarray:
    """Max over non-overlapping windows of ``size`` along the last axis; the remainder is dropped."""
    L = x.shape[2] // size
    return x[:, :, : L * size].reshape(x.shape[0], x.shape[1], L, size).max(axis=3)


def conv_stack_numpy(x: np.ndarray, conv_params: ConvParams, dtype=np.float32, pools=POOLS) -> np.ndarray:
    """The reference stack: (N, 75, 150) one-hot → (N, 256, 10) (conv, ReLU, pools).

    ``pools[k]`` is the max-pool size after layer k (None: no pool).
    """
    h = np.asarray(x, dtype=dtype)
    for (W, b), pool in zip(conv_params, pools):
        h = conv1d_numpy(h, np.asarray(W, dtype=dtype), np.asarray(b, dtype=dtype))
        h = np.maximum(h, 0)
        if pool:
            h = max_pool_numpy(h, pool)
    return np.ascontiguousarray(h, dtype=dtype)


# ---------------------------------------------------------------------------
# Conv stack: symbolic (lstm_doctor.capture.symbolic.backend)
# ---------------------------------------------------------------------------

_COMPILED: dict[tuple, object] = {}


def _symbolic_stack(widths: tuple[int, ...], pools: tuple, dtype: str):
    """(inputs, output) of the stack's graph; ``widths`` fix the im2col slices."""
    from lstm_doctor.capture.symbolic import backend

    pt = backend.tensor
    x = pt.tensor3(name="x", dtype=dtype)
    inputs = [x]
    h = x
    zero = pt.constant(np.asarray(0, dtype=dtype))
    for k, (K, pool) in enumerate(zip(widths, pools)):
        W = pt.tensor3(name=f"W{k + 1}", dtype=dtype)
        b = pt.vector(name=f"b{k + 1}", dtype=dtype)
        inputs += [W, b]
        L_out = h.shape[2] - K + 1
        # im2col: columns[n, c, t, j] = h[n, c, t + j]; the reversed kernel
        # W[:, :, K-1-j] meets them, which is the flipped (true) convolution.
        columns = pt.stack([h[:, :, j : j + L_out] for j in range(K)], axis=3)  # (N, C, L_out, K)
        flipped = W[:, :, ::-1]  # (F, C, K)
        out = pt.tensordot(columns, flipped, axes=[[1, 3], [1, 2]])  # (N, L_out, F)
        h = out.dimshuffle(0, 2, 1) + b.dimshuffle("x", 0, "x")
        h = pt.maximum(h, zero)
        if pool:
            L_pool = h.shape[2] // pool
            h = h[:, :, : L_pool * pool].reshape((h.shape[0], h.shape[1], L_pool, pool)).max(axis=3)
    return inputs, h


def compiled_stack(widths: tuple[int, ...], dtype: str = "float32", pools=POOLS):
    """The compiled stack for these kernel widths and pools (cached for the process)."""
    from lstm_doctor.capture.symbolic import backend

    pools = tuple(pools[: len(widths)])
    key = (widths, pools, dtype, backend.NAME)
    fn = _COMPILED.get(key)
    if fn is None:
        inputs, output = _symbolic_stack(widths, pools, dtype)
        fn = backend.function(inputs, output, mode=backend.compile_mode(), name="lstm_doctor_tweet2vec_convs")
        _COMPILED[key] = fn
    return fn


def conv_stack_symbolic(x: np.ndarray, conv_params: ConvParams, dtype=np.float32, pools=POOLS) -> np.ndarray:
    """The same stack as ``conv_stack_numpy``, run on the symbolic engine."""
    dtype = np.dtype(dtype)
    widths = tuple(int(W.shape[2]) for W, _ in conv_params)
    fn = compiled_stack(widths, str(dtype), pools)
    args = [np.ascontiguousarray(x, dtype=dtype)]
    for W, b in conv_params:
        args += [np.ascontiguousarray(W, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)]
    return np.ascontiguousarray(fn(*args), dtype=dtype)


def conv_stack(x: np.ndarray, conv_params: ConvParams, engine: str = "numpy", dtype=np.float32) -> np.ndarray:
    """Run the stack on ``engine`` ("numpy": the reference; "pytensor": the symbolic engine)."""
    if engine == "numpy":
        return conv_stack_numpy(x, conv_params, dtype)
    if engine == "pytensor":
        return conv_stack_symbolic(x, conv_params, dtype)
    raise InputError(f"unknown engine {engine!r}; choose numpy or pytensor")


# ---------------------------------------------------------------------------
# Texts → features
# ---------------------------------------------------------------------------


def featurize(
    texts: Sequence[str],
    conv_params: ConvParams,
    engine: str = "numpy",
    chunk: int = 64,
    *,
    clean: str = "tweet2vec",
    dtype=np.float32,
) -> Iterator[np.ndarray]:
    """Yield the LSTM inputs (n, 256, 10) for consecutive chunks of ``chunk`` texts.

    ``clean`` is "tweet2vec" (``clean_tweet`` first) or "none" (the texts are
    already clean). Memory holds one chunk of one-hot inputs at a time.
    """
    if chunk < 1:
        raise InputError(f"chunk size must be at least 1, not {chunk}")
    check_params(conv_params)
    clean_fn = cleaner(clean)
    for start in range(0, len(texts), chunk):
        block = [clean_fn(t) for t in texts[start : start + chunk]]
        yield conv_stack(one_hot_batch(block), conv_params, engine, dtype)


def featurize_all(texts, conv_params, engine="numpy", chunk=64, *, clean="tweet2vec", dtype=np.float32) -> np.ndarray:
    """``featurize`` concatenated: (N, 256, 10)."""
    parts = list(featurize(texts, conv_params, engine, chunk, clean=clean, dtype=dtype))
    if not parts:
        F = conv_params[-1][0].shape[0]
        L = output_length(MAX_CHARS, [W.shape[2] for W, _ in conv_params])
        return np.zeros((0, F, L), dtype=dtype)
    return np.concatenate(parts, axis=0)
