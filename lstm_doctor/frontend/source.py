"""Texts as an ``InputSource``: features computed chunk by chunk as the scan reads them.

``text_source`` reads the texts (``frontend.text``), picks the front end (the
built-in Tweet2Vec one, whose conv stack is read from the model's 25-array
file, or a ``--featurizer`` plug-in) and returns a plain ``InputSource`` whose
``array`` is a ``FeatureArray``: an array-like of the right shape and dtype
that computes the features of the sequences it is sliced for. The scan reads
``source.chunks()`` → ``source.read(start, stop)`` → ``array[start:stop]``
(``array[:, start:stop]`` in layout tbd), so features stream into the scan one
chunk at a time and memory holds one chunk, never the whole set.

Code that needs the whole array (``np.asarray(source.array)``, ``.transpose``,
fancy indexing, e.g. the what-if path) gets it computed in full; it is then
kept in memory when it is at most ``CACHE_BYTES``. Slices of the batch axis
never materialise anything.

While the features are computed, ``FrontendStats`` accumulates the front end's
output statistics (exact zeros, scale, per-channel spread: in docs/case-study.md these
were the first clue); ``frontend_stats(source)`` returns them as a dict for the
report's inputs section, computing any sequence the scan did not read.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lstm_doctor.choices import ENGINES
from lstm_doctor.errors import InputError, UserError
from lstm_doctor.frontend import plugins
from lstm_doctor.frontend import tweet2vec as t2v
from lstm_doctor.frontend.text import (
    TEXT_SUFFIXES,
    TextRecords,
    is_text_inputs,
    read_texts,
)
from lstm_doctor.load import load_model
from lstm_doctor.load import tweet2vec as t2v_load
from lstm_doctor.load.inputs import LAYOUTS, InputSource

__all__ = [
    "CACHE_BYTES",
    "TEXT_SUFFIXES",
    "FeatureArray",
    "FrontendStats",
    "frontend_stats",
    "is_text_inputs",
    "stats_lines",
    "text_source",
]

CACHE_BYTES = 256 << 20
DEAD_LISTED = 16  # indices of always-zero channels listed in the stats


class FrontendStats:
    """Streaming statistics of the front end's output, per channel, each sequence once.

    ``channel_axis`` and ``batch_axis`` are axes of the blocks as stored. For
    the built-in front end the channels are the conv filters; for a plug-in,
    the LSTM's feature axis.
    """

    def __init__(self, n: int, n_channels: int, channel_axis: int, batch_axis: int, channel_name: str):
        self.counted = np.zeros(n, dtype=bool)
        self.channel_axis = channel_axis
        self.batch_axis = batch_axis
        self.channel_name = channel_name
        C = n_channels
        self.count = np.zeros(C, dtype=np.int64)
        self.sum = np.zeros(C)
        self.sumsq = np.zeros(C)
        self.sum_abs = np.zeros(C)
        self.zeros = np.zeros(C, dtype=np.int64)
        self.min = np.full(C, np.inf)
        self.max = np.full(C, -np.inf)
        self.nonfinite = 0

    @property
    def complete(self) -> bool:
        return bool(self.counted.all())

    def update(self, start: int, block: np.ndarray) -> None:
        rows = np.arange(start, start + block.shape[self.batch_axis])
        new = ~self.counted[rows]
        if not new.any():
            return
        if not new.all():
            block = np.take(block, np.flatnonzero(new), axis=self.batch_axis)
        self.counted[rows[new]] = True
        x = np.moveaxis(np.asarray(block), self.channel_axis, -1).reshape(-1, self.count.size)
        x = x.astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            x = np.where(finite, x, np.nan)
            self.count += finite.sum(axis=0)
            self.sum += np.nansum(x, axis=0)
            self.sumsq += np.nansum(x * x, axis=0)
            self.sum_abs += np.nansum(np.abs(x), axis=0)
            self.zeros += (x == 0).sum(axis=0)
            with np.errstate(invalid="ignore"):
                self.min = np.fmin(self.min, np.nanmin(np.where(finite, x, np.inf), axis=0))
                self.max = np.fmax(self.max, np.nanmax(np.where(finite, x, -np.inf), axis=0))
            return
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sumsq += (x * x).sum(axis=0)
        self.sum_abs += np.abs(x).sum(axis=0)
        self.zeros += (x == 0).sum(axis=0)
        if x.shape[0]:
            self.min = np.minimum(self.min, x.min(axis=0))
            self.max = np.maximum(self.max, x.max(axis=0))

    def as_dict(self) -> dict:
        total = int(self.count.sum())
        safe = np.maximum(self.count, 1)
        mean_c = self.sum / safe
        std_c = np.sqrt(np.maximum(self.sumsq / safe - mean_c**2, 0.0))
        zero_c = self.zeros / safe
        seen = self.count > 0
        dead = np.flatnonzero(seen & (self.zeros == self.count))
        constant = int((seen & (std_c == 0)).sum())
        mean = float(self.sum.sum() / max(total, 1))
        var = float(self.sumsq.sum() / max(total, 1) - mean**2)

        def spread(values: np.ndarray) -> dict:
            v = values[seen]
            if v.size == 0:
                return {"min": None, "median": None, "max": None}
            return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}

        alive = seen & (std_c > 0)
        ratio = None
        if alive.any():
            ratio = float(std_c[alive].max() / std_c[alive].min())
        return {
            "sequences": int(self.counted.sum()),
            "values": total,
            "nonfinite": self.nonfinite,
            "zero_fraction": float(self.zeros.sum() / max(total, 1)),
            "scale": {
                "mean": mean,
                "std": float(np.sqrt(max(var, 0.0))),
                "rms": float(np.sqrt(self.sumsq.sum() / max(total, 1))),
                "mean_abs": float(self.sum_abs.sum() / max(total, 1)),
                "min": float(self.min[seen].min()) if seen.any() else None,
                "max": float(self.max[seen].max()) if seen.any() else None,
            },
            "channels": {
                "axis": self.channel_name,
                "count": int(self.count.size),
                "always_zero": int(dead.size),
                "always_zero_indices": [int(k) for k in dead[:DEAD_LISTED]],
                "constant": constant,
                "mean": spread(mean_c),
                "std": spread(std_c),
                "zero_fraction": spread(zero_c),
                "std_ratio_max_to_min": ratio,
            },
        }


class FeatureArray:
    """A read-only (N, ·, ·) array-like whose rows are computed from texts on demand.

    ``compute(start, stop)`` returns the block of sequences [start, stop) in the
    stored layout (batch along ``batch_axis``). Slicing the batch axis computes
    only those sequences, ``chunk`` at a time; anything else computes the whole
    array (kept when it is at most ``CACHE_BYTES``).
    """

    ndim = 3

    def __init__(
        self,
        n: int,
        rest: tuple[int, int],
        batch_axis: int,
        dtype,
        compute: Callable[[int, int], np.ndarray],
        chunk: int,
        stats: FrontendStats | None = None,
        info: dict | None = None,
    ):
        shape = list(rest)
        shape.insert(batch_axis, n)
        self.shape = tuple(int(s) for s in shape)
        self.n = n
        self.batch_axis = batch_axis
        self.dtype = np.dtype(dtype)
        self.chunk = max(int(chunk), 1)
        self.stats = stats
        self.info = dict(info or {})
        self._compute = compute
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._full: np.ndarray | None = None

    # -- array-like surface --------------------------------------------------

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FeatureArray(shape={self.shape}, dtype={self.dtype}, {self.info.get('frontend', '')})"

    def __getitem__(self, key):
        batch = self._batch_slice(key)
        if batch is not None:
            return self.rows(*batch)
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        full = self.materialize()
        return full if dtype is None else full.astype(dtype, copy=False)

    def transpose(self, *axes):
        return np.asarray(self).transpose(*axes)

    # -- computation ---------------------------------------------------------

    def seed(self, start: int, block: np.ndarray) -> None:
        """Keep an already computed chunk (the plug-in's probe call) and count it."""
        stop = start + block.shape[self.batch_axis]
        block = np.asarray(block, dtype=self.dtype).view()  # a view: the caller's array stays writeable
        block.flags.writeable = False
        self._cache = {(start, stop): block}
        if self.stats is not None:
            self.stats.update(start, block)

    def _batch_slice(self, key) -> tuple[int, int] | None:
        if self.batch_axis == 0:
            s = key
        elif isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], slice) and key[0] == slice(None):
            s = key[1]
        else:
            return None
        if not isinstance(s, slice) or s.step not in (None, 1):
            return None
        start, stop, _ = s.indices(self.n)
        return start, max(start, stop)

    def _chunk(self, start: int, stop: int) -> np.ndarray:
        hit = self._cache.get((start, stop))
        if hit is not None:
            return hit
        # A read-only view: handed out as is, nobody may change the cache (and a
        # plug-in's own array stays writeable).
        block = np.asarray(self._compute(start, stop), dtype=self.dtype).view()
        block.flags.writeable = False
        if self.stats is not None:
            self.stats.update(start, block)
        self._cache = {(start, stop): block}  # the most recent chunk only
        return block

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Sequences [start, stop) in the stored layout."""
        if self._full is not None:
            index = [slice(None)] * 3
            index[self.batch_axis] = slice(start, stop)
            return self._full[tuple(index)]
        if (start, stop) in self._cache:
            return self._cache[(start, stop)]
        if stop <= start:
            shape = list(self.shape)
            shape[self.batch_axis] = 0
            return np.zeros(shape, dtype=self.dtype)
        parts = [self._chunk(s, min(s + self.chunk, stop)) for s in range(start, stop, self.chunk)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=self.batch_axis)

    def iter_chunks(self):
        """Yield (start, block) over every sequence, ``chunk`` at a time (stored layout)."""
        for start in range(0, self.n, self.chunk):
            yield start, self.rows(start, min(start + self.chunk, self.n))

    def materialize(self) -> np.ndarray:
        """The whole array (kept in memory when at most ``CACHE_BYTES``)."""
        if self._full is not None:
            return self._full
        full = self.rows(0, self.n)
        if full.nbytes <= CACHE_BYTES:
            if full.flags.writeable:
                full.flags.writeable = False
            self._full = full
        return full


# ---------------------------------------------------------------------------
# text_source
# ---------------------------------------------------------------------------


def _builtin(records: TextRecords, model, model_path, layout, engine, clean, load_options, chunk):
    if model.source_format != "tweet2vec":
        raise InputError(
            "the built-in tweet2vec front end reads its conv stack from a 25-array Tweet2Vec "
            f"encoding_<model>_<epoch>.npy, but this model is a {model.source_format} model; pass "
            "--featurizer module:function for another front end, or pass the LSTM inputs as .npy",
            model_path,
        )
    conv = t2v_load.conv_stack(model_path, load_options)
    try:
        t2v.check_params(conv)
    except InputError as exc:
        raise InputError(exc.problem, model_path) from None
    clean_fn = t2v.cleaner(clean)
    cleaned = [clean_fn(text) for text in records.texts]
    truncated = [records.origins[k] for k, text in enumerate(cleaned) if len(text) > t2v.MAX_CHARS]
    F = int(conv[-1][0].shape[0])
    L = t2v.output_length(t2v.MAX_CHARS, [int(W.shape[2]) for W, _ in conv])
    n = len(cleaned)
    tbd = layout == "tbd"

    def compute(start: int, stop: int) -> np.ndarray:
        y = t2v.conv_stack(t2v.one_hot_batch(cleaned[start:stop]), conv, engine)  # (b, F, L)
        return y.transpose(1, 0, 2) if tbd else y

    # Channels are the conv filters: axis 1 of (b, F, L), axis 0 of (F, b, L).
    stats = FrontendStats(n, F, channel_axis=0 if tbd else 1, batch_axis=1 if tbd else 0, channel_name="conv filters")
    widths = ", ".join(str(W.shape[2]) for W, _ in conv)
    array = FeatureArray(
        n,
        (F, L),
        1 if tbd else 0,
        np.float32,
        compute,
        chunk,
        stats,
        info={"frontend": "tweet2vec", "featurizer": None, "text_clean": clean, "engine": engine,
              "truncated": len(truncated)},
    )
    reading = {
        "btd": f"read in layout btd as the original code does: {F} steps of {L} features",
        "bct": f"read in layout bct: {L} steps (conv positions) of {F} features",
        "tbd": f"stored as ({F}, batch, {L}) for layout tbd: {F} steps of {L} features",
    }[layout]
    notes = [
        f"texts → LSTM inputs by the built-in tweet2vec front end (cleaning: {clean}; one-hot "
        f"{t2v.N_CHANNELS}×{t2v.MAX_CHARS}; 4 convolutions, widths {widths}, pools 3, 3; "
        f"{engine} engine): ({n}, {F}, {L}), {reading}"
    ]
    if truncated:
        listed = ", ".join(str(k) for k in truncated[:8]) + (", …" if len(truncated) > 8 else "")
        notes.append(
            f"{len(truncated)} of {n} texts are longer than {t2v.MAX_CHARS} characters after cleaning; "
            f"only their first {t2v.MAX_CHARS} are encoded ({records.unit}{'s' if len(truncated) > 1 else ''} {listed})"
        )
    return array, notes


def _plugin(records: TextRecords, model, layout, clean, spec, chunk):
    featurizer = plugins.load_featurizer(spec)
    texts = records.texts
    if clean != "none":
        clean_fn = t2v.cleaner(clean)
        texts = [clean_fn(text) for text in texts]
    n = len(texts)
    first_stop = min(chunk, n)
    first = plugins.call(featurizer, texts[:first_stop], layout, start=0, total=n)
    batch_axis = 1 if layout == "tbd" else 0
    rest = tuple(s for k, s in enumerate(first.shape) if k != batch_axis)
    feature_axis = {"btd": 2, "tbd": 2, "bct": 1}[layout]
    D = first.shape[feature_axis]
    if D != model.D:
        raise plugins.FeaturizerError(
            f"{featurizer.label} returned shape {first.shape}: in layout {layout} "
            f"{plugins.LAYOUT_SHAPES[layout]} that is D={D} features, but the model's W expects "
            f"D={model.D} (check --layout, or the plug-in's output)"
        )
    dtype = first.dtype

    def compute(start: int, stop: int) -> np.ndarray:
        out = plugins.call(featurizer, texts[start:stop], layout, start=start, total=n, expect=rest)
        return out.astype(dtype, copy=False)

    stats = FrontendStats(n, D, channel_axis=feature_axis, batch_axis=batch_axis, channel_name="LSTM input features")
    array = FeatureArray(
        n,
        rest,
        batch_axis,
        dtype,
        compute,
        chunk,
        stats,
        info={"frontend": "plugin", "featurizer": spec, "origin": featurizer.origin, "text_clean": clean,
              "engine": None, "truncated": None},
    )
    array.seed(0, first)
    notes = [
        f"texts → LSTM inputs by {featurizer.label} ({featurizer.origin}; cleaning: {clean}), "
        f"called on chunks of {chunk} texts: stored shape {array.shape} {dtype}, layout {layout}"
    ]
    return array, notes


def text_source(
    model_path,
    inputs_path,
    *,
    text_field: str = "text",
    text_clean: str | None = None,
    featurizer: str | None = None,
    layout: str | None = None,
    engine: str = "numpy",
    model=None,
    load_options=None,
    chunk_size: int = 64,
):
    """An ``InputSource`` of the LSTM inputs computed from the texts in ``inputs_path``.

    - ``featurizer`` None: the built-in tweet2vec front end, with the conv stack
      of ``model_path`` (a 25-array Tweet2Vec file); the stored array is the
      conv output (N, 256, 10) ((256, N, 10) for layout tbd).
    - ``featurizer`` "module:function" or an entry point name: the plug-in's
      output, which is in ``layout`` already.

    ``text_clean`` None means "tweet2vec" for the built-in front end and "none"
    for a plug-in. ``layout`` None means the model's declared layout (the
    tweet2vec importer declares btd, reading the conv output with its 256
    channels as time, as the original code did). ``model`` is the loaded
    model, when the caller has it (else it is loaded with ``load_options``).
    ``engine`` is the capture engine; the conv stack runs on "pytensor" when
    it is "pytensor", else on the NumPy reference.
    The returned source's ``notes`` account for every skipped record.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if text_clean is not None and text_clean not in t2v.CLEANERS:
        raise UserError(f"unknown --text-clean {text_clean!r}; choose one of {', '.join(t2v.CLEANERS)}")
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, not {chunk_size}")
    records = read_texts(inputs_path, text_field)
    if model is None:
        model = load_model(model_path, options=load_options)
    layout = layout or model.input_layout
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if featurizer:
        array, notes = _plugin(records, model, layout, text_clean or "none", featurizer, chunk_size)
    else:
        array, notes = _builtin(
            records, model, model_path, layout, "pytensor" if engine == "pytensor" else "numpy",
            text_clean or "tweet2vec", load_options, chunk_size
        )
    array.info["records"] = records.counts
    array.info["layout"] = layout
    return InputSource(
        # The front end writes the layout it produces: nothing is left to assume.
        array=array, layout=layout, path=str(inputs_path), notes=tuple(records.notes + notes), layout_given=True,
    )


def frontend_stats(source, complete: bool = True) -> dict | None:
    """The front end's output statistics for the report's inputs section, or None
    when ``source`` was not computed from texts.

    Every sequence counts once. With ``complete`` (the default) sequences the
    scan did not read are computed now, so the numbers cover the whole file.
    """
    array = getattr(source, "array", None)
    if not isinstance(array, FeatureArray) or array.stats is None:
        return None
    if complete and not array.stats.complete:
        for _ in array.iter_chunks():
            pass
    info = array.info
    out = {
        "frontend": info.get("frontend"),
        "featurizer": info.get("featurizer"),
        "text_clean": info.get("text_clean"),
        "engine": info.get("engine"),
        "texts": info.get("records"),
        "truncated_texts": info.get("truncated"),
        "stored_shape": list(array.shape),
        "dtype": str(array.dtype),
        "layout": info.get("layout"),
    }
    out.update(array.stats.as_dict())
    return out


def _g(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def stats_lines(stats: dict | None) -> list[str]:
    """The statistics as short lines for a text report."""
    if not stats:
        return []
    name = "tweet2vec" if stats["frontend"] == "tweet2vec" else f"plug-in {stats['featurizer']}"
    texts = stats.get("texts") or {}
    sc, ch = stats["scale"], stats["channels"]
    lines = [
        f"front end {name}: {texts.get('kept', stats['sequences'])} texts → stored shape "
        f"{tuple(stats['stored_shape'])} {stats['dtype']}, layout {stats['layout']}",
        f"values {_g(sc['min'])} to {_g(sc['max'])}, mean {_g(sc['mean'])}, rms {_g(sc['rms'])}; "
        f"{stats['zero_fraction']:.1%} exact zeros" + (f"; {stats['nonfinite']} NaN/Inf" if stats["nonfinite"] else ""),
        f"{ch['count']} channels ({ch['axis']}): {ch['always_zero']} always zero; per-channel std "
        f"{_g(ch['std']['min'])} to {_g(ch['std']['max'])} (median {_g(ch['std']['median'])}), per-channel mean "
        f"{_g(ch['mean']['min'])} to {_g(ch['mean']['max'])}",
    ]
    return lines
