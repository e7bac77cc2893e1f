"""End-to-end tests of the runnable host apps in examples/, against real servers."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from helpers import (
    DELETIONS,
    EXAMPLES,
    EXPECTED_AFTER_ROUTES,
    LOGINS,
    ORDERS,
    RECYCLING,
    REVENUE,
    ZERO,
    Scraper,
    add,
    business_series,
    check_app,
    drive_every_route,
    fetch,
    files_by_type,
    free_port,
    gunicorn_shop,
    key,
    poll,
    prometheus_series,
    promtool_ok,
    require_tool,
    running_prometheus,
    samples,
    scrape,
    serving,
    traffic,
    wait_for_workers,
)
from veza_business_metrics.__main__ import main

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import Series


def test_quickstart_serves_the_recorded_events(tmp_path: Path) -> None:
    """The quickstart prints its URL and curl line, then serves the events it recorded."""
    port = free_port()
    command = [sys.executable, "-u", str(EXAMPLES / "quickstart.py"), "--port", str(port)]
    with serving(command, f"http://127.0.0.1:{port}/metrics", EXAMPLES, tmp_path / "log"):
        values = scrape(f"http://127.0.0.1:{port}/metrics")
    assert values[key(LOGINS, "outcome", "success")] == 3
    assert values[key(LOGINS, "outcome", "failure_locked")] == 0
    assert values[key(ORDERS, "status", "created")] == 2
    assert values[key(REVENUE, "currency", "EUR")] == 1999
    assert values[key(REVENUE, "currency", "EUR-refund")] == 500
    assert values[key(DELETIONS)] == 1


def test_fastapi_app_under_uvicorn(tmp_path: Path) -> None:
    """The FastAPI app, served by uvicorn, exports exact counts on its mounted /metrics."""
    port = free_port()
    command = [sys.executable, str(EXAMPLES / "fastapi_app.py"), "--port", str(port)]
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with serving(command, metrics_url, EXAMPLES, tmp_path / "log"):
        check_app(f"http://127.0.0.1:{port}", metrics_url)


def test_flask_app_under_gunicorn(tmp_path: Path) -> None:
    """The Flask app, served by gunicorn, exports exact counts on /metrics."""
    gunicorn = require_tool("gunicorn")
    port = free_port()
    command = [gunicorn, "--no-control-socket", "--bind", f"127.0.0.1:{port}", "flask_app:app"]
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with serving(command, metrics_url, EXAMPLES, tmp_path / "log"):
        check_app(f"http://127.0.0.1:{port}", metrics_url)


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_recycling_workers_stay_exact_and_bounded(tmp_path: Path, preload: bool) -> None:  # noqa: FBT001
    """Recycled and SIGKILLed workers: scrapes never go down, end exact, files stay bounded."""
    gunicorn = require_tool("gunicorn")
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left over by an earlier run")
    command = gunicorn_shop(gunicorn, *RECYCLING, *(["--preload"] if preload else []))
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "SHOP_BIND": f"127.0.0.1:{port}"}
    base = f"http://127.0.0.1:{port}"
    scraper = Scraper(f"{base}/metrics", metrics_dir)
    with serving(command, f"{base}/metrics", tmp_path, tmp_path / "log", env) as master:
        assert not stale.exists()
        expected = samples(fetch(f"{base}/metrics"))
        assert business_series(fetch(f"{base}/metrics")) == ZERO
        scraper.start()
        try:
            for burst in range(5):
                expected = add(expected, traffic(base, 400, ping=True))
                if burst < 4:
                    victim = sorted(wait_for_workers(master.pid, 4))[burst]
                    os.kill(victim, signal.SIGKILL)
                    wait_for_workers(master.pid, 4, gone=victim)
        finally:
            scraper.stop()
        final = samples(fetch(f"{base}/metrics"))
        at_end = files_by_type(metrics_dir)
    requests = sum(
        value for (name, _), value in expected.items() if name in {LOGINS, "shop_pings_total"}
    )
    requests += expected.get(key(ORDERS, "status", "completed"), 0.0)
    print(  # noqa: T201  (the figures that a change's closing note quotes, with -s)
        f"\n{requests:.0f} requests acknowledged, {scraper.scrapes} scrapes,"
        f" {len(scraper.decreases)} decreases, files at the peak {dict(scraper.peak_files)},"
        f" at the end {at_end}"
    )
    assert requests == 2000
    assert scraper.decreases == []
    assert scraper.scrapes > 50
    assert final == expected
    # Per type: at most 4 live workers, the master (which imports the package through the
    # config) and one archive.
    assert max(scraper.peak_files.values()) <= 4 + 1 + 1
    assert max(at_end.values()) <= 4 + 1 + 1


def test_gunicorn_usr2_upgrade_keeps_every_count(tmp_path: Path) -> None:
    """A USR2 upgrade under load, then TERM to the old master: totals stay exact throughout."""
    gunicorn = require_tool("gunicorn")
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    pidfile = tmp_path / "gunicorn.pid"
    command = gunicorn_shop(gunicorn, "--pid", str(pidfile))
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "SHOP_BIND": f"127.0.0.1:{port}"}
    base = f"http://127.0.0.1:{port}"
    scraper = Scraper(f"{base}/metrics")
    new_master = None
    with serving(command, f"{base}/metrics", tmp_path, tmp_path / "log", env) as old_master:
        try:
            expected = samples(fetch(f"{base}/metrics"))
            scraper.start()
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as load:
                during = load.submit(traffic, base, 1500, ping=True)
                expected = add(expected, traffic(base, 200, ping=True))
                old_master.send_signal(signal.SIGUSR2)
                deadline = time.monotonic() + 60
                while not (pidfile.with_suffix(".pid.2")).exists():
                    assert time.monotonic() < deadline, "gunicorn did not start a new master"
                    time.sleep(0.05)
                new_master = int(pidfile.with_suffix(".pid.2").read_text())
                wait_for_workers(new_master, 4)
                expected = add(expected, traffic(base, 200, ping=True))
                old_master.terminate()
                assert old_master.wait(timeout=60) == 0
                expected = add(expected, traffic(base, 200, ping=True))
                expected = add(expected, during.result(timeout=300))
            scraper.stop()
            final = samples(fetch(f"{base}/metrics"))
        finally:
            scraper.stop()
            if new_master is not None:
                os.kill(new_master, signal.SIGTERM)
    assert scraper.decreases == []
    assert scraper.scrapes > 20
    assert final == expected
    assert expected[key("shop_pings_total")] > 0


def test_gunicorn_master_survives_a_merge_that_fails(tmp_path: Path) -> None:
    """A worker's merge that fails is logged, and the master goes on replacing workers."""
    gunicorn = require_tool("gunicorn")
    port = free_port()
    metrics_dir, log = tmp_path / "metrics", tmp_path / "log"
    metrics_dir.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SHOP_BIND": f"127.0.0.1:{port}",
        "SHOP_WORKERS": "2",
    }
    base = f"http://127.0.0.1:{port}"
    with serving(gunicorn_shop(gunicorn), f"{base}/metrics", tmp_path, log, env) as master:
        # An archive that this library did not write: every merge raises ValueError.
        (metrics_dir / "counter_archive.db").write_bytes(bytes(8))
        victim = min(wait_for_workers(master.pid, 2))
        # A worker killed before it imported the app has no file, and nothing to merge.
        victims_file = metrics_dir / f"counter_{victim}.db"
        assert poll(victims_file.exists, bool), f"worker {victim} wrote no counter file"
        os.kill(victim, signal.SIGKILL)
        wait_for_workers(master.pid, 2, gone=victim)
        assert fetch(f"{base}/ping") == ""  # 204, from a worker of the master that lives on
        assert master.poll() is None
    assert f"Could not merge the metrics files of worker {victim}" in log.read_text()


def test_real_prometheus_scrapes_the_fastapi_app_and_runs_the_rules(tmp_path: Path) -> None:
    """A real Prometheus scrapes the FastAPI app, sees its exact values and runs every rule."""
    app_port = free_port()
    rules = tmp_path / "rules.yml"
    main(["rules", "--output", str(rules)])
    app = [sys.executable, str(EXAMPLES / "fastapi_app.py"), "--port", str(app_port)]
    address = f"127.0.0.1:{app_port}"
    with serving(app, f"http://{address}/metrics", EXAMPLES, tmp_path / "app.log"):
        drive_every_route(f"http://{address}")
        with running_prometheus(tmp_path, rules, {"shop": [address]}) as prometheus:

            def state() -> tuple[dict[str, Series], list[tuple[str, str, str]]]:
                groups = prometheus.api("rules")["groups"]
                health = [
                    (rule["name"], rule["health"], rule.get("lastError", ""))
                    for group in groups
                    for rule in group["rules"]
                ]
                return prometheus_series(prometheus), health

            seen, health = poll(
                state,
                lambda now: (
                    now[0] == {address: EXPECTED_AFTER_ROUTES}
                    and all(rule[1] == "ok" for rule in now[1])
                ),
            )
            jobs = {
                item["metric"]["job"] for item in prometheus.query("veza_business_logins_total")
            }
    assert seen == {address: EXPECTED_AFTER_ROUTES}
    assert jobs == {"shop"}
    assert health == [(name, "ok", "") for name, _, _ in health]
    assert len(health) == 27


def test_simulator_plays_its_rounds_against_a_served_shop(tmp_path: Path) -> None:
    """simulate.py sends one login per round to a real server, then exits with status 0."""
    port = free_port()
    command = [sys.executable, str(EXAMPLES / "fastapi_app.py"), "--port", str(port)]
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with serving(command, metrics_url, EXAMPLES, tmp_path / "log"):
        simulator = [sys.executable, str(EXAMPLES / "simulate.py"), f"http://127.0.0.1:{port}"]
        subprocess.run([*simulator, "--events", "40", "--pause", "0"], check=True, timeout=120)
        values = scrape(metrics_url)
    logins = {name: value for name, value in values.items() if name[0] == LOGINS}
    assert sum(logins.values()) == 40
    assert values[key(ORDERS, "status", "created")] > 0
    assert values[key(REVENUE, "currency", "EUR")] > 0


def test_simulator_stops_with_one_line_when_the_shop_is_gone() -> None:
    """Without a server to talk to, simulate.py exits with status 1 and a one-line reason."""
    base = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "simulate.py"), base],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"simulate.py: stopped: {base} is unreachable")
    assert result.stderr.count("\n") == 1


def test_shipped_prometheus_config_is_valid(promtool: str) -> None:
    """The demo's Prometheus config, and the rules it loads, pass promtool check config."""
    printed = promtool_ok(
        promtool, "check", "config", "examples/prometheus.yml", cwd=EXAMPLES.parent
    )
    assert "SUCCESS: 27 rules found" in printed
