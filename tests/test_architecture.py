"""The import structure: one direction, top to bottom, and a runtime without the compiler.

Every import of ``tvmq/`` and ``schedules/`` counts, those inside functions too (a cycle hidden in
a function is still a cycle); only ``if TYPE_CHECKING:`` blocks (annotations) do not.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import ROOT, fmnist_inputs

PACKAGES = ("tvmq", "schedules")
# (module, what it must not import, even indirectly through other tvmq modules): the layers
LAYERS = [
    ("schedules", "tvmq"),                       # the kernel library knows nothing of the compiler
    ("tvmq.runtime", "tvmq.builder"),            # loading a library needs no compiler
    ("tvmq.runtime", "tvmq.compiler"),
    ("tvmq.compiler", "tvmq.calibration"),       # calibration, tuning, sensitivity compile with it
    ("tvmq.compiler", "tvmq.tune"),
    ("tvmq.compiler", "tvmq.sensitivity"),
    ("tvmq.compiler", "tvmq.builder"),
    ("tvmq.passes", "tvmq.calibration"),
    ("tvmq.passes", "tvmq.builder"),
    ("tvmq.recipe", "tvmq.passes"),              # the quantization recipe is numpy: passes and
    ("tvmq.recipe", "tvmq.compiler"),            # sensitivity both read it
    ("tvmq.calibration", "tvmq.builder"),        # the orchestrator sits above them all
    ("tvmq.tune", "tvmq.builder"),
    ("tvmq.builder", "tvmq.pipeline"),
    ("tvmq.builder", "tvmq.cli"),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module -> the tvmq / schedules modules it imports (explicitly, anywhere in the file)."""
    mods = _modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:  # a submodule by name, else a name defined in ``base``
                    target = known(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else known(base)
                    if target:
                        targets.add(target)
        graph[mod] = targets - {mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [m for m in graph if m == start or m.startswith(start + ".")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_no_import_cycle() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (a module reaches itself): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_import_downwards_only() -> None:
    graph = import_graph()
    wrong = []
    for low, high in LAYERS:
        reached = sorted(m for m in _reachable(graph, low) if m == high or m.startswith(high + "."))
        if reached:
            wrong.append(f"{low} reaches {', '.join(reached)}")
    assert not wrong, "; ".join(wrong)


def test_the_checker_sees_cycles_and_function_level_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by an import inside a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert "tvmq.compiler" in import_graph()["tvmq.calibration.collect"]  # top-level import
    assert "tvmq.builder" in import_graph()["tvmq.cli"]  # inside a function


RUNTIME_ONLY = """
import sys, importlib.abc
class NoCompiler(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tvm.relax" or name.startswith("tvm.relax.") or name.startswith("tvmq.builder") \\
                or name.startswith("tvmq.compiler"):
            raise ImportError(f"{name} is part of the compiler")
sys.meta_path.insert(0, NoCompiler())
import numpy as np, tvm, tvmq
from tvm import base
assert base._RUNTIME_ONLY, "TVM_USE_RUNTIME_LIB=1 did not take"
x = np.load(sys.argv[2])
m = tvmq.load(sys.argv[1])
np.save(sys.argv[3], np.stack([m.run({m.input_names[0]: xi})[m.output_names[0]] for xi in x]))
assert not [k for k in sys.modules if k.startswith(("tvm.relax", "tvmq.builder", "tvmq.compiler"))]
p = m.profile(warmup=1, repeat=2)
assert any(r.layers and r.calls for r in p.rows), p.table()
print(m.benchmark(warmup=1, repeat=3).median_ms > 0)
"""


def test_a_compiled_model_runs_with_the_runtime_alone(fmnist_compiled: Path, tmp_path: Path) -> None:
    """A fresh process with ``TVM_USE_RUNTIME_LIB=1`` (TVM loads ``libtvm_runtime.so``, not the
    compiler library) in which ``tvm.relax`` and tvmq's compiler cannot be imported: ``tvmq.load``
    runs the bundled model, with the outputs of a normal process bit for bit."""
    import tvmq

    x, _ = fmnist_inputs(5)
    x = x[:, None]
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(fmnist_compiled), str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("True")
    m = tvmq.load(fmnist_compiled)
    want = np.stack([m.run({m.input_names[0]: xi})[m.output_names[0]] for xi in x])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_the_spec_vocabulary_is_written_once() -> None:
    """No list of three or more spec names outside ``tvmq/specs.py``, except the latency
    predictor's one-hot feature order (a model format: reordering it would change predictions),
    which must name exactly the specs there are."""
    from tvmq import specs
    from tvmq.tune import predictor

    names = set(specs.NAMES)
    found = []
    for f in sorted((ROOT / "tvmq").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 3 and all(
                    isinstance(e, ast.Constant) and e.value in names for e in node.elts):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    allowed = {"tvmq/specs.py"}
    assert [p for p in found if p.split(":")[0] not in allowed | {"tvmq/tune/predictor.py"}] == []
    assert set(predictor.SPECS) == names | {"conversion"}


def test_no_long_function_without_a_reason() -> None:
    """Functions of ``tvmq/`` and ``schedules/`` stay under 80 lines, or their docstring says
    why not ("Over 80 lines: ...")."""
    long = []
    for root in ("tvmq", "schedules"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > 80 and "Over 80 lines:" not in (ast.get_docstring(node) or ""):
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


THREADS_ENV = """
import os, sys, tvm, tvmq
from tvmq.runtime import set_num_threads
assert "TVM_NUM_THREADS" not in os.environ
m = tvmq.load(sys.argv[1])
pool = tvm.get_global_func("runtime.NumThreads")()
assert os.environ["TVM_NUM_THREADS"] == str(pool), (os.environ["TVM_NUM_THREADS"], pool)
set_num_threads(3)
assert os.environ["TVM_NUM_THREADS"] == "3"
print("ok")
"""


def test_loading_a_model_pins_the_concurrency_each_parallel_launch_reads(fmnist_compiled: Path) -> None:
    """TVM reads its concurrency at every parallel launch, from ``TVM_NUM_THREADS`` or else from
    the CPU count (which glibc reads from sysfs: a file opened per launch, ~100 per ResNet-50
    inference). ``tvmq.load`` sets the variable, where unset, to TVM's pool size, and
    ``set_num_threads`` to the threads it asks for."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", THREADS_ENV, str(fmnist_compiled)],
                       env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"
