"""The sessions of ``python3 scripts/dev.py test``, which installs nox and runs them all.

Each session has its own virtual environment under ``.nox/`` and reinstalls into it only
when its requirements, pyproject.toml or the built wheel changed. To run one session, or
the tests with pytest's arguments::

    .venv-nox/bin/nox -s docs
    .venv-nox/bin/nox -s tests -- tests/test_recorder.py -x
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import nox

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements"
DIST = ROOT / "dist"
# The newest patch of every minor release of prometheus-client that pyproject.toml
# admits (0.21.0 is excluded there), the lowest first. The library reads internals of it
# that change between releases: the registry's names, the value class, the multiprocess
# files and the collector's merge, which 0.24.0 restructured, and Sample, which 0.22.0
# widened.
INTERNALS_PROMETHEUS_CLIENTS = [
    "0.20.0",
    "0.21.1",
    "0.22.1",
    "0.23.1",
    "0.24.1",
    "0.25.0",
    "0.26.0",
]
# The lowest that pyproject.toml admits; the whole suite runs on it too.
LOWEST_PROMETHEUS_CLIENT = f"prometheus-client=={INTERNALS_PROMETHEUS_CLIENTS[0]}"
# The test files that exercise those internals, which the internals session runs on
# each of those releases.
INTERNALS_TESTS = [
    "tests/test_multiprocess.py",
    "tests/test_recorder.py",
    "tests/test_metrics.py",
    "tests/test_celery.py",
    # A counter child's _value, _name, _labelnames and _labelvalues, for exemplars.
    "tests/test_exemplars.py",
    "tests/test_multiprocess_exemplars.py",
    # prometheus_client's own multiprocess tests, from the sdist of the installed version.
    "tests/test_upstream.py",
]
# The end-to-end tests of the examples, the demo and the rules drive servers and tools
# (uvicorn, gunicorn, Django, Celery, Prometheus, promtool, Go) that a newer CPython does
# not change for this library, and they take about half of the suite's time. The newer
# sessions leave them out, so that CI stays within 20 minutes with the internals matrix;
# the tests and lowest sessions run them.
NEWER_LEAVES_OUT = [
    "tests/test_dev.py",
    "tests/test_example_celery.py",
    "tests/test_example_django.py",
    "tests/test_examples.py",
    "tests/test_fleet.py",
    "tests/test_gunicorn.py",
    "tests/test_rules.py",
    "tests/test_servers.py",
    "tests/test_uwsgi.py",
]
# Files that a PyPI user gets and that the build must not drop.
SHIPPED = [
    *(f"veza_business_metrics/{name}" for name in ["py.typed", "rules.yml", "dashboard.json"]),
    "veza_business_metrics/__main__.py",
    "veza_business_metrics/testing.py",
    "_veza_business_metrics_pytestplugin.py",
]

nox.options.reuse_venv = "yes"
nox.options.error_on_external_run = True


def install(session: nox.Session, *arguments: str, wheel: Path | None = None) -> None:
    """Run ``pip install arguments`` (then the wheel) unless nothing changed since last time.

    The stamp in the environment holds a digest of the arguments, of every requirement
    file, of pyproject.toml and of the wheel, so a change to any of them reinstalls.
    """
    inputs = [*sorted(REQUIREMENTS.glob("*.txt")), ROOT / "pyproject.toml"]
    digest = hashlib.sha256("\0".join(arguments).encode())
    for path in [*inputs, *([wheel] if wheel else [])]:
        digest.update(path.read_bytes())
    stamp = Path(str(session.virtualenv.location)) / "installed.sha256"
    if stamp.is_file() and stamp.read_text() == digest.hexdigest():
        session.log("Nothing to install: the requirements and the package are unchanged")
        return
    session.install(*arguments)
    if wheel:
        # The version does not change from one build to the next: force the new files in.
        session.install("--force-reinstall", "--no-deps", str(wheel))
    stamp.write_text(digest.hexdigest())


def newer_pythons() -> dict[str, str]:
    """Return the CPython interpreters newer than this one, by version, one per version.

    They are the ``python3.N`` found on PATH and pyenv's installed versions, whether or
    not pyenv has activated them.
    """
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{minor}") for minor in range(12, 20)]
    candidates += [str(path) for path in sorted(pyenv.glob("3.*/bin/python3"))]
    found: dict[tuple[int, ...], str] = {}
    for candidate in filter(None, candidates):
        probe = subprocess.run(  # noqa: S603  an interpreter found on PATH or in pyenv
            [candidate, "-c", "import sys, venv; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        # pyenv's shims exist on PATH for versions it has not activated; they fail here.
        if probe.returncode == 0:
            version = tuple(map(int, probe.stdout.split()))
            if version > sys.version_info[:2]:
                found.setdefault(version, candidate)
    return {".".join(map(str, version)): found[version] for version in sorted(found)}


def built_wheel() -> Path:
    """Return the wheel that the wheel session built."""
    (wheel,) = DIST.glob("veza_business_metrics-*.whl")
    return wheel


def run_suite_on_the_wheel(
    session: nox.Session,
    *packages: str,
    requirements: str = "requirements/test.txt",
    tests: Sequence[str] = (),
    leave_out: Sequence[str] = (),
    markers: str = "not slow and not once",
) -> None:
    """Install the built wheel, not an editable checkout, and run the suite or ``tests`` on it."""
    install(session, "--requirement", requirements, *packages, wheel=built_wheel())
    session.run(
        "python",
        "-c",
        "import json, importlib.metadata as m;"
        "url = json.loads(m.distribution('veza-business-metrics').read_text('direct_url.json'));"
        "assert url['url'].endswith('.whl'), url",
    )
    # The long load tests run once, in the tests session: what they add on other versions
    # of Python and prometheus-client, the real processes of the other tests check.
    ignored = [f"--ignore={path}" for path in leave_out]
    arguments = session.posargs or ["-m", markers, *ignored, *tests]
    # Fewer Hypothesis examples than the tests session tries (tests/conftest.py).
    session.run(
        "pytest", "-p", "no:cacheprovider", "-q", "--hypothesis-profile=versions", *arguments
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Check the lint rules and the formatting with ruff."""
    install(session, "--requirement", "requirements/lint.txt")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """Type-check everything with mypy --strict."""
    install(session, "--editable", ".", "--requirement", "requirements/types.txt")
    session.run("mypy", "src", "tests", "examples", "scripts", "benchmarks")
    # Apart, since this conftest.py and the one in tests/ are both modules named conftest.
    session.run("mypy", "conftest.py", "noxfile.py", "docs")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the tests and the documentation's snippets, requiring 100% branch coverage."""
    # Sphinx too: tests/test_site.py builds the site, then checks it in Chromium. Built
    # there rather than read from the docs session's build/docs, the check needs no
    # session to run before it, and it runs with `-s tests -- tests/test_site.py`.
    install(
        session,
        "--editable",
        ".",
        "--requirement",
        "requirements/test.txt",
        "--requirement",
        "requirements/docs.txt",
    )
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    if not session.posargs:
        session.run("coverage", "report")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors and every reference resolved."""
    install(session, "--editable", ".", "--requirement", "requirements/docs.txt")
    # -E rereads every page, so the warnings of an unchanged page are not skipped.
    session.run("sphinx-build", "-E", "-W", "--keep-going", "-n", "-q", "docs", "build/docs")


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the sdist and the wheel from it, check their metadata and their contents."""
    install(session, "--requirement", "requirements/dist.txt", "prometheus-client>=0.20.0")
    shutil.rmtree(DIST, ignore_errors=True)
    # Without isolation the build uses the pinned hatchling of this environment.
    session.run("python", "-m", "build", "--no-isolation", "--outdir", str(DIST))
    (sdist,) = DIST.glob("veza_business_metrics-*.tar.gz")
    session.run("twine", "check", "--strict", str(sdist), str(built_wheel()))
    with tarfile.open(sdist) as archive:
        try:
            member = archive.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/LICENSE")
        except KeyError:
            member = None
        sdist_licence = member.read() if member else None
    with zipfile.ZipFile(built_wheel()) as archive:
        wheel_files = set(archive.namelist())
        wheel_licences = [
            name for name in wheel_files if name.endswith(".dist-info/licenses/LICENSE")
        ]
        wheel_licence = archive.read(wheel_licences[0]) if wheel_licences else None
    licence = (ROOT / "LICENSE").read_bytes()
    if sdist_licence != licence or wheel_licence != licence:
        session.error("the sdist and the wheel must both ship LICENSE as it is in the checkout")
    missing = [name for name in SHIPPED if name not in wheel_files]
    if missing:
        session.error(f"the wheel lacks {', '.join(missing)}")
    # What `pip install veza-business-metrics` gives, without extras or test tools: the
    # commands work, a config with matchers asks for the rules extra, and exemplars ask
    # for the otel extra.
    session.install("--force-reinstall", "--no-deps", str(built_wheel()))
    for command in ["--version", "rules", "dashboard"]:
        session.run("python", "-m", "veza_business_metrics", command, silent=True)
    config = Path(session.create_tmp()) / "matchers.toml"
    config.write_text("matchers = ['job=\"shop\"']\n")
    refusal = session.run(
        *("python", "-m", "veza_business_metrics", "rules", "--config", str(config)),
        success_codes=[1],
        silent=True,
    )
    if "install veza-business-metrics[rules]" not in str(refusal):
        session.error(f"without the rules extra, a matcher gave {refusal!r}")
    refusal = session.run(
        *("python", "-c", "import veza_business_metrics as b; b.enable_trace_exemplars()"),
        success_codes=[1],
        silent=True,
    )
    if "install veza-business-metrics[otel]" not in str(refusal):
        session.error(f"without the otel extra, enabling exemplars gave {refusal!r}")


@nox.session(requires=["wheel"])
def lowest(session: nox.Session) -> None:
    """Run the suite on the installed wheel with the lowest supported prometheus-client."""
    # The tests session runs on this Python what no release of prometheus-client changes.
    run_suite_on_the_wheel(
        session, LOWEST_PROMETHEUS_CLIENT, markers="not slow and not once and not ours"
    )


@nox.session(requires=["wheel"])
@nox.parametrize(
    "python", [nox.param(path, id=version) for version, path in newer_pythons().items()]
)
def newer(session: nox.Session) -> None:
    """Run the suite but its end-to-end tests on the installed wheel, on each newer CPython."""
    run_suite_on_the_wheel(session, leave_out=NEWER_LEAVES_OUT)


@nox.session(requires=["wheel"])
def internals(session: nox.Session) -> None:
    """Run the tests of prometheus_client's internals on the wheel, on each minor release.

    One environment for them all: only prometheus-client changes from one to the next.
    """
    # lowest runs the whole suite on the first, and tests on the newest.
    for release in INTERNALS_PROMETHEUS_CLIENTS[1:-1]:
        session.log(f"prometheus-client {release}")
        run_suite_on_the_wheel(
            session,
            f"prometheus-client=={release}",
            requirements="requirements/internals.txt",
            tests=INTERNALS_TESTS,
            markers="not slow and not once and not ours",
        )
