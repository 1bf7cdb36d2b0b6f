"""The package's shape (docs/ARCHITECTURE.md): layers imported only downward, no import cycle, no
private name taken from another package. Checked on the source, with the real tools."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "shmbroker"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of a broker module, lazy ones too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "shmbroker" or module.startswith("shmbroker."):
                found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("shmbroker.")]
    return found


def test_the_layers_contracts_hold():
    """import-linter, configured in pyproject.toml: cli > bench > api > services > framework >
    transport > protocol > core, and the services independent of each other."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 kept, 0 broken" in run.stdout, run.stdout[-2000:]


def test_no_module_imports_itself_back():
    """No cycle among broker's modules, counting the imports inside functions (which import-linter's
    layers allow within one layer, and which once hid six modules importing each other)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(name, path):
            for target in [f"{module}.{n}" for n in names] + [module]:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    graph.pop("shmbroker", None)  # the public re-exports: above everything, imported by nothing inside
    for deps in graph.values():
        deps.discard("shmbroker")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other: {cycles}"


def test_no_private_name_crosses_a_package():
    """`from shmbroker.x.y import _name` only within broker.x: another package goes through public names."""
    modules = _modules()
    bad = []
    for name, path in modules.items():
        home = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for module, names, line in _imports(name, path):
            theirs = module if modules.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
            if theirs in ("shmbroker", home):
                continue  # the root's own (_errors, _version, _brk) are every layer's
            bad += [f"{path.relative_to(ROOT)}:{line}: {n} from {module}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names taken from another package:\n" + "\n".join(bad)


def test_the_readme_layout_map_is_the_trees():
    """README.md's layout map is made from the tree (tools/layout.py): every file, its docstring's line."""
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "layout.py"), "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_the_layout_map_names_a_package_it_does_not_place():
    """A new package that tools/layout.py's ORDER does not place is named, not left out of the map."""
    stray = ROOT / "src" / "shmbroker" / "zz_stray_pkg"
    stray.mkdir()
    try:
        (stray / "__init__.py").write_text('"""A package no layer holds."""\n')
        run = subprocess.run([sys.executable, str(ROOT / "tools" / "layout.py"), "--check"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and "src/shmbroker/zz_stray_pkg/__init__.py" in run.stderr, run.stderr
    finally:
        import shutil
        shutil.rmtree(stray)
