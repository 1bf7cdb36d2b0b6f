"""Print the README's layout map from the tree: every source file, in layer order, with its purpose
(a module's first docstring line, a C file's first comment). `python tools/layout.py --check` exits 1
when README.md's map differs (tests/test_layers.py runs that); `--write` puts the map in README.md."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the layers, top to bottom (docs/ARCHITECTURE.md; pyproject.toml's import-linter contract), then the root
ORDER = ["src/shmbroker/__main__.py", "src/shmbroker/cli.py", "src/shmbroker/bench", "src/shmbroker/api.py", "src/shmbroker/federation", "src/shmbroker/services", "src/shmbroker/framework", "src/shmbroker/transport",
         "src/shmbroker/protocol", "src/shmbroker/core", "src/shmbroker/__init__.py", "src/shmbroker/_errors.py", "src/shmbroker/_version.py",
         "src/shmbroker/_build.py", "csrc"]
START, END = "<!-- layout: tools/layout.py -->", "<!-- /layout -->"


def _purpose(path: Path) -> str:
    text = path.read_text()
    if path.suffix == ".py":
        doc = ast.get_docstring(ast.parse(text))
        if not doc:
            raise SystemExit(f"{path.relative_to(ROOT)} has no docstring: its first line is its line in the map")
        return doc.splitlines()[0]
    first = text.splitlines()[0]
    m = re.match(r"/\*\s*[\w./]+:\s*(.*?)\s*(\*/)?$", first)
    if not m:
        raise SystemExit(f"{path.relative_to(ROOT)}: its first line is not a purpose comment")
    return m.group(1)


def _files(entry: str) -> list[Path]:
    p = ROOT / entry
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.suffix in (".py", ".c", ".h") and "__pycache__" not in f.parts)
    return sorted(files, key=lambda f: (str(f.parent), f.name != "__init__.py", f.name))


def _unplaced() -> list[str]:
    """Sources under src/shmbroker and csrc that no ORDER entry covers (a new package, say): the map would
    leave them out without a word."""
    covered = {f for entry in ORDER for f in _files(entry)}
    every = [f for top in ("src/shmbroker", "csrc") for f in (ROOT / top).rglob("*")
             if f.suffix in (".py", ".c", ".h") and "__pycache__" not in f.parts]
    return sorted(str(f.relative_to(ROOT)) for f in every if f not in covered)


def layout() -> str:
    missing = _unplaced()
    if missing:
        raise SystemExit(f"tools/layout.py: not in ORDER (add their package where its layer is): {', '.join(missing)}")
    rows = [(str(f.relative_to(ROOT)), _purpose(f)) for entry in ORDER for f in _files(entry)]
    width = max(len(r[0]) for r in rows) + 2
    return "\n".join(f"{path:<{width}}{purpose}" for path, purpose in rows)


def block() -> str:
    return f"{START}\n```\n{layout()}\n```\n{END}"


def main() -> int:
    if "--write" not in sys.argv and "--check" not in sys.argv:
        print(layout())
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    i, j = text.index(START), text.index(END) + len(END)
    if "--write" in sys.argv:
        readme.write_text(text[:i] + block() + text[j:])
        return 0
    if "--check" in sys.argv:
        if text[i:j] != block():
            print("README.md's layout map is not the tree's: run python tools/layout.py --write", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
