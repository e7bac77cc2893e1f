"""End-to-end tests of the Celery example (examples/celery/) on real prefork workers.

Each test starts Debian's redis-server as broker and result store, and a worker of the
example; tests/celery_worker.py adds hooks that stop chosen tasks until they are killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery
from prometheus_client import CollectorRegistry

from helpers import (
    DELETIONS,
    EXAMPLES,
    ORDERS,
    REVENUE,
    ZERO,
    Scraper,
    add,
    files_by_type,
    free_port,
    key,
    listening_processes,
    running,
    scrape,
    serving,
    worker_pids,
)
from veza_business_metrics import BusinessMetrics

if TYPE_CHECKING:
    from helpers import Series

CELERY_EXAMPLE = EXAMPLES / "celery"
TESTS = Path(__file__).resolve().parent
# Each task that the tests send with arguments the library refuses.
BAD_TASKS: list[tuple[str, list[Any]]] = [
    ("shop.settle_payment", ["bad-1", -500, "EUR"]),
    ("shop.settle_payment", ["bad-2", 1999, "XYZ"]),
    ("shop.settle_payment", ["bad-3", 19.99, "EUR"]),
    ("shop.refund_payment", ["bad-4", -1, "EUR"]),
    ("shop.refund_payment", ["bad-5", 100, "EUR-refund"]),
    ("shop.refund_payment", ["bad-6", 1.5, "USD"]),
]


def celery_worker(app: str, *options: str) -> list[str]:
    """Return the command of a prefork worker of ``app`` with 2 pool processes."""
    # Gossip, mingle and heartbeats only matter between several workers.
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork"]
    return [*command, "--concurrency", "2", "--loglevel", "INFO", *quiet, *options]


def celery_env(redis_url: str, metrics_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """Return the environment of a worker of the example, on ``redis_url``."""
    return {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SHOP_REDIS_URL": redis_url,
        "SHOP_METRICS_PORT": str(port),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(CELERY_EXAMPLE)]),
        **extra,
    }


def enqueue(redis_url: str, count: int) -> None:
    """Send ``count`` tasks of each kind with the example's enqueue.py, as the web tier does."""
    # The web tier runs without the worker's directory, whose files the tests count.
    env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "enqueue.py", str(count)],
        cwd=CELERY_EXAMPLE,
        env={**env, "SHOP_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"Sent {count} settlements, {count} refunds and {count} erasures to {redis_url}\n"
    )


def test_enqueue_refuses_a_count_that_is_not_a_whole_number() -> None:
    """enqueue.py sends nothing for a bad count, and says why on one line after its usage."""
    result = subprocess.run(
        [sys.executable, "enqueue.py", "-3"],
        cwd=CELERY_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "enqueue.py: error: argument count: must be a whole number, 0 or more, got '-3'"
    )


def task_results(redis_url: str) -> list[Any]:
    """Return the result of every finished task, as the result store keeps it."""
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter("celery-task-meta-*", count=1000))
        stored = client.mget(keys) if keys else []
    results = [json.loads(value) for value in stored if value is not None]
    return [result for result in results if result["status"] in {"SUCCESS", "FAILURE"}]


def wait_for_results(redis_url: str, count: int) -> list[Any]:
    """Wait until ``count`` tasks finished and the broker holds no message; return them."""
    deadline = time.monotonic() + 300
    while True:
        results = task_results(redis_url)
        # kombu's Redis transport keeps delivered messages until their ack in "unacked".
        with redis.Redis.from_url(redis_url) as client:
            drained = client.llen("celery") == client.hlen("unacked") == 0
        if len(results) >= count and drained:
            return results
        assert time.monotonic() < deadline, f"{len(results)} of {count} tasks finished"
        time.sleep(0.2)


def runs(markers: Path, order_id: str) -> int:
    """Return how many times the stopped task of ``order_id`` started."""
    return len(list(markers.glob(f"{order_id}.*")))


def recorded_by(results: list[Any]) -> Series:
    """Return what the example's tasks record, by their name and arguments in ``results``."""
    total: Series = {}
    for result in results:
        name, args = result["name"], result["args"]
        if name == "shop.settle_payment":
            change = {
                key(ORDERS, "status", "completed"): 1.0,
                key(REVENUE, "currency", args[2]): float(args[1]),
            }
        elif name == "shop.refund_payment":
            change = {
                key(ORDERS, "status", "refunded"): 1.0,
                key(REVENUE, "currency", f"{args[2]}-refund"): float(args[1]),
            }
        elif name == "shop.erase_account":
            change = {key(DELETIONS): 1.0}
        else:
            assert name == "shop.sweep_erasures"
            change = {key(DELETIONS): float(len(result["result"]))}
        total = add(total, change)
    return total


# The tasks that tests/celery_worker.py stops until they are killed, as (name, args).
STOPS: list[tuple[str, list[Any]]] = [
    ("shop.settle_payment", ["stop-before-record", 700, "EUR"]),
    ("shop.refund_payment", ["stop-after-record", 300, "USD"]),
    ("shop.settle_payment", ["stop-after-result", 900, "JPY"]),
]


def kill_when_stopped(markers: Path, order_id: str, main: int) -> int:
    """Wait until the task of ``order_id`` stops in a pool process, SIGKILL it, return its pid."""
    deadline = time.monotonic() + 120
    while not (stopped := list(markers.glob(f"{order_id}.*"))):
        assert time.monotonic() < deadline, f"{order_id} never ran"
        time.sleep(0.02)
    pid = int(stopped[0].suffix.removeprefix("."))
    assert pid in worker_pids(main)
    os.kill(pid, signal.SIGKILL)
    return pid


def library_error(name: str, args: list[Any]) -> dict[str, Any]:
    """Return the error that the library raises for a bad task's arguments, as Celery keeps it."""
    business = BusinessMetrics(CollectorRegistry())
    record = business.record_revenue if name == "shop.settle_payment" else business.record_refund
    with pytest.raises((TypeError, ValueError)) as error:
        record(*args[1:])
    return {
        "exc_type": type(error.value).__name__,
        "exc_message": [str(error.value)],
        "exc_module": type(error.value).__module__,
    }


# Tasks of each kind (settle, refund, erase) in the recycling run: three batches, each
# followed by a task to kill, then the rest.
PER_KIND = 200
BATCH = 60


@pytest.mark.slow
def test_celery_recycled_and_killed_pool_processes_count_exactly(
    tmp_path: Path, redis_url: str
) -> None:
    """600 tasks, pool processes recycled every 5 and 3 SIGKILLed: the scrape is exact."""
    port = free_port()
    metrics_dir, markers = tmp_path / "metrics", tmp_path / "markers"
    metrics_dir.mkdir()
    markers.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left over by an earlier run")
    env = celery_env(redis_url, metrics_dir, port, CELERY_TEST_MARKERS=str(markers))
    command = celery_worker("celery_worker", "--max-tasks-per-child", "5")
    url = f"http://127.0.0.1:{port}/metrics"
    scraper = Scraper(url, metrics_dir)
    client = Celery(broker=redis_url, set_as_current=False)
    total = 3 * PER_KIND + len(BAD_TASKS) + len(STOPS)
    started = time.monotonic()
    with serving(command, url, tmp_path, tmp_path / "worker.log", env) as worker:
        assert not stale.exists()
        assert scrape(url) == ZERO
        scraper.start()
        try:
            enqueue(redis_url, BATCH)
            for name, args in [*BAD_TASKS, STOPS[0]]:
                client.send_task(name, args)
            for stop in STOPS[1:]:
                enqueue(redis_url, BATCH)
                client.send_task(*stop)
            enqueue(redis_url, PER_KIND - 3 * BATCH)
            for _, (order_id, *_) in STOPS:
                kill_when_stopped(markers, order_id, worker.pid)
                # Killed in the middle of the run: tasks finished before, others after.
                assert 0 < len(task_results(redis_url)) < total
            results = wait_for_results(redis_url, total)
            listening = listening_processes(port, [worker.pid, *worker_pids(worker.pid)])
        finally:
            scraper.stop()
            client.close()
        final = scrape(url)
        at_end = files_by_type(metrics_dir)
    elapsed = time.monotonic() - started
    succeeded = [result for result in results if result["status"] == "SUCCESS"]
    failed = [result for result in results if result["status"] == "FAILURE"]
    print(  # noqa: T201  (the figures that a change's closing note quotes, with -s)
        f"\n{len(succeeded)} tasks succeeded, {len(failed)} failed in {elapsed:.1f} s;"
        f" scraped {final}; {scraper.scrapes} scrapes, {len(scraper.decreases)} decreases,"
        f" files at the peak {dict(scraper.peak_files)}, at the end {at_end}"
    )
    assert len(succeeded) == 3 * PER_KIND + len(STOPS)
    # At-least-once: the tasks killed before their record_* calls, or after them but
    # before their result was stored, ran again; the latter counted twice. The one
    # killed once its result was stored did not run again.
    assert [runs(markers, args[0]) for _, args in STOPS] == [2, 2, 1]
    twice = [result for result in succeeded if result["args"][0] == "stop-after-record"]
    assert final == add(add(ZERO, recorded_by(succeeded)), recorded_by(twice))
    # Bad arguments: the library's error, no retry, nothing counted (the totals above).
    assert sorted((result["name"], result["args"]) for result in failed) == sorted(BAD_TASKS)
    for result in failed:
        assert result["result"] == library_error(result["name"], result["args"])
        assert result["retries"] == 0
    assert scraper.decreases == []
    assert scraper.scrapes > 50
    # Per type: at most 2 live pool processes, the main process and one archive.
    assert max(scraper.peak_files.values()) <= 2 + 1 + 1
    assert max(at_end.values()) <= 2 + 1 + 1
    assert listening == {worker.pid}


@pytest.mark.ours
@pytest.mark.parametrize("acks", ["early", "late-without-reject"])
def test_celery_at_most_once_settings_never_run_a_killed_task_again(
    tmp_path: Path, redis_url: str, acks: str
) -> None:
    """Early ack, or acks_late alone: a killed task never runs again, so counts at most once."""
    port = free_port()
    metrics_dir, markers = tmp_path / "metrics", tmp_path / "markers"
    metrics_dir.mkdir()
    markers.mkdir()
    env = celery_env(
        redis_url, metrics_dir, port, CELERY_TEST_MARKERS=str(markers), CELERY_TEST_ACKS=acks
    )
    url = f"http://127.0.0.1:{port}/metrics"
    client = Celery(broker=redis_url, set_as_current=False)
    with serving(celery_worker("celery_worker"), url, tmp_path, tmp_path / "log", env) as worker:
        try:
            for name, args in STOPS:
                client.send_task(name, args)
            for _, (order_id, *_) in STOPS:
                kill_when_stopped(markers, order_id, worker.pid)
            for number in range(4):
                client.send_task("shop.settle_payment", [f"after-{number}", 100, "JPY"])
            results = wait_for_results(redis_url, len(STOPS) + 4)
        finally:
            client.close()
        final = scrape(url)
    assert [runs(markers, args[0]) for _, args in STOPS] == [1, 1, 1]
    lost = {
        result["args"][0]: result["result"]["exc_type"]
        for result in results
        if result["status"] == "FAILURE"
    }
    assert lost == dict.fromkeys(["stop-before-record", "stop-after-record"], "WorkerLostError")
    succeeded = [result for result in results if result["status"] == "SUCCESS"]
    assert len(succeeded) == 4 + 1
    # The task killed after its record_* calls counted once, though reported lost.
    lost_after_record = [result for result in results if result["args"][0] == "stop-after-record"]
    assert final == add(add(ZERO, recorded_by(succeeded)), recorded_by(lost_after_record))


def test_celery_beat_sweeps_and_each_erasure_is_scraped(tmp_path: Path, redis_url: str) -> None:
    """Beat on a 1 s schedule for a few seconds: the deletions scraped equal the sweeps run."""
    port = free_port()
    env = celery_env(redis_url, tmp_path / "metrics", port, SHOP_ERASURE_SWEEP_SECONDS="1")
    url = f"http://127.0.0.1:{port}/metrics"
    schedule = tmp_path / "beat-schedule"
    beat = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--schedule", str(schedule)]
    beat_log = tmp_path / "beat.log"
    sending = "Sending due task erasure-sweep (shop.sweep_erasures)"
    with serving(celery_worker("tasks"), url, tmp_path, tmp_path / "worker.log", env) as worker:
        with running([*beat, "--loglevel", "INFO"], tmp_path, beat_log, env) as beat_process:
            deadline = time.monotonic() + 60
            while beat_log.read_text().count(sending) < 3:
                assert time.monotonic() < deadline, beat_log.read_text()
                time.sleep(0.05)
            # Beat imports the app, whose setup() only acts in a worker.
            assert listening_processes(port, [worker.pid, beat_process.pid]) == {worker.pid}
            # Stopped half-way to its next send, beat cannot be cut short inside one.
            time.sleep(0.5)
        sent = beat_log.read_text().count(sending)
        sweeps = wait_for_results(redis_url, sent)
        final = scrape(url)
    assert [sweep["name"] for sweep in sweeps] == ["shop.sweep_erasures"] * sent
    assert recorded_by(sweeps) == {key(DELETIONS): float(sent)}
    assert final == add(ZERO, {key(DELETIONS): float(sent)})
