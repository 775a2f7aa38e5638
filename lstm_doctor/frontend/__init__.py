"""Text front ends: raw texts in, the LSTM's input out (issue 9).

- ``text``: reading ``.txt`` (one text per line), ``.jsonl`` (one JSON object or
  string per line) and ``.json`` (a list of strings or objects); skipped
  records are counted and reported, never silently dropped.
- ``tweet2vec``: the built-in Tweet2Vec front end (cleaning, one-hot, the
  four-layer conv stack in NumPy and on the symbolic engine).
- ``plugins``: ``--featurizer module:function`` and the
  ``lstm_doctor.featurizers`` entry points.
- ``source``: ``text_source``, the ``InputSource`` whose features are computed
  chunk by chunk as the scan reads them, and the front end's statistics.

Importing this package imports NumPy only; the symbolic engine is imported
when a symbolic conv stack is first compiled.
"""

from __future__ import annotations

from lstm_doctor.frontend.source import (
    TEXT_SUFFIXES,
    FeatureArray,
    frontend_stats,
    is_text_inputs,
    stats_lines,
    text_source,
)

__all__ = ["TEXT_SUFFIXES", "FeatureArray", "frontend_stats", "is_text_inputs", "stats_lines", "text_source"]
