"""Bootstrap a virtual environment, then run the test suite or the demo.

Usage, from the repository root with only python3 (3.11+) on PATH::

    python3 scripts/dev.py test   # lint, format check, types, tests, coverage
    python3 scripts/dev.py demo   # serve the FastAPI example shop on 127.0.0.1

The test command also reruns the tests on the lowest supported prometheus-client, and
on every newer CPython 3 it finds as python3.N on PATH or under pyenv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The lowest prometheus-client that pyproject.toml admits; the suite runs on it too.
LOWEST_PROMETHEUS_CLIENT = "prometheus-client==0.20.0"


TEST_REQUIREMENTS = ("--requirement", str(ROOT / "requirements" / "test.txt"))


def bootstrap(name: str, *requirements: str, interpreter: str = sys.executable) -> Path:
    """Create ``.venv-<name>`` once, install the package and ``requirements``, return python."""
    env_dir = ROOT / f".venv-{name}"
    python = env_dir / "bin" / "python"
    if not python.exists():
        run(interpreter, "-m", "venv", str(env_dir))
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(*pip, "--editable", str(ROOT), *requirements)
    return python


def run(*command: str) -> None:
    """Run ``command`` in the repository root, echoing it; exit with its status on failure."""
    print("+", " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=ROOT, check=False)
    if completed.returncode:
        sys.exit(completed.returncode)


def newer_pythons() -> dict[str, str]:
    """Return the CPython interpreters newer than this one, by version, one per version."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{minor}") for minor in range(12, 20)]
    candidates += [str(path) for path in sorted(pyenv.glob("3.*/bin/python3"))]
    found: dict[tuple[int, ...], str] = {}
    for candidate in filter(None, candidates):
        probe = subprocess.run(
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


def test() -> None:
    """Run lint, format check, mypy and the tests under coverage, then the other runs."""
    python = bootstrap("test", *TEST_REQUIREMENTS)
    run(str(python), "-m", "ruff", "check", ".")
    run(str(python), "-m", "ruff", "format", "--check", ".")
    run(str(python), "-m", "mypy", "src", "tests", "examples", "scripts", "benchmarks")
    run(str(python), "-m", "coverage", "erase")
    run(str(python), "-m", "coverage", "run", "-m", "pytest")
    run(str(python), "-m", "coverage", "report")
    lowest = bootstrap("lowest", *TEST_REQUIREMENTS, LOWEST_PROMETHEUS_CLIENT)
    run(str(lowest), "-m", "pytest", "-p", "no:cacheprovider", "-q")
    for version, interpreter in newer_pythons().items():
        newer = bootstrap(f"py{version}", *TEST_REQUIREMENTS, interpreter=interpreter)
        run(str(newer), "-m", "pytest", "-p", "no:cacheprovider", "-q")


def demo(port: int, *, simulate: bool) -> None:
    """Serve the FastAPI example shop on 127.0.0.1, with made-up traffic unless told not to."""
    python = bootstrap("demo", "--requirement", str(ROOT / "requirements" / "demo.txt"))
    command = [str(python), str(ROOT / "examples" / "fastapi_app.py"), "--port", str(port)]
    run(*command, *(["--simulate"] if simulate else []))


def main() -> None:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("test", help="lint, types, tests and coverage")
    demo_parser = commands.add_parser("demo", help="serve /metrics of an example host app")
    demo_parser.add_argument("--port", type=int, default=8000)
    demo_parser.add_argument(
        "--no-simulate", action="store_true", help="serve without made-up traffic"
    )
    args = parser.parse_args()
    if args.command == "test":
        test()
    else:
        demo(args.port, simulate=not args.no_simulate)


if __name__ == "__main__":
    main()
