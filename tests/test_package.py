"""Packaging, the engine's independence from deepinv, ruff, and the CLI skeleton."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest
from jfb_inverse.cli.app import app
from typer.testing import CliRunner

import jfb_inverse

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_engine_never_imports_deepinv():
    for path in (ROOT / "jfb_inverse" / "implicit").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "deepinv" for n in names), f"{path.name} imports deepinv"
    # And importing the engine does not pull deepinv in transitively.
    code = "import sys, jfb_inverse.implicit; print('deepinv' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_and_datasets_install_under_the_namespace():
    import jfb_inverse.cli
    import jfb_inverse.datasets

    assert pathlib.Path(jfb_inverse.cli.__file__).parent == ROOT / "cli"
    assert pathlib.Path(jfb_inverse.datasets.__file__).parent == ROOT / "datasets"


def test_cli_version_and_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and jfb_inverse.__version__ in result.stdout
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "problems" in result.stdout


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    out = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
