"""Print the Prometheus rules, the Grafana dashboard or their settings file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import veza_business_metrics
from veza_business_metrics._config import Settings, config_text, load_settings
from veza_business_metrics._dashboard import render_configmap, render_dashboard
from veza_business_metrics._rules import render_prometheus_rule, render_rules

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

PROG = "python -m veza_business_metrics"
COMMANDS: dict[str, tuple[str, dict[str, Callable[[Settings], str]]]] = {
    "rules": (
        (
            "Print the Prometheus recording and alerting rules (YAML) for the veza_business_*"
            " series. Load the file through rule_files in prometheus.yml, or apply the"
            " PrometheusRule of --format prometheus-rule."
        ),
        {"yaml": render_rules, "prometheus-rule": render_prometheus_rule},
    ),
    "dashboard": (
        (
            "Print the Grafana dashboard (JSON) for the veza_business_* series. Import it in"
            " Grafana under Dashboards > New > Import and pick a Prometheus data source, or"
            " apply the ConfigMap of --format configmap for Grafana's dashboard sidecar."
        ),
        {"json": render_dashboard, "configmap": render_configmap},
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print the monitoring files for the veza_business_* series.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"veza-business-metrics {veza_business_metrics.__version__}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (description, formats) in COMMANDS.items():
        subparser = commands.add_parser(command, help=description, description=description)
        subparser.add_argument(
            "-c",
            "--config",
            type=Path,
            metavar="FILE",
            help="read thresholds, durations, label matchers and the runbook URL from this"
            " TOML file (see --print-config)",
        )
        subparser.add_argument(
            "-f", "--format", choices=formats, default=next(iter(formats)), help="output form"
        )
        subparser.add_argument(
            "-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout"
        )
        subparser.add_argument(
            "--print-config",
            action="store_true",
            help="print a config file that sets every setting, commented: to its default, or"
            " to its value in the file of --config",
        )
    return parser


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    raise SystemExit(1)


def _settings(path: Path | None) -> Settings:
    if path is None:
        return Settings()
    try:
        content = path.read_bytes()
    except OSError as error:
        _fail(f"cannot read {path}: {error.strerror or error}")
    try:
        return load_settings(content.decode())
    except (ValueError, TypeError) as error:
        _fail(f"{path}: {error}")


def _print(text: str) -> None:
    if sys.stdout is None:
        # Python leaves sys.stdout unset when it starts with file descriptor 1 closed.
        _fail("cannot write to stdout: it is closed; write to a file with --output FILE")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as error:
        # Python flushes stdout again at exit, which would fail the same way with a
        # traceback, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        if isinstance(error, BrokenPipeError):
            # The reader left early (`... | head -1`), and wants no message either.
            raise SystemExit(1) from None
        _fail(f"cannot write to stdout: {error.strerror or error}")


def _write(text: str, output: Path | None) -> None:
    if output is None:
        _print(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        _fail(f"cannot write {output}: {error.strerror or error}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line: print a file to stdout or write it to ``--output``.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when omitted.

    Raises:
        SystemExit: With status 1 and a one-line message for a bad config file or an
            output that cannot be written, and with status 2 for bad arguments.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        # argparse prints --help and --version to stdout and ignores a failed write: the
        # flush makes such a failure exit 1 with a message, as for the other output.
        if exit_.code == 0 and sys.stdout is not None:
            _print("")
        raise
    settings = _settings(args.config)
    if args.print_config:
        text = config_text(settings)
    else:
        _, formats = COMMANDS[args.command]
        text = formats[args.format](settings)
    _write(text, args.output)


if __name__ == "__main__":
    main()
