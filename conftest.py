"""Run every ``python`` and ``console`` snippet of the Markdown files with Sybil.

``python`` blocks run for real, in one namespace per file. In a ``console`` block, each
line that starts with ``$ `` is a command (a trailing backslash continues it); the lines
after it, if any, are what it must print, with ``...`` matching anything as in doctest.
Commands run with bash in a scratch directory that mirrors the repository root, so
that files they write are thrown away, and with this interpreter's environment first
on PATH, so that ``python`` is the test environment's. Each must exit with status 0.
A snippet that cannot run here follows ``<!-- skip: next "the reason" -->``.
"""

from __future__ import annotations

import doctest
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sybil import Sybil
from sybil.integration.pytest import SybilItem
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from sybil import Document, Example, Region

ROOT = Path(__file__).resolve().parent
# Fence languages that the suite would not run: a snippet must say python or console.
UNRUN_LANGUAGES = ("py", "pycon", "python3", "bash", "sh", "shell", "shell-session", "zsh")
COMMAND_TIMEOUT_SECONDS = 300
_OUTPUT = doctest.OutputChecker()


def parse_console(block: str) -> list[tuple[str, str]]:
    """Split a console block into its commands, each with the output it shows.

    Raises:
        ValueError: If the block has no command, or text before its first command.
    """
    commands: list[tuple[list[str], list[str]]] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = [line.removeprefix("$ ")]
            while command[-1].endswith("\\"):
                command.append(next(lines, ""))
            commands.append((command, []))
        elif commands:
            commands[-1][1].append(line)
        else:
            msg = f"a console block must start with a '$ ' command, got {line!r}"
            raise ValueError(msg)
    if not commands:
        msg = "a console block must hold at least one '$ ' command"
        raise ValueError(msg)
    return [("\n".join(command), "".join(f"{x}\n" for x in shown)) for command, shown in commands]


def run_console(example: Example) -> str | None:
    """Run the commands of a console block; describe the first failure, if any."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    for command, shown in parse_console(example.parsed):
        result = subprocess.run(  # noqa: S603  the documentation's own commands
            ["bash", "-e", "-o", "pipefail", "-c", command],  # noqa: S607
            cwd=example.namespace["workspace"],
            env={**os.environ, "PATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode:
            return f"$ {command}\nexited with status {result.returncode}:\n{result.stdout}"
        if shown and not _OUTPUT.check_output(shown, result.stdout, doctest.ELLIPSIS):
            difference = _OUTPUT.output_difference(
                doctest.Example(command, shown), result.stdout, doctest.ELLIPSIS
            )
            return f"$ {command}\n{difference}"
    return None


def refuse_unrun_language(example: Example) -> str:
    """Fail a snippet whose fence language the suite does not run."""
    language = example.region.lexemes["arguments"]
    return f"a {language!r} block never runs: write python or console, or plain text"


class SkipWithReasonParser(SkipParser):
    """Parse Sybil's skip directives, refusing to skip without saying why."""

    def __call__(self, document: Document) -> Iterable[Region]:
        """Yield the skip directives of ``document``.

        Raises:
            ValueError: If a ``skip: next`` or ``skip: start`` gives no reason.
        """
        for region in super().__call__(document):
            action, reason = region.parsed
            if action in {"next", "start"} and not reason:
                msg = f"{document.path}: say why with 'skip: {action} \"the reason\"'"
                raise ValueError(msg)
            yield region


def make_workspace(namespace: dict[str, Any]) -> None:
    """Run a file's snippets as a script, and its commands in a copy of the root, as links."""
    namespace["__name__"] = "__main__"
    workspace = Path(tempfile.mkdtemp(prefix="snippets-"))
    for entry in ROOT.iterdir():
        (workspace / entry.name).symlink_to(entry)
    namespace["workspace"] = workspace


def remove_workspace(namespace: dict[str, Any]) -> None:
    """Delete the scratch directory and whatever the commands wrote there."""
    shutil.rmtree(namespace["workspace"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report a skipped snippet at its line in the document rather than inside pytest."""
    report = yield
    if report.skipped and isinstance(item, SybilItem) and isinstance(report.longrepr, tuple):
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), line or 0, report.longrepr[2])
    return report


pytest_collect_file = Sybil(
    parsers=[
        SkipWithReasonParser(),
        PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS),
        CodeBlockParser("console", run_console),
        *(CodeBlockParser(language, refuse_unrun_language) for language in UNRUN_LANGUAGES),
    ],
    patterns=["*.md"],
    setup=make_workspace,
    teardown=remove_workspace,
).pytest()
