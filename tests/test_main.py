"""Tests for veza_business_metrics.__main__, the command line."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import veza_business_metrics
from veza_business_metrics.__main__ import main
from veza_business_metrics._config import (
    DEFAULT_RUNBOOK_BASE_URL,
    Settings,
    config_text,
    load_settings,
)
from veza_business_metrics._dashboard import render_configmap, render_dashboard
from veza_business_metrics._rules import render_prometheus_rule, render_rules

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
TUNED = "login_slo_target = 0.999\nmatchers = ['job=\"shop\"']\n"
FULL_DISK = (
    "python -m veza_business_metrics: error: cannot write to stdout: No space left on device\n"
)
CLOSED_STDOUT = (
    "python -m veza_business_metrics: error: cannot write to stdout: it is closed;"
    " write to a file with --output FILE\n"
)
OUTPUTS: list[tuple[list[str], Callable[[Settings], str]]] = [
    (["rules"], render_rules),
    (["rules", "--format", "prometheus-rule"], render_prometheus_rule),
    (["dashboard"], render_dashboard),
    (["dashboard", "-f", "configmap"], render_configmap),
]


def run(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m veza_business_metrics`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "veza_business_metrics", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_with_stdout(arguments: list[str], redirection: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m veza_business_metrics`` with stdout redirected as bash's ``redirection``."""
    command = f'exec "$0" -m veza_business_metrics "$@" {redirection}'
    return subprocess.run(
        ["bash", "-c", command, sys.executable, *arguments],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("arguments", "render"), OUTPUTS)
def test_each_format_prints_the_rendered_defaults(
    arguments: list[str], render: Callable[[Settings], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command and format prints what its renderer gives for the default settings."""
    main(arguments)
    assert capsys.readouterr().out == render(Settings())


@pytest.mark.parametrize(("arguments", "render"), OUTPUTS)
def test_config_tunes_every_format(
    arguments: list[str],
    render: Callable[[Settings], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--config FILE renders every format with the settings that FILE holds."""
    config = tmp_path / "tuned.toml"
    config.write_text(TUNED)
    main([*arguments, "--config", str(config)])
    printed = capsys.readouterr().out
    assert printed == render(load_settings(TUNED))
    assert printed != render(Settings())
    assert "shop" in printed


@pytest.mark.parametrize("command", ["rules", "dashboard"])
def test_output_writes_the_file(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output FILE writes the same text to FILE and prints nothing."""
    target = tmp_path / "out"
    main([command, "--output", str(target)])
    main([command])
    assert target.read_text() == capsys.readouterr().out
    assert target.stat().st_size > 0


@pytest.mark.parametrize("command", ["rules", "dashboard"])
def test_print_config_prints_the_commented_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--print-config prints the config file with every default, whatever the command."""
    main([command, "--print-config"])
    assert capsys.readouterr().out == config_text(Settings())


def test_print_config_says_the_default_runbook_address_is_a_placeholder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The comment above runbook_base_url names its default as a placeholder to replace."""
    main(["rules", "--print-config"])
    printed = capsys.readouterr().out
    above, setting, _ = printed.partition("\nrunbook_base_url = ")
    comment = above.split("\n\n")[-1]
    text = " ".join(line.removeprefix("# ") for line in comment.splitlines())
    assert f"The default, {DEFAULT_RUNBOOK_BASE_URL}, is a placeholder" in text
    assert "set it to where you serve these documentation pages" in text
    assert setting


def test_the_alerting_page_says_the_runbook_default_is_a_placeholder() -> None:
    """The alerting page warns about the placeholder in the paragraph about runbook_base_url."""
    page = (ROOT / "docs" / "alerting.md").read_text()
    (paragraph,) = [part for part in page.split("\n\n") if part.startswith("**Set `runbook")]
    text = " ".join(paragraph.split())
    assert f"Its default, `{DEFAULT_RUNBOOK_BASE_URL}`, is a placeholder" in text


def test_print_config_with_a_config_prints_its_settings_over_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--print-config --config FILE prints every setting, FILE's values in place of defaults."""
    config = tmp_path / "tuned.toml"
    config.write_text(TUNED)
    main(["rules", "--print-config", "--config", str(config)])
    printed = capsys.readouterr().out
    assert printed == config_text(load_settings(TUNED))
    assert load_settings(printed) == load_settings(TUNED) != Settings()
    assert "login_slo_target = 0.999\n" in printed


def test_print_config_refuses_a_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--print-config with a config file that does not load fails as the other commands do."""
    config = tmp_path / "bad.toml"
    config.write_text("login_slo_target = 2\n")
    with pytest.raises(SystemExit) as exited:
        main(["dashboard", "--print-config", "--config", str(config)])
    assert exited.value.code == 1
    message = f"{config}: login_slo_target must be above 0 and below 1 (0.995 is 99.5%), got 2"
    assert capsys.readouterr() == ("", f"python -m veza_business_metrics: error: {message}\n")


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """Running without a command exits with status 2 and a usage message."""
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: python -m veza_business_metrics" in capsys.readouterr().err


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the distribution's name and the version that pip installed."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    installed = importlib.metadata.version("veza-business-metrics")
    assert capsys.readouterr().out == f"veza-business-metrics {installed}\n"
    assert veza_business_metrics.__version__ == installed


def test_importing_the_package_does_not_read_its_metadata(
    run_python: Callable[[str], str],
) -> None:
    """The version is looked up on first use, so importing stays as quick as before."""
    code = (
        "import sys, veza_business_metrics\n"
        "print('importlib.metadata' in sys.modules)\n"
        "print(veza_business_metrics.__version__, 'importlib.metadata' in sys.modules)\n"
    )
    printed = run_python(code).split()
    assert printed == ["False", importlib.metadata.version("veza-business-metrics"), "True"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("matchers = [\n", "{path}: not valid TOML: "),
        (
            "[VezaBusinessLoginFailureSpike]\nmax_ratio = 0.5\n",
            "{path}: unknown setting 'VezaBusinessLoginFailureSpike.max_ratio';",
        ),
        ("login_slo_target = '99.5%'\n", "{path}: login_slo_target must be a number, got str"),
        ("matchers = ['job=~\"(\"']\n", "{path}: matchers[0] is not a PromQL label matcher"),
        (b"\xff\xfe", "{path}: 'utf-8' codec can't decode"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(
    config: str | bytes | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or bad config file exits with status 1 and one line that names the setting."""
    path = tmp_path / "config.toml"
    if isinstance(config, str):
        path.write_text(config)
    elif config is not None:
        path.write_bytes(config)
    with pytest.raises(SystemExit) as exited:
        main(["rules", "--config", str(path), "--output", str(tmp_path / "rules.yml")])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"python -m veza_business_metrics: error: {message.format(path=path)}")
    assert error.count("\n") == 1
    assert not (tmp_path / "rules.yml").exists()


def test_an_unwritable_output_is_one_line_and_status_1(tmp_path: Path) -> None:
    """--output into a missing directory prints one line without a traceback, status 1."""
    target = tmp_path / "missing" / "rules.yml"
    result = run("rules", "--output", str(target))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"python -m veza_business_metrics: error: cannot write {target}:"
        " No such file or directory\n"
    )


def test_an_unwritable_output_fails_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output onto a directory exits with status 1 and names the path."""
    with pytest.raises(SystemExit) as exited:
        main(["dashboard", "--output", str(tmp_path)])
    assert exited.value.code == 1
    assert f"cannot write {tmp_path}: Is a directory" in capsys.readouterr().err


def test_a_closed_pipe_exits_quietly() -> None:
    """With the reader gone (`rules | head -1`), the command exits 1 without a traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "veza_business_metrics", "rules"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        error = process.stderr.read()
        assert process.wait(timeout=60) == 1
    assert error == b""


def test_a_closed_pipe_exits_quietly_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing into a pipe whose reader is gone raises SystemExit(1), not BrokenPipeError."""
    reader, writer = os.pipe()
    os.close(reader)
    with open(writer, "w", encoding="utf-8") as stdout:  # noqa: PTH123
        monkeypatch.setattr(sys, "stdout", stdout)
        with pytest.raises(SystemExit) as exited:
            main(["rules"])
        assert exited.value.code == 1
        # stdout now points at /dev/null, so the flush at exit has nowhere to fail.
        stdout.write("more")
        stdout.flush()


def test_a_closed_pipe_under_head_prints_the_first_line() -> None:
    """`python -m veza_business_metrics dashboard | head -1` prints one line and no error."""
    result = subprocess.run(  # noqa: S602
        f"{sys.executable} -m veza_business_metrics dashboard | head -1",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (result.stdout, result.stderr) == ("{\n", "")


def test_help_explains_both_commands() -> None:
    """The --help of python -m veza_business_metrics describes the rules and dashboard commands."""
    result = run("--help")
    assert result.returncode == 0
    assert "Prometheus recording and alerting rules" in result.stdout
    assert "Grafana dashboard" in result.stdout
    for command in ["rules", "dashboard"]:
        assert "--print-config" in run(command, "--help").stdout


@pytest.mark.parametrize(
    "arguments",
    [["rules"], ["dashboard", "-f", "configmap"], ["rules", "--print-config"], ["--version"]],
)
def test_a_full_disk_is_one_line_and_status_1(arguments: list[str]) -> None:
    """Printing to /dev/full exits with status 1 and says why in one line, without a traceback."""
    result = run_with_stdout(arguments, "> /dev/full")
    assert (result.returncode, result.stderr) == (1, FULL_DISK)


@pytest.mark.parametrize("arguments", [["dashboard"], ["--version"]])
def test_a_full_disk_fails_in_process(
    arguments: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stdout that refuses the text, or argparse's version, gives SystemExit(1) and one line."""
    with open("/dev/full", "w", encoding="utf-8") as stdout:  # noqa: PTH123
        monkeypatch.setattr(sys, "stdout", stdout)
        with pytest.raises(SystemExit) as exited:
            main(arguments)
        assert exited.value.code == 1
        assert capsys.readouterr().err == FULL_DISK
        # stdout now points at /dev/null, so the flush at exit has nowhere to fail.
        stdout.write("more")
        stdout.flush()


def test_a_closed_stdout_is_one_line_and_status_1(tmp_path: Path) -> None:
    """With stdout closed (`>&-`) the command says to use --output, which then works."""
    result = run_with_stdout(["rules"], ">&-")
    assert (result.returncode, result.stderr) == (1, CLOSED_STDOUT)
    target = tmp_path / "rules.yml"
    result = run_with_stdout(["rules", "--output", str(target)], ">&-")
    assert (result.returncode, result.stderr) == (0, "")
    assert target.read_text() == render_rules(Settings())


def test_a_closed_stdout_fails_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sys.stdout None, as Python leaves it when fd 1 is closed, the command exits 1."""
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as exited:
        main(["dashboard"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == CLOSED_STDOUT
