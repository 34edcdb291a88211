"""Startup and installs: `import dept` and the CLI (`dept --help`, every command's `--help`) load no torch,
and a missing optional package names the extra that brings it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_dept_and_its_cli_without_torch():
    _run("import dept, dept.cli, sys; assert 'torch' not in sys.modules, 'torch was imported'")


def test_help_pages_do_not_import_torch():
    _run(
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dept.cli import app\n"
        "for args in (['--help'], ['bench', '--help'], ['train', '--help'], ['tune', '--help'], ['serve', '--help'],\n"
        "             ['export-embeds', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )


def test_a_missing_extra_names_the_pip_command():
    from dept._extras import MissingExtraError, requires

    with pytest.raises(MissingExtraError, match=r'pip install "dept\[train\]"'):
        with requires("train"):
            import dept_test_no_such_package  # noqa: F401
    with pytest.raises(ModuleNotFoundError):  # our own modules are never reported as an extra
        with requires("train"):
            import dept.no_such_module  # noqa: F401
