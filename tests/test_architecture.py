"""The house rules of DESIGN.md as checks: import direction (import-linter contracts in
pyproject.toml) and no module using another module's private names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plugins", "torchgeo_ext", "monai_ext", "agri_ext", "graph_ext")


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [exe, str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "7 kept, 0 broken" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize(
    "where,planted,message",
    [
        ("plugins/_planted.py", "import graph_ext\n", "plugins is not allowed to import graph_ext"),
        ("plugins/_planted.py", "import monai\n", "plugins is not allowed to import monai"),
        (
            "agri_ext/_planted.py",
            "import plugins.methods.dcc\n",
            "not allowed to import plugins.methods",
        ),
        ("graph_ext/_planted.py", "import monai_ext\n", "graph_ext"),
    ],
)
def test_import_contracts_fail_on_a_planted_violation(tmp_path, where, planted, message):
    """The contracts are not vacuous: a copy of the tree with one forbidden import breaks them."""
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / where).write_text(planted)
    proc = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert message in proc.stdout, proc.stdout[-3000:]


def private_imports(source: str, module: str) -> list[str]:
    """``from X import _name`` (or ``X._name`` on an imported project module) in ``source`` where
    ``X`` is another module of this project: one line per use."""
    tree = ast.parse(source)
    found = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in PACKAGES or node.module == module:
                continue
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{module}:{node.lineno} imports {node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES and a.name != module:
                    aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_private_import_check_finds_a_planted_use():
    assert private_imports("from plugins.reporting import _x\n", "graph_ext.run") == [
        "graph_ext.run:1 imports plugins.reporting._x"
    ]
    assert private_imports("import plugins.losses as L\nL._y\n", "graph_ext.loss") == [
        "graph_ext.loss:2 uses plugins.losses._y"
    ]
    assert private_imports("from plugins.reporting import pyplot\n", "graph_ext.run") == []


def test_no_module_uses_another_modules_private_names():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            found += private_imports(path.read_text(), module)
    assert found == [], "\n".join(found)
