"""The package's import structure: nothing inside ``scl/`` reaches up to the package's public
facade (``scl/__init__.py``) for a name; each module imports what it uses from where it is defined."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scl"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")
SUBMODULES = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def upward_imports(source: str) -> list[str]:
    """``import scl`` and ``from scl import NAME`` where NAME is not a submodule, by line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import scl" for alias in node.names if alias.name == "scl"]
        elif isinstance(node, ast.ImportFrom) and node.module == "scl" and node.level == 0:
            found += [f"line {node.lineno}: from scl import {alias.name}" for alias in node.names
                      if alias.name not in SUBMODULES]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_imports_the_package_facade(path: Path) -> None:
    found = upward_imports(path.read_text(encoding="utf-8"))
    assert found == [], f"{path.name} takes names from scl/__init__.py ({found}); import them from their modules"


def test_the_scan_sees_an_upward_import() -> None:
    # the scan must be able to fail: both upward forms are caught, a submodule import is not
    source = "import scl\nfrom scl import load\nfrom scl import figures\ndef f():\n    import scl\n"
    assert upward_imports(source) == ["line 1: import scl", "line 2: from scl import load", "line 5: import scl"]


def test_scl_export_sits_below_the_pipelines() -> None:
    # a fresh interpreter: what `import scl.export` pulls in, nothing imported before it
    import subprocess
    import sys

    code = "import sys, scl.export\nprint(sorted(m for m in sys.modules if m.startswith('scl.pipelines')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
