"""The import graph as a reviewer reads it (issue 17): every dependency at the top
of its module, no import cycle, and a lazy import only where it buys something.

A lazy import (inside a function) is allowed where the module it imports brings
in a heavy library that the importing module itself does not: torch, keras,
onnx, pytensor, matplotlib, rich, … — so ``diagnose --format json`` never pays
for rich or matplotlib, and a ``.pt`` never imports torch. NumPy counts as heavy
only for the modules that stay NumPy-free on purpose: the CLI (``--help``), the
rule registry and its rule modules (``rules``, ``explain``), and the few small
modules those import. Two places are exempt: ``cli/``, the boundary where each
command imports its job, and ``capture/symbolic/backend.py``, which picks
PyTensor or Theano at run time.

The graph is read statically (ast), so the test is fast and names file:line.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lstm_doctor"
HEAVY = {"torch", "keras", "jax", "onnx", "onnxruntime", "h5py", "safetensors", "joblib", "pytensor", "theano",
         "matplotlib", "scipy", "rich", "numba", "tensorboard"}
# Imports a static reading cannot see: the backend imports its library in a function it calls at import.
DYNAMIC = {"lstm_doctor.capture.symbolic.backend": {"pytensor"}}
NUMPY_FREE = ["lstm_doctor", "lstm_doctor.__main__", "lstm_doctor.analyzers", "lstm_doctor.cli", "lstm_doctor.jobs.rules",
              "lstm_doctor.choices", "lstm_doctor.errors", "lstm_doctor.findings", "lstm_doctor.output"]
EXEMPT = ("lstm_doctor.cli", "lstm_doctor.capture.symbolic.backend")


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _within(module: str, prefixes) -> bool:
    return any(module == p or (p != "lstm_doctor" and module.startswith(p + ".")) for p in prefixes)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads (absolute names; a submodule imported by name counts)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    names_only = [a for a in node.names if f"{base}.{a.name}" not in MODULES]
    return subs + ([base] if names_only or not subs else [])


def _is_type_checking(test: ast.expr) -> bool:
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


@lru_cache(None)
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"))


@lru_cache(None)
def top_level(module: str) -> tuple[str, ...]:
    """Modules imported while ``module`` is imported: its top-level statements, also in
    if/try/with/class bodies, not under ``if TYPE_CHECKING``."""
    found: list[str] = []

    def visit(statements):
        for s in statements:
            if isinstance(s, (ast.Import, ast.ImportFrom)):
                found.extend(_targets(module, s))
            elif isinstance(s, ast.If):
                if not _is_type_checking(s.test):
                    visit(s.body)
                visit(s.orelse)
            elif isinstance(s, ast.Try):
                for block in (s.body, s.orelse, s.finalbody, *[h.body for h in s.handlers]):
                    visit(block)
            elif isinstance(s, (ast.With, ast.ClassDef)):
                visit(s.body)

    visit(_tree(module).body)
    return tuple(found)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(None)
def heavy(module: str) -> frozenset[str]:
    """The heavy libraries (and numpy) that importing ``module`` loads, transitively."""
    libraries: set[str] = set()
    seen: set[str] = set()
    todo = [module, *_parents(module)]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        libraries |= DYNAMIC.get(m, set())
        if m in MODULES:
            for target in top_level(m):
                todo += [target, *_parents(target)]
        elif m.split(".")[0] in HEAVY | {"numpy"}:
            libraries.add(m.split(".")[0])
    return frozenset(libraries)


def lazy_imports(module: str):
    """(line, statement, targets) of every import inside a function of ``module``."""
    seen = set()
    for fn in ast.walk(_tree(module)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in seen:
                    seen.add(node.lineno)
                    yield node.lineno, ast.unparse(node), _targets(module, node)


def bought(module: str, targets: list[str]) -> set[str]:
    """What a lazy import of ``targets`` keeps out of ``module``'s own import."""
    libraries: set[str] = set()
    for t in targets:
        libraries |= heavy(t) if t in MODULES else {t.split(".")[0]} & (HEAVY | {"numpy"})
    libraries -= heavy(module)
    if not _within(module, NUMPY_FREE):
        libraries.discard("numpy")
    return libraries


def test_every_lazy_import_keeps_a_heavy_library_out():
    offenders = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line}: {text}"
        for m in sorted(MODULES)
        if not _within(m, EXEMPT)
        for line, text, targets in lazy_imports(m)
        if not bought(m, targets)
    ]
    assert not offenders, "imports that belong at the top of their module:\n" + "\n".join(offenders)


def test_the_package_has_no_import_cycle():
    graph = {m: {t for t in top_level(m) if t in MODULES and t != m} for m in MODULES}
    # Tarjan's strongly connected components: any with more than one module is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_policy_reads_the_graph_it_claims():
    """The static reading agrees with Python: the NumPy-free modules import without
    NumPy, and a module the reading calls heavy does load its library."""
    code = (
        "import importlib, json, sys\n"
        "out = {}\n"
        "for m in json.loads(sys.argv[1]):\n"
        "    importlib.import_module(m)\n"
        "    out[m] = 'numpy' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    free = [m for m in MODULES if _within(m, NUMPY_FREE) and m != "lstm_doctor.__main__"]
    assert len(free) > 15
    for m in free:
        assert "numpy" not in heavy(m), m
    result = subprocess.run([sys.executable, "-c", code, json.dumps(free)], capture_output=True, text=True, check=True)
    assert not any(json.loads(result.stdout).values()), result.stdout
    probe = "import sys, lstm_doctor.report.text; print('rich' in sys.modules)"
    assert "rich" in heavy("lstm_doctor.report.text")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


def test_the_policy_catches_a_light_lazy_import(tmp_path):
    """The rule is not vacuous: an import of a light module inside a function is an offender."""
    tree = ast.parse("def f():\n    import os\n    from lstm_doctor.report import build\n")
    MODULES["lstm_doctor.probe_module"] = tmp_path / "probe_module.py"
    _tree.cache_clear()
    (tmp_path / "probe_module.py").write_text(ast.unparse(tree))
    try:
        found = [targets for _, _, targets in lazy_imports("lstm_doctor.probe_module")]
        assert [bought("lstm_doctor.probe_module", t) for t in found] == [set(), set()]
        assert bought("lstm_doctor.analyzers.cell", ["lstm_doctor.report.build"]) == {"numpy"}
        assert bought("lstm_doctor.load.torch", ["torch"]) == {"torch"}
    finally:
        del MODULES["lstm_doctor.probe_module"]
        _tree.cache_clear()
