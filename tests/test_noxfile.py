"""Tests for noxfile.py and pyproject.toml: the prometheus-client releases the suite covers."""

from __future__ import annotations

import ast
import importlib.metadata
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from helpers import ROOT


def noxfile_constant(name: str) -> object:
    """Return the literal value that noxfile.py assigns to ``name``, without importing nox."""
    module = ast.parse((ROOT / "noxfile.py").read_text())
    for node in module.body:
        if isinstance(node, ast.Assign) and [
            target.id for target in node.targets if isinstance(target, ast.Name)
        ] == [name]:
            return ast.literal_eval(node.value)
    msg = f"noxfile.py assigns no {name}"
    raise AssertionError(msg)


def admitted() -> Requirement:
    """Return the prometheus-client requirement that pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = (
        Requirement(text)
        for text in project["dependencies"]
        if Requirement(text).name == "prometheus-client"
    )
    return requirement


def test_the_release_that_loses_increments_is_excluded() -> None:
    """pyproject.toml refuses prometheus-client 0.21.0 and admits 0.20.0 and 0.21.1 around it."""
    specifier = admitted().specifier
    assert not specifier.contains("0.21.0")
    assert specifier.contains("0.20.0")
    assert specifier.contains("0.21.1")
    assert not specifier.contains("0.19.0")


def test_internals_run_on_one_admitted_release_of_every_minor_version() -> None:
    """From the floor to the installed release or later, each minor has one admitted entry."""
    listed = noxfile_constant("INTERNALS_PROMETHEUS_CLIENTS")
    assert isinstance(listed, list)
    releases = [Version(text) for text in listed]
    specifier = admitted().specifier
    assert all(specifier.contains(release) for release in releases)
    # The tests session installs the newest release, which must be on the list; the
    # lowest session installs the floor.
    installed = Version(importlib.metadata.version("prometheus-client"))
    newest = max(installed, releases[-1])
    floor = min(Version(spec.version) for spec in specifier if spec.operator == ">=")
    assert releases[0] == floor
    assert installed in releases
    assert [(release.major, release.minor) for release in releases] == [
        (floor.major, minor) for minor in range(floor.minor, newest.minor + 1)
    ]


def test_the_internals_tests_exist_and_the_reference_names_the_releases() -> None:
    """Every file of INTERNALS_TESTS exists, and the reference page lists every release."""
    tests = noxfile_constant("INTERNALS_TESTS")
    assert isinstance(tests, list)
    assert tests
    assert all((ROOT / path).is_file() for path in tests)
    releases = noxfile_constant("INTERNALS_PROMETHEUS_CLIENTS")
    assert isinstance(releases, list)
    listed = ", ".join(releases[:-1]) + f" and {releases[-1]}"
    reference = " ".join((ROOT / "docs" / "reference.md").read_text().split())
    assert f"prometheus-client {listed}." in reference


def pins(name: str) -> dict[str, str]:
    """Return the exact versions that the requirement file ``name`` pins, with its includes."""
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith("-r "):
            found.update(pins(line.removeprefix("-r ")))
        elif line and not line.startswith("#"):
            package, version = line.split("==")
            found[package] = version
    return found


def test_the_internals_session_pins_what_the_tests_session_pins() -> None:
    """requirements/internals.txt holds a part of test.txt, at the same versions."""
    internals = pins("internals.txt")
    assert internals
    assert internals.items() <= pins("test.txt").items()
