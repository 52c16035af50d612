"""Layers only point down: the import-linter contracts of pyproject.toml hold, they cover every package, and
the commands that train nothing start without torch (which a config that imported the model used to load)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_imports_keep_the_layer_contracts() -> None:
    done = subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo", "pyproject.toml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    broken = done.stdout.partition("Broken contracts")[2] or done.stdout + done.stderr
    assert done.returncode == 0, f"import-linter contracts broken (pyproject.toml [tool.importlinter]):\n{broken}"


def test_the_contracts_cover_every_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {name for name in project["tool"]["setuptools"]["packages"] if "." not in name}
    assert set(project["tool"]["importlinter"]["root_packages"]) == packages


def _loads_torch(*args: str) -> bool:
    """Whether running `xdm ARGS` in a fresh interpreter imports torch; the command must succeed."""
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from xdm.cli import cli\n"
        "result = CliRunner().invoke(cli, sys.argv[1:])\n"
        "assert result.exit_code == 0, result.output + repr(result.exception)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("command", [("worker", "--help"), ("config", "show")])
def test_commands_that_train_nothing_start_without_torch(command: tuple[str, ...]) -> None:
    assert not _loads_torch(*command)


def test_the_simulator_runs_without_torch(tmp_path: Path) -> None:
    assert not _loads_torch("simulate", "--users", "20", "--items", "50", "--days", "1", "--out", str(tmp_path / "log"))

