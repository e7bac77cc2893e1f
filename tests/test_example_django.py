"""End-to-end tests of the Django example shop (examples/django_app/) under gunicorn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from helpers import (
    EXAMPLES,
    LOGINS,
    ORDERS,
    ZERO,
    add,
    business_series,
    check_app,
    fetch,
    free_port,
    gunicorn_shop,
    key,
    require_tool,
    samples,
    serving,
    traffic,
    wait_for_workers,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DJANGO_APP = EXAMPLES / "django_app"
WSGI_APP = "project.wsgi:application"
# django-prometheus's own request counter, by HTTP method.
POSTS = key("django_http_requests_total_by_method_total", "method", "POST")


def test_django_setup_registers_the_zero_series(run_python: Callable[..., str]) -> None:
    """Starting Django, before any URLconf or view is imported, exports the zero series."""
    code = (
        "import django, prometheus_client; django.setup();"
        " print(prometheus_client.generate_latest().decode())"
    )
    env = {"PYTHONPATH": str(DJANGO_APP), "DJANGO_SETTINGS_MODULE": "project.settings"}
    assert business_series(run_python(code, env)) == ZERO


def test_the_example_keeps_time_in_utc(run_python: Callable[..., str]) -> None:
    """The shop's settings choose UTC, not Django's default of America/Chicago."""
    code = (
        "import django; from django.utils import timezone; django.setup();"
        " print(timezone.get_current_timezone_name())"
    )
    env = {"PYTHONPATH": str(DJANGO_APP), "DJANGO_SETTINGS_MODULE": "project.settings"}
    assert run_python(code, env) == "UTC\n"


def test_manage_py_finds_no_issue() -> None:
    """manage.py runs, and Django's system checks find nothing wrong with the project."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=DJANGO_APP,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "System check identified no issues (0 silenced).\n"


def test_django_app_under_gunicorn(tmp_path: Path) -> None:
    """One gunicorn worker serves the shop with django-prometheus's /metrics, exactly."""
    gunicorn = require_tool("gunicorn")
    port = free_port()
    command = [
        gunicorn,
        "--no-control-socket",
        "--chdir",
        str(DJANGO_APP),
        "--bind",
        f"127.0.0.1:{port}",
        WSGI_APP,
    ]
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with serving(command, metrics_url, tmp_path, tmp_path / "log"):
        check_app(f"http://127.0.0.1:{port}", metrics_url)


def counted_by(metrics_dir: Path, pid: int) -> float:
    """Return the sum of the business counters in the counter file of the process ``pid``."""
    from veza_business_metrics.multiprocess import MultiProcessCollector  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as alone:
        # The collector reads every file of its directory: give it this process's only.
        shutil.copy(metrics_dir / f"counter_{pid}.db", alone)
        collector = MultiProcessCollector(None, path=alone)
        return sum(business_series(collector).values())


def test_django_multiprocess_survives_a_killed_worker(tmp_path: Path) -> None:
    """Four workers in multiprocess mode: exact totals after load and a SIGKILLed worker."""
    gunicorn = require_tool("gunicorn")
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    command = gunicorn_shop(gunicorn, "--chdir", str(DJANGO_APP), app=WSGI_APP)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "SHOP_BIND": f"127.0.0.1:{port}"}
    base = f"http://127.0.0.1:{port}"
    with serving(command, f"{base}/metrics", tmp_path, tmp_path / "log", env) as master:
        assert business_series(fetch(f"{base}/metrics")) == ZERO
        expected = add(ZERO, traffic(base, 400))
        workers = wait_for_workers(master.pid, 4)
        victim = max(workers, key=lambda pid: counted_by(metrics_dir, pid))
        assert counted_by(metrics_dir, victim) > 0
        os.kill(victim, signal.SIGKILL)
        wait_for_workers(master.pid, 4, gone=victim)
        expected = add(expected, traffic(base, 400))
        scraped = fetch(f"{base}/metrics")
    acknowledged = expected[key(ORDERS, "status", "completed")] + sum(
        value for (name, _), value in expected.items() if name == LOGINS
    )
    assert acknowledged == 800
    assert business_series(scraped) == expected
    # The killed worker's file held django-prometheus's counts too.
    assert samples(scraped)[POSTS] == 800
    # The config's child_exit merged the killed worker's files into the archives.
    assert sorted(path.name for path in metrics_dir.glob(f"*_{victim}.db")) == []
    assert (metrics_dir / "counter_archive.db").exists()
