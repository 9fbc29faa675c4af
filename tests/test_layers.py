"""The layers import only downwards: ext and engine below streams and sinks, the composition root
(scanstream.cli, scanstream.wiring, scanstream.dashboard, scanstream.api) on top, and sinks never import streams.

Read from the source with ``ast`` (imports inside functions included), so a lazy import that runs
back up a layer fails here even when no test happens to execute it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Folder -> the scanstream subpackages its modules must never import.
ROOT_PACKAGES = ("scanstream.cli", "scanstream.wiring", "scanstream.dashboard", "scanstream.api")
FORBIDDEN = {
    "ext": ("scanstream.streams", "scanstream.sinks", *ROOT_PACKAGES),
    "engine": ("scanstream.streams", "scanstream.sinks", *ROOT_PACKAGES),
    "sinks": ("scanstream.streams", *ROOT_PACKAGES),
    "streams": ROOT_PACKAGES,
}
#: Names the layers once had at the top level; an import of one is a checkout-only import.
OLD_TOP_LEVEL = ("engine", "ext", "streams", "sinks")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a Python or Cython source (cimports skipped)."""
    text = path.read_text()
    if path.suffix == ".pyx":  # Cython: keep the plain Python import lines, which ast can read
        text = "\n".join(line.lstrip() if line.lstrip().startswith(("import ", "from ")) and " cimport " not in line
                         and not line.rstrip().endswith(("(", "\\")) else "" for line in text.splitlines())
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".pyx"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_import_runs_back_up(folder):
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {module}"
             for p in sources(folder) for line, module in imported(p)
             if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[folder])]
    assert not wrong, "layering errors:\n" + "\n".join(wrong)


@pytest.mark.parametrize("folder", [*sorted(FORBIDDEN), "scanstream", "benchmarks", "tests"])
def test_every_import_uses_the_installed_name(folder):
    """``import engine...`` works in a checkout only; an installed wheel has ``scanstream.engine``."""
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {module}"
             for p in sources(folder) for line, module in imported(p)
             if module.split(".")[0] in OLD_TOP_LEVEL]
    assert not wrong, "imports by a name the wheel does not install:\n" + "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: an import inside a function, running back up, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from scanstream.sinks.clickhouse import connect\n")
    assert imported(bad) == [(2, "scanstream.sinks.clickhouse")]
