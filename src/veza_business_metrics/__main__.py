"""Print the Prometheus rules or the Grafana dashboard that ship with this version."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

ASSETS = {
    "rules": (
        "rules.yml",
        (
            "Print the Prometheus recording and alerting rules (YAML) for the"
            " veza_business_* series. Load the file through rule_files in prometheus.yml."
        ),
    ),
    "dashboard": (
        "dashboard.json",
        (
            "Print the Grafana dashboard (JSON) for the veza_business_* series. Import it"
            " in Grafana under Dashboards > New > Import and pick a Prometheus data source."
        ),
    ),
}


def read_asset(command: str) -> str:
    """Return the text of the package file that ``command`` prints.

    Args:
        command: ``"rules"`` or ``"dashboard"``.

    Raises:
        KeyError: If ``command`` is neither.
    """
    filename, _ = ASSETS[command]
    return resources.files("veza_business_metrics").joinpath(filename).read_text(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line: print an asset to stdout or write it to ``--output``."""
    parser = argparse.ArgumentParser(
        prog="python -m veza_business_metrics",
        description="Print the monitoring files that ship with veza_business_metrics.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (_, description) in ASSETS.items():
        subparser = commands.add_parser(command, help=description, description=description)
        subparser.add_argument(
            "-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout"
        )
    args = parser.parse_args(argv)
    text = read_asset(args.command)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
