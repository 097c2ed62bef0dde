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


# A data owner's device runs the exported model with onnxruntime and may have no torch: what it
# needs of scl, the noise for the model's input, must run without it.
DEVICE_CODE = """
import sys, types
sys.modules["torch"] = None  # `import torch` now raises ImportError
for name, path in (("scl", {package!r}), ("scl.export", {package!r} + "/export")):
    bare = types.ModuleType(name)  # the package without its __init__, which imports torch
    bare.__path__ = [path]
    sys.modules[name] = bare
from scl.export.noise import draw_noise
meta = {{"scl_noise_mode": "input", "scl_noise_distribution": "standard_normal",
        "scl_noise_shape": '["batch", 3, 4]', "scl_noise_dtype": "float32"}}
print(draw_noise(meta, 2).shape, draw_noise({{**meta, "scl_noise_distribution": "uniform"}}, 1).dtype)
"""


def test_the_device_side_noise_helper_runs_without_torch() -> None:
    import subprocess
    import sys

    code = DEVICE_CODE.format(package=str(PACKAGE))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(2, 3, 4) float32"
    # and the check can fail: a module that needs torch is refused under the same stub
    broken = code.replace("from scl.export.noise import draw_noise", "from scl.export.trace import Sampler")
    result = subprocess.run([sys.executable, "-c", broken], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "torch" in result.stderr
