"""Bootstrap a virtual environment, then run the test suite or the demo.

Usage, from the repository root with only python3 (3.11+) on PATH::

    python3 scripts/dev.py test   # lint, format check, types, tests, coverage
    python3 scripts/dev.py demo   # serve the FastAPI example shop on 127.0.0.1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The lowest prometheus-client that pyproject.toml admits; the suite runs on it too.
LOWEST_PROMETHEUS_CLIENT = "prometheus-client==0.20.0"


def bootstrap(name: str, *requirements: str) -> Path:
    """Create ``.venv-<name>`` once, install the package and ``requirements``, return python."""
    env_dir = ROOT / f".venv-{name}"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.create(env_dir, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(*pip, "--editable", str(ROOT), *requirements)
    return python


def run(*command: str) -> None:
    """Run ``command`` in the repository root, echoing it; exit with its status on failure."""
    print("+", " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=ROOT, check=False)
    if completed.returncode:
        sys.exit(completed.returncode)


def test() -> None:
    """Run lint, format check, mypy, the tests under coverage, then the tests on the floor."""
    python = bootstrap("test", "--requirement", str(ROOT / "requirements" / "test.txt"))
    run(str(python), "-m", "ruff", "check", ".")
    run(str(python), "-m", "ruff", "format", "--check", ".")
    run(str(python), "-m", "mypy", "src", "tests", "examples")
    run(str(python), "-m", "coverage", "erase")
    run(str(python), "-m", "coverage", "run", "-m", "pytest")
    run(str(python), "-m", "coverage", "report")
    lowest = bootstrap(
        "lowest",
        "--requirement",
        str(ROOT / "requirements" / "test.txt"),
        LOWEST_PROMETHEUS_CLIENT,
    )
    run(str(lowest), "-m", "pytest", "-p", "no:cacheprovider", "-q")


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
