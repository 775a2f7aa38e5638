"""The one place that imports the symbolic library: PyTensor, or legacy Theano.

Everything symbolic in lstm_doctor (``lstm_doctor.capture.symbolic.scan``) goes through the
names exported here, so the same graph code runs on either library:

=================  ==========================  ==================================
name               PyTensor                    Theano 1.0.x
=================  ==========================  ==================================
``tensor``         ``pytensor.tensor``         ``theano.tensor``
``scan``           ``pytensor.scan``           ``theano.scan``
``scan_outputs``   ``scan(..., return_updates=False)``   ``scan(...)[0]``
``function``       ``pytensor.function``       ``theano.function``
``grad``           ``pytensor.grad``           ``theano.grad``
``config``         ``pytensor.config``         ``theano.config``
``sigmoid``        ``pytensor.tensor.sigmoid`` ``theano.tensor.nnet.sigmoid``
``NAME``           ``"pytensor"``              ``"theano"``
``VERSION``        ``pytensor.__version__``    ``theano.__version__``
=================  ==========================  ==================================

PyTensor is preferred. Theano is used when PyTensor is not importable, or when
the environment variable ``LSTM_DOCTOR_BACKEND=theano`` asks for it.

The compile mode is chosen on purpose (``compile_mode()``), never left to the
library's default: PyTensor 3's default is NUMBA, whose JIT costs ~20 s per
graph and dtype (docs/engines.md), and its C backend (CVM) runs this step 1.5-2x
slower than Python thunks and costs 30-60 s of g++ on a cold cache (measured
numbers in ``lstm_doctor.capture.symbolic.scan``). The chosen mode runs every op's NumPy
``perform`` (Python thunks) with the ``fast_run`` rewrites except element-wise
fusion, because a fused ``Composite`` has no NumPy implementation and would
run element by element, plus one rewrite (``_numpy_friendly``) that turns the
other element-by-element cases back into NumPy ufunc calls.

Theano 1.0.5 on Python 3.11 needs some care (docs/engines.md), done here before the
import, and only as defaults that the user's ``THEANO_FLAGS`` can override:

- ``cxx=`` (no C compiler: pure Python thunks, no ~21 s cold compile) and
  ``blas.ldflags=`` (its BLAS detection breaks);
- ``sys.modules['theano.scan_module.scan_perform_ext'] = None``, so that the
  prebuilt Cython scan loop (which fails to build on 3.11) is never tried and
  scan loops in Python;
- fusion excluded from the mode, as above; ``lstm_doctor.capture.symbolic.scan`` writes the
  sigmoid as 0.5·tanh(0.5·x) + 0.5 (NumPy ufuncs only) for the same reason.

The Theano branch is written against Theano 1.0.5's API and guarded. The
legacy job at the end of ``.ci/run`` exercises it: a Python 3.11 venv with
``theano==1.0.5`` and ``numpy<1.24`` runs the scan's parity tests and the demo.
"""

from __future__ import annotations

import inspect
import os
import sys

import numpy as np

__all__ = [
    "NAME",
    "VERSION",
    "compile_mode",
    "config",
    "function",
    "grad",
    "mode_name",
    "scan",
    "scan_outputs",
    "sigmoid",
    "tensor",
]

_THEANO_DEFAULT_FLAGS = "cxx=,blas.ldflags="


def _import_pytensor():
    import pytensor
    import pytensor.tensor

    return pytensor


def _import_theano():
    # Defaults first: Theano's flag parser lets later entries win, so whatever
    # the user put in THEANO_FLAGS overrides them.
    user_flags = os.environ.get("THEANO_FLAGS", "")
    os.environ["THEANO_FLAGS"] = (
        f"{_THEANO_DEFAULT_FLAGS},{user_flags}" if user_flags else _THEANO_DEFAULT_FLAGS
    )
    # The prebuilt Cython scan fails to build on Python 3.11 (longintrepr.h);
    # a None entry makes its import fail fast and scan falls back to Python.
    sys.modules.setdefault("theano.scan_module.scan_perform_ext", None)
    import theano
    import theano.tensor
    import theano.tensor.nnet

    return theano


def _load():
    wanted = os.environ.get("LSTM_DOCTOR_BACKEND", "").strip().lower()
    if wanted not in ("", "pytensor", "theano"):
        raise ImportError(
            f"LSTM_DOCTOR_BACKEND={wanted!r}: expected 'pytensor' or 'theano'"
        )
    if wanted == "theano":
        return "theano", _import_theano()
    try:
        return "pytensor", _import_pytensor()
    except ImportError as pytensor_error:
        if wanted == "pytensor":
            raise
        try:
            return "theano", _import_theano()
        except ImportError:
            raise ImportError(
                "the symbolic engine needs PyTensor (pip install pytensor) "
                "or legacy Theano; neither could be imported"
            ) from pytensor_error


NAME, _lib = _load()
VERSION: str = str(getattr(_lib, "__version__", "unknown"))

tensor = _lib.tensor
scan = _lib.scan
function = _lib.function
grad = _lib.grad
config = _lib.config

if NAME == "pytensor":
    sigmoid = tensor.sigmoid
else:
    sigmoid = tensor.nnet.sigmoid

_SCAN_HAS_RETURN_UPDATES = "return_updates" in inspect.signature(scan).parameters


def scan_outputs(fn, **kwargs):
    """``scan`` returning only its outputs (a list, one per step output).

    PyTensor 3 returns the outputs alone with ``return_updates=False``; Theano
    (and PyTensor 2) return ``(outputs, updates)``. The graphs built here have no random or
    shared-variable updates, so none are dropped.
    """
    kwargs["return_list"] = True
    if _SCAN_HAS_RETURN_UPDATES:
        return scan(fn, return_updates=False, **kwargs)
    outputs, updates = scan(fn, **kwargs)  # Theano, PyTensor < 3
    if updates:
        raise RuntimeError("scan produced updates, which lstm_doctor does not expect")
    return outputs


_MODE = None
_MODE_NAME = ""


def _numpy_friendly(elemwise_cls, node):
    """Rewrite an element-wise node that Python thunks would run element by element.

    With Python thunks an ``Elemwise`` is one NumPy ufunc call only when its
    scalar op has a NumPy function (``nfunc_spec``) and the input count matches
    it; otherwise it runs through ``np.frompyfunc``, one Python call per element
    (~100x slower). Two cases come out of the standard rewrites:

    - n-ary add/mul (n > 2): canonicalisation flattens ``(a + b) + c`` into one
      3-input ``Add``. It becomes a binary chain again, in the same order
      (which is also the order of the NumPy reference).
    - softplus, sigmoid and clip: the stabilisation rewrites turn
      ``log1p(exp(x))`` into a scalar ``Softplus`` op, gradients introduce
      ``Sigmoid``, and ``clip`` is a scalar op. They become
      max(x, 0) + log1p(exp(-|x|)) (NumPy's logaddexp(0, x)),
      0.5·tanh(0.5·x) + 0.5 and min(max(x, low), high).

    Only float nodes whose (first) input has the output's dtype are touched,
    and the replacement must have the node's exact type, so no intermediate
    changes precision.
    """
    op = node.op
    if getattr(op, "inplace_pattern", None) or len(node.outputs) != 1:
        return False
    out_type = node.outputs[0].type
    dtype = out_type.dtype
    if not dtype.startswith("float") or node.inputs[0].type.dtype != dtype:
        return False
    same_dtype = all(i.type.dtype == dtype for i in node.inputs)
    scalar_name = type(op.scalar_op).__name__
    spec = getattr(op.scalar_op, "nfunc_spec", None)
    if spec is not None and spec[1] == 2 and len(node.inputs) > 2 and same_dtype:
        binary = elemwise_cls(op.scalar_op)
        out = node.inputs[0]
        for operand in node.inputs[1:]:
            out = binary(out, operand)
    elif scalar_name in ("Softplus", "ScalarSoftplus") and len(node.inputs) == 1:
        x = node.inputs[0]
        zero = tensor.constant(np.asarray(0, dtype=dtype))
        out = tensor.maximum(x, zero) + tensor.log1p(tensor.exp(-abs(x)))
    elif scalar_name in ("Sigmoid", "ScalarSigmoid") and len(node.inputs) == 1:
        half = tensor.constant(np.asarray(0.5, dtype=dtype))
        out = half * tensor.tanh(half * node.inputs[0]) + half
    elif scalar_name == "Clip" and len(node.inputs) == 3:
        x, low, high = node.inputs
        out = tensor.minimum(tensor.maximum(x, low), high)
    else:
        return False
    if out.type != out_type:
        return False
    return [out]


_NUMPY_FRIENDLY_POSITION = 49.2  # after canonicalize, specialize and fusion (49); before inplace (50+)


def _build_mode(include=("fast_run",), exclude=("fusion",)):
    """Python thunks (each op's NumPy ``perform``), the ``include`` rewrites
    minus ``exclude``, plus ``_numpy_friendly``. Returns (mode, name).

    Only the defaults are used by lstm_doctor; the arguments exist for the
    benchmarks that chose them.
    """
    rewrites = "+".join(include) + "".join(f" -{tag}" for tag in exclude)
    name = f"python-vm ({NAME} VM linker, Python thunks, {rewrites}, numpy-friendly elemwise)"
    if NAME == "pytensor":
        from pytensor.compile.mode import Mode
        from pytensor.graph.rewriting import basic as rewriting
        from pytensor.graph.rewriting.db import RewriteDatabaseQuery
        from pytensor.link.vm import VMLinker
        from pytensor.tensor.elemwise import Elemwise

        # dfs_rewriter is PyTensor 3's name for in2out
        walk = getattr(rewriting, "dfs_rewriter", None) or rewriting.in2out

        @rewriting.node_rewriter([Elemwise])
        def numpy_friendly_elemwise(fgraph, node):
            return _numpy_friendly(Elemwise, node)

        linker = VMLinker(use_cloop=False, c_thunks=False)
        query = (
            RewriteDatabaseQuery(include=list(include))
            .excluding(*exclude)
            .register((walk(numpy_friendly_elemwise), _NUMPY_FRIENDLY_POSITION))
        )
        return Mode(linker=linker, optimizer=query), name

    from theano import gof
    from theano.compile.mode import Mode
    from theano.tensor.elemwise import Elemwise

    @gof.local_optimizer([Elemwise])
    def numpy_friendly_elemwise(node):
        if not isinstance(node.op, Elemwise):
            return False
        return _numpy_friendly(Elemwise, node)

    try:
        from theano.gof.vm import VM_Linker

        linker = VM_Linker(use_cloop=False, c_thunks=False)
    except (ImportError, TypeError):  # a Theano without VM_Linker(c_thunks=...)
        linker = "py"
    mode = Mode(linker=linker, optimizer=include[0])
    if len(include) > 1:
        mode = mode.including(*include[1:])
    # cxx_only rewrites are excluded by Theano itself when cxx is empty; exclude
    # them explicitly too in case the user's flags set a compiler.
    mode = mode.excluding(*exclude, "cxx_only")
    try:
        mode = mode.register((gof.opt.in2out(numpy_friendly_elemwise), _NUMPY_FRIENDLY_POSITION))
    except AttributeError:  # a Theano whose Mode cannot register extra rewrites
        name = name.replace(", numpy-friendly elemwise", "")
    return mode, name


def compile_mode():
    """The compile mode lstm_doctor uses for every symbolic function (built once)."""
    global _MODE, _MODE_NAME
    if _MODE is None:
        _MODE, _MODE_NAME = _build_mode()
    return _MODE


def mode_name() -> str:
    """A human-readable name of ``compile_mode()``, for reports."""
    compile_mode()
    return _MODE_NAME
