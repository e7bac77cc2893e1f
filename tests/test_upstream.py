"""Run prometheus_client's own multiprocess tests against this module's drop-in replacements.

The sdist of the installed prometheus-client ships ``tests/test_multiprocess.py``. With only
its import of ``MultiProcessCollector`` and ``mark_process_dead`` swapped for this
module's, every one of its tests must pass, but those in ``EXPECTED_FAILURES``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Final
from xml.etree import ElementTree as ET

import pytest

from helpers import missing

UPSTREAM_MODULE: Final = "prometheus_client.multiprocess"
OUR_MODULE: Final = "veza_business_metrics.multiprocess"
SWAPPED_NAMES: Final = frozenset({"MultiProcessCollector", "mark_process_dead"})
# Upstream tests that cannot hold by design, as "Class::test" with the reason. An entry
# that passes fails the suite too, so that the list stays honest.
EXPECTED_FAILURES: Final[dict[str, str]] = {}
# Each of the two subprocesses, so that both fit in pytest-timeout's 600 seconds.
TIMEOUT_SECONDS: Final = 240
# Upstream's import of the swapped names, in one line.
IMPORT: Final = f"from {UPSTREAM_MODULE} import MultiProcessCollector, mark_process_dead\n"

# Loaded into upstream's run: it notes every warning that escapes a test's own
# catch_warnings, and where the swapped names came from, since JUnit XML holds neither.
CONFTEST: Final = """\
import json
import os
import sys

_warnings = []


def pytest_warning_recorded(warning_message, when, nodeid, location):
    _warnings.append(
        f"{nodeid or when}: {warning_message.category.__name__}: {warning_message.message}"
        f" ({warning_message.filename}:{warning_message.lineno})"
    )


def pytest_sessionfinish(session):
    module = sys.modules.get("test_multiprocess")
    origins = {
        name: getattr(getattr(module, name, None), "__module__", None)
        for name in ("MultiProcessCollector", "mark_process_dead")
    }
    with open(os.environ["UPSTREAM_REPORT"], "w") as report:
        json.dump({"warnings": _warnings, "origins": origins}, report)
"""


def swap_imports(source: str) -> str:
    """Return upstream's test module importing the swapped names from this module.

    Raises:
        ValueError: If the module does not import both names in exactly one top-level
            ``from prometheus_client.multiprocess import ...``, or could reach upstream's
            collector or ``mark_process_dead`` in any other way.
    """
    tree = ast.parse(source)
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    ours = [
        node
        for node in imports
        if isinstance(node, ast.ImportFrom) and node.module == UPSTREAM_MODULE
    ]
    if (
        len(ours) != 1
        or ours[0] not in tree.body
        or {alias.name for alias in ours[0].names} != SWAPPED_NAMES
        or any(alias.asname for alias in ours[0].names)
    ):
        msg = f"expected one top-level import of just {sorted(SWAPPED_NAMES)} from upstream"
        raise ValueError(msg)
    reachable = SWAPPED_NAMES | {"multiprocess"}
    for node in imports:
        if node is ours[0]:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        if any(
            name.startswith("prometheus_client") and name.rpartition(".")[2] in reachable
            for name in names
        ):
            msg = f"line {node.lineno} imports {', '.join(names)} from upstream besides the swap"
            raise ValueError(msg)
    attributes = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in reachable
    ]
    if attributes:
        msg = f"line {attributes[0].lineno} reaches .{attributes[0].attr} besides the swap"
        raise ValueError(msg)
    lines = source.splitlines(keepends=True)
    first = ours[0].lineno - 1
    prefix = f"from {UPSTREAM_MODULE} import"
    if not lines[first].startswith(prefix):
        msg = f"line {first + 1} does not start with {prefix!r}: {lines[first]!r}"
        raise ValueError(msg)
    lines[first] = lines[first].replace(UPSTREAM_MODULE, OUR_MODULE, 1)
    return "".join(lines)


def upstream_sdist(version: str) -> Path:
    """Return the sdist of prometheus-client ``version``, downloaded once per machine and user.

    It is kept in the system's temporary folder rather than in the checkout or pytest's
    cache, which some sessions disable, so that every run after the first is offline.
    """
    cache = Path(tempfile.gettempdir()) / f"veza-business-metrics-sdists-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    # Another user's folder of that name could hand this test a planted file.
    assert cache.stat().st_uid == os.getuid(), f"{cache} belongs to another user"
    sdist = cache / f"prometheus_client-{version}.tar.gz"
    if sdist.is_file():
        return sdist
    if importlib.util.find_spec("pip") is None:
        missing(
            f"pip is not installed beside {sys.executable}", "nox installs it in every session"
        )
    with tempfile.TemporaryDirectory(dir=cache) as download:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *("--disable-pip-version-check", "--dest", download),
                f"prometheus-client=={version}",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
        downloaded = list(Path(download).glob("*.tar.gz"))
        if result.returncode or len(downloaded) != 1:
            missing(
                f"pip could not download the sdist of prometheus-client {version}:\n"
                f"{result.stdout}{result.stderr}",
                "CI reaches PyPI",
            )
        # Atomic, so that a concurrent run never reads half a file.
        downloaded[0].replace(sdist)
    return sdist


@pytest.fixture(scope="module")
def upstream_source() -> str:
    """Give upstream's tests/test_multiprocess.py from the installed version's sdist."""
    version = importlib.metadata.version("prometheus-client")
    with tarfile.open(upstream_sdist(version)) as archive:
        members = [
            member
            for member in archive.getmembers()
            if member.isfile() and Path(member.name).parts[1:] == ("tests", "test_multiprocess.py")
        ]
        assert len(members) == 1, f"the sdist of {version} lacks tests/test_multiprocess.py"
        file = archive.extractfile(members[0])
        assert file is not None
        with file:
            return file.read().decode()


@pytest.fixture
def upstream_run(upstream_source: str, tmp_path: Path) -> Path:
    """Give a clean folder holding upstream's tests, swapped, and a pytest.ini of its own."""
    (tmp_path / "test_multiprocess.py").write_text(swap_imports(upstream_source))
    # Makes the folder pytest's rootdir, so no configuration above it applies.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    return tmp_path


def outcomes(junit: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Return each test's outcome, as "Class::test", and the message of each that did not pass."""
    # pytest wrote this file just now, from upstream's tests that this run trusts anyway.
    root = ET.parse(junit).getroot()  # noqa: S314
    found: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        tags = [child.tag for child in case if child.tag in {"failure", "error", "skipped"}]
        found[name] = tags[0] if tags else "passed"
        for child in case:
            if child.tag in {"failure", "error", "skipped"}:
                messages[name] = f"{child.get('message')}\n{child.text or ''}"
    return found, messages


def test_swap_changes_only_the_import(upstream_source: str) -> None:
    """The swapped module differs from upstream's only in the module of the one import."""
    swapped = swap_imports(upstream_source)
    changed = [
        (old, new)
        for old, new in zip(upstream_source.splitlines(), swapped.splitlines(), strict=True)
        if old != new
    ]
    assert len(changed) == 1, changed
    before, after = changed[0]
    assert before.startswith(f"from {UPSTREAM_MODULE} import "), before
    assert after == before.replace(UPSTREAM_MODULE, OUR_MODULE, 1)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("import os\n", id="no-import"),
        pytest.param(f"from {UPSTREAM_MODULE} import mark_process_dead\n", id="a-name-missing"),
        pytest.param(IMPORT.replace("dead", "dead, sweep"), id="an-extra-name"),
        pytest.param(IMPORT.replace("dead", "dead as dead"), id="an-alias"),
        pytest.param(
            IMPORT.replace(", ", "\nfrom prometheus_client.multiprocess import "), id="two"
        ),
        pytest.param(f"def f():\n    {IMPORT}", id="not-top-level"),
        pytest.param(f"{IMPORT}from prometheus_client import multiprocess\n", id="the-module"),
        pytest.param(f"{IMPORT}import prometheus_client.multiprocess\n", id="import-module"),
        pytest.param(f"{IMPORT}prometheus_client.multiprocess.sweep()\n", id="attribute"),
        pytest.param(f"{IMPORT}values.mark_process_dead(1)\n", id="another-path"),
    ],
)
def test_swap_refuses_other_imports(source: str) -> None:
    """A changed upstream file fails loudly rather than testing upstream against itself."""
    with pytest.raises(ValueError, match=r"expected one|besides the swap"):
        swap_imports(source)


def test_upstream_multiprocess_tests_pass(upstream_run: Path) -> None:
    """Upstream's multiprocess tests pass with this module's collector and mark_process_dead."""
    junit, report = upstream_run / "junit.xml", upstream_run / "report.json"
    # Upstream's tests set and expect unset these, and other settings of this run must
    # not reach theirs.
    unset = {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "PYTEST_ADDOPTS"}
    env = {name: value for name, value in os.environ.items() if name not in unset}
    # Upstream's tests run as upstream runs them: pytest alone, without this suite's plugins.
    env |= {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "UPSTREAM_REPORT": str(report)}
    # Not -W error: upstream's tests trigger warnings on purpose and record them, some
    # without simplefilter("always"), which -W error would raise instead. pytest's default
    # filters stand, and any warning that escapes a test fails it below. They hide
    # ResourceWarning, which 0.20.0's own tests raise 34 times, from files they never close.
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
            *(f"--junitxml={junit}", "test_multiprocess.py"),
        ],
        cwd=upstream_run,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    # 0: every test passed, 1: some failed; anything else means no outcomes to read.
    assert result.returncode in {0, 1}, result.stdout + result.stderr
    found, messages = outcomes(junit)
    details = json.loads(report.read_text())
    assert details["origins"] == dict.fromkeys(SWAPPED_NAMES, OUR_MODULE), details
    assert found, result.stdout
    unexpected = {
        name: f"{outcome}: {messages[name]}"
        for name, outcome in found.items()
        if outcome != "passed" and name not in EXPECTED_FAILURES
    }
    assert not unexpected, "\n\n".join(f"{name} {text}" for name, text in unexpected.items())
    # An expected failure that passes, or that upstream no longer has, leaves the list.
    listed = {name: found.get(name, "absent") for name in EXPECTED_FAILURES}
    assert all(outcome in {"failure", "error"} for outcome in listed.values()), listed
    # Upstream's own module lets no warning escape its tests, on every version tested.
    assert not details["warnings"], "\n".join(details["warnings"])
