"""Print the Prometheus rules, the Grafana dashboard or their settings file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import veza_business_metrics
from veza_business_metrics._config import Settings, default_config_text, load_settings
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
            help="print a config file that sets every setting to its default, commented",
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


def _write(text: str, output: Path | None) -> None:
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            _fail(f"cannot write {output}: {error.strerror or error}")
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`... | head -1`). Python flushes stdout again at exit,
        # which would fail the same way with a traceback, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line: print a file to stdout or write it to ``--output``.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when omitted.

    Raises:
        SystemExit: With status 1 and a one-line message for a bad config file or an
            output that cannot be written, and with status 2 for bad arguments.
    """
    args = _parser().parse_args(argv)
    if args.print_config:
        text = default_config_text()
    else:
        _, formats = COMMANDS[args.command]
        text = formats[args.format](_settings(args.config))
    _write(text, args.output)


if __name__ == "__main__":
    main()
