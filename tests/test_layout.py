"""The package's shape: every shipped module imports with only the required dependencies, no
module switches matplotlib's backend, the library never imports its demo or the test fixtures,
and the stage names mean one thing."""

import ast
import subprocess
import sys
from pathlib import Path

import budcache

PACKAGE = Path(budcache.__file__).parent

IMPORT_ALL = """
import importlib, pkgutil, sys

for hidden in ("transformers", "peft", "sklearn", "lpips", "torchvision"):
    sys.modules[hidden] = None  # not installed: importing raises, find_spec answers None
import budcache
names = [m.name for m in pkgutil.walk_packages(budcache.__path__, "budcache.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
assert "matplotlib.pyplot" not in sys.modules, "a module imports pyplot"
print(len(names))
"""


def test_every_module_imports_with_only_the_required_dependencies():
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 40


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            names |= {name} | {f"{name}.{a.name}" for a in node.names}
    return names


def test_the_library_imports_neither_its_demo_nor_the_test_fixtures():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        imported = _imports(path)
        assert not any(n.startswith("tests") for n in imported), rel
        if not rel.startswith(("demo/", "cli/")):  # the CLI offers the demo as one model source
            assert not any(n.startswith("budcache.demo") for n in imported), rel


def test_stage_names_mean_one_thing():
    import budcache.align
    import budcache.search
    from budcache.search import Evaluator

    assert budcache.search is sys.modules["budcache.search"] and budcache.align is sys.modules["budcache.align"]
    assert (
        callable(budcache.search) and callable(budcache.align) and Evaluator.__module__ == "budcache.search.evaluator"
    )


def _graph() -> dict[str, set[str]]:
    """Every budcache module and the budcache modules it imports (at any level: lazy imports count too)."""
    modules = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }

    def module_of(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {t for n in _imports(p) if (t := module_of(n)) and t != m} for m, p in modules.items()}


def test_no_import_circles():
    """No module imports itself through others (a package importing its own submodules is its interface, not a
    circle: edges into a package's ``__init__`` from its own submodules are left out)."""
    graph = _graph()
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not m.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_plan_artifact_depends_on_nothing_above_it():
    """Plans and plan sets are read and written without the pipeline stages: no import of hooks, calibration,
    search, alignment, evaluation or the command line."""
    above = ("hooks", "calibration", "search", "align", "evaluation", "cli", "demo", "baselines")
    for name in ("budcache.plan", "budcache.planset"):
        reached, todo = set(), [name]
        while todo:
            m = todo.pop()
            if m not in reached:
                reached.add(m)
                todo += _graph()[m]
        assert not [m for m in reached if m.split(".")[1] in above], name
