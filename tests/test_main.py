"""Tests for veza_business_metrics.__main__, the rules and dashboard commands."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from veza_business_metrics.__main__ import main, read_asset

ROOT_FILES = {"rules": "rules.yml", "dashboard": "dashboard.json"}


@pytest.mark.parametrize(("command", "filename"), ROOT_FILES.items())
def test_command_prints_the_package_file(
    command: str, filename: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command prints its package data file exactly, with no copy in between."""
    main([command])
    packaged = resources.files("veza_business_metrics").joinpath(filename).read_text()
    assert capsys.readouterr().out == packaged == read_asset(command)
    assert packaged.strip()


@pytest.mark.parametrize("command", ROOT_FILES)
def test_output_writes_the_file(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output FILE writes the same text to FILE and prints nothing."""
    target = tmp_path / "out"
    main([command, "--output", str(target)])
    assert target.read_text() == read_asset(command)
    assert capsys.readouterr().out == ""


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """Running without a command exits with status 2 and a usage message."""
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: python -m veza_business_metrics" in capsys.readouterr().err


def test_help_explains_both_commands() -> None:
    """The --help of python -m veza_business_metrics describes the rules and dashboard commands."""
    result = subprocess.run(
        [sys.executable, "-m", "veza_business_metrics", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "Prometheus recording and alerting rules" in result.stdout
    assert "Grafana dashboard" in result.stdout


def test_commands_work_from_a_fresh_install_of_the_wheel(tmp_path: Path) -> None:
    """Installed from its wheel into a new environment, the package prints both files."""
    root = Path(__file__).resolve().parent.parent
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip_wheel, "--no-build-isolation", "--wheel-dir", str(tmp_path), str(root)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("veza_business_metrics-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for filename in ["py.typed", "rules.yml", "dashboard.json", "__main__.py", "testing.py"]:
        assert f"veza_business_metrics/{filename}" in names
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=300)
    python = str(environment / "bin" / "python")
    pip_install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip_install, str(wheel)], check=True, timeout=300)
    for command in ROOT_FILES:
        printed = subprocess.run(
            [python, "-m", "veza_business_metrics", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert printed.stdout == read_asset(command)
