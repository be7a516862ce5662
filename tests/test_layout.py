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
