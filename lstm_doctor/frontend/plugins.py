"""Third-party front ends: ``--featurizer module:function`` and entry points.

A featurizer is a function that takes a list of strings and returns a NumPy
array of LSTM inputs **in the model's layout**, with one sequence per text:

- ``btd``: (n, T, D)   - ``tbd``: (T, n, D)   - ``bct``: (n, D, T)

where n is the number of texts it was given. lstm_doctor calls it on chunks of
texts (``--chunk-size``), so T and D must be the same for every chunk (pad to a
fixed length), and streams each chunk into the scan.

``--featurizer`` accepts:

- ``package.module:function`` (``function`` may be a dotted attribute path);
  the current directory is searched after ``sys.path``, so a ``myfeat.py``
  beside the data works without installing it;
- ``path/to/file.py:function``;
- ``NAME``: an entry point in the ``lstm_doctor.featurizers`` group, which a
  package declares in its ``pyproject.toml``::

      [project.entry-points."lstm_doctor.featurizers"]
      mytweets = "mypackage.features:encode"

Every failure, while loading the plug-in or in any of its calls (it raises,
returns something that is not a floating-point array, or returns the wrong
shape), is a ``UserError`` (exit 2) whose message names the plug-in.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points as _entry_points
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lstm_doctor.errors import UserError

GROUP = "lstm_doctor.featurizers"
LAYOUT_SHAPES = {"btd": "(n texts, T, D)", "tbd": "(T, n texts, D)", "bct": "(n texts, D, T)"}


class FeaturizerError(UserError):
    """A featurizer plug-in could not be loaded or misbehaved (exit 2)."""


@dataclass
class Featurizer:
    spec: str  # as given: "module:function", "file.py:function" or an entry point name
    fn: Callable[[list[str]], object]
    origin: str  # where it came from, for notes

    @property
    def label(self) -> str:
        return f"featurizer {self.spec!r}"


def entry_points() -> dict[str, object]:
    """The installed ``lstm_doctor.featurizers`` entry points, by name."""
    return {ep.name: ep for ep in _entry_points(group=GROUP)}


def _resolve(obj, attrs: str, spec: str):
    for part in attrs.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FeaturizerError(f"featurizer {spec!r}: {attrs!r} not found in the module") from None
    return obj


def _import_module(name: str, spec: str):
    """Import ``name``; the current directory is searched last (not installed scripts)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the plug-in's
        raise FeaturizerError(
            f"featurizer {spec!r}: cannot import module {name!r} ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        if added:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise FeaturizerError(f"featurizer {spec!r}: no such file {path}")
    name = f"lstm_doctor_featurizer_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise FeaturizerError(f"featurizer {spec!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        raise FeaturizerError(
            f"featurizer {spec!r}: running {path} failed ({type(exc).__name__}: {exc})"
        ) from None
    return module


def load_featurizer(spec: str) -> Featurizer:
    """The featurizer named by ``--featurizer`` (see the module docstring)."""
    spec = spec.strip()
    if not spec:
        raise FeaturizerError("--featurizer is empty; give module:function or an entry point name")
    if ":" in spec:
        module_part, attrs = spec.rsplit(":", 1)
        if not module_part or not attrs:
            raise FeaturizerError(f"featurizer {spec!r}: expected module:function")
        if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
            module = _import_file(Path(module_part), spec)
            origin = f"file {module_part}"
        else:
            module = _import_module(module_part, spec)
            origin = f"module {module_part}"
        fn = _resolve(module, attrs, spec)
    else:
        points = entry_points()
        if spec not in points:
            known = ", ".join(sorted(points)) or "none is installed"
            raise FeaturizerError(
                f"featurizer {spec!r}: not module:function, and no {GROUP} entry point has this "
                f"name (installed: {known})"
            )
        ep = points[spec]
        try:
            fn = ep.load()
        except Exception as exc:  # noqa: BLE001
            raise FeaturizerError(
                f"featurizer {spec!r}: entry point {ep.value} cannot be loaded ({type(exc).__name__}: {exc})"
            ) from None
        dist = getattr(ep, "dist", None)
        origin = f"entry point {spec} = {ep.value}" + (
            f" (package {dist.name} {dist.version})" if dist is not None else ""
        )
    if not callable(fn):
        raise FeaturizerError(f"featurizer {spec!r}: {type(fn).__name__} object is not callable")
    return Featurizer(spec=spec, fn=fn, origin=origin)


def call(
    featurizer: Featurizer,
    texts: Sequence[str],
    layout: str,
    *,
    start: int = 0,
    total: int | None = None,
    expect: tuple[int, int] | None = None,
) -> np.ndarray:
    """Call the plug-in on ``texts`` and check what it returned.

    ``expect`` is the (T, D) of earlier chunks, which every chunk must match.
    Returns the array in ``layout`` as the plug-in gave it (floating point).
    """
    n = len(texts)
    where = f"texts {start + 1}..{start + n}" + (f" of {total}" if total is not None else "")
    label = featurizer.label
    try:
        out = featurizer.fn(list(texts))
    except Exception as exc:  # noqa: BLE001 - the plug-in's failure, reported as such
        raise FeaturizerError(f"{label} raised {type(exc).__name__}: {exc} (on {where})") from None
    if not isinstance(out, np.ndarray):
        if out is None or isinstance(out, (str, bytes, dict, int, float, bool)):
            raise FeaturizerError(
                f"{label} returned {type(out).__name__}, expected a NumPy array {LAYOUT_SHAPES[layout]} "
                f"(on {where})"
            )
        try:
            out = np.asarray(out)
        except Exception as exc:  # noqa: BLE001 - ragged lists and the like
            raise FeaturizerError(
                f"{label} returned a {type(out).__name__} that is not an array ({exc}) (on {where})"
            ) from None
    if out.dtype.kind != "f":
        raise FeaturizerError(
            f"{label} returned dtype {out.dtype}; expected floating point (float32 or float64) (on {where})"
        )
    if out.ndim != 3:
        raise FeaturizerError(
            f"{label} returned shape {out.shape}; expected a rank-3 array {LAYOUT_SHAPES[layout]} "
            f"for layout {layout} (on {where})"
        )
    batch_axis = 1 if layout == "tbd" else 0
    if out.shape[batch_axis] != n:
        raise FeaturizerError(
            f"{label} returned shape {out.shape} for {n} texts; layout {layout} is "
            f"{LAYOUT_SHAPES[layout]}, so axis {batch_axis} must be {n} (on {where})"
        )
    rest = tuple(s for k, s in enumerate(out.shape) if k != batch_axis)
    if expect is not None and rest != tuple(expect):
        raise FeaturizerError(
            f"{label} returned shape {out.shape} but earlier chunks had {expect} besides the batch "
            f"axis; pad every sequence to the same length (on {where})"
        )
    return out
