"""Print what each record_* helper costs relative to a bare prometheus_client call.

Run it with ``python benchmarks/bench_record.py`` in any environment where the package is
installed, such as ``.nox/tests`` once ``python3 scripts/dev.py test`` has created it.

All cases run interleaved in one process: every round times each case once, and a
case's ratio is the median over rounds of (case - empty loop) / (baseline - empty loop),
so drift in CPU frequency or load hits the case and its baseline alike.

The helpers on the hot paths are timed three ways: with trace exemplars disabled, as
every case is unless it says otherwise; enabled outside any span; and enabled inside a
sampled span, which attaches an exemplar on every call. The last two need
opentelemetry-api (the ``otel`` extra); without it they are left out, and said to be.

Every case runs again in a child process in prometheus_client's multiprocess mode, on
the default registry (the only one that mode allows) and a directory on a tmpfs, where
each ``inc()`` writes to a memory-mapped file, and each exemplar to the library's own
exemplar file: that column's baseline is a bare ``child.inc()`` in multiprocess mode too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry

from veza_business_metrics import (
    BusinessMetrics,
    LoginOutcome,
    OrderStatus,
    disable_trace_exemplars,
    enable_trace_exemplars,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

try:
    from opentelemetry import trace
except ImportError:
    HAS_OTEL = False
else:
    HAS_OTEL = True

Mode = Literal["disabled", "enabled", "span"]
# What each mode adds to a ratio's target; None: no target, only the figure.
MODE_TARGET_ADDS: dict[Mode, float | None] = {"disabled": 0.0, "enabled": 0.10, "span": None}
MODE_LABELS: dict[Mode, str] = {"disabled": "", "enabled": " [no span]", "span": " [span]"}

IMPORT_PROBE = """
import time, prometheus_client
start = time.perf_counter()
import veza_business_metrics
print(time.perf_counter() - start)
"""


def _namespace() -> dict[str, object]:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from veza_business_metrics.metrics import DEFAULT_METRICS  # noqa: PLC0415

        metrics = DEFAULT_METRICS
    else:
        metrics = BusinessMetrics(CollectorRegistry())
    return {
        "metrics": metrics,
        "login_child": metrics.logins_total.labels("success"),
        "order_child": metrics.orders_total.labels("completed"),
        "deletions": metrics.account_deletions_total,
        "revenue_child": metrics.revenue_cents_total.labels("EUR"),
        "counter": metrics.logins_total,
        "record_login_success": metrics.record_login_success,
        "record_order_completed": metrics.record_order_completed,
        "record_account_deletion": metrics.record_account_deletion,
        "record_login": metrics.record_login,
        "record_order_event": metrics.record_order_event,
        "record_revenue": metrics.record_revenue,
        "record_refund": metrics.record_refund,
        "SUCCESS": LoginOutcome.SUCCESS,
        "COMPLETED": OrderStatus.COMPLETED,
    }


# (label, statement, baseline statement, target ratio or None)
CASES = [
    ("record_login_success()", "record_login_success()", "login_child.inc()", 1.10),
    ("record_order_completed()", "record_order_completed()", "order_child.inc()", 1.10),
    ("record_account_deletion()", "record_account_deletion()", "deletions.inc()", 1.10),
    ("record_login('success')", "record_login('success')", "login_child.inc()", 1.20),
    ("record_login(LoginOutcome.SUCCESS)", "record_login(SUCCESS)", "login_child.inc()", 1.20),
    (
        "record_order_event('completed')",
        "record_order_event('completed')",
        "order_child.inc()",
        1.20,
    ),
    (
        "record_order_event(OrderStatus.X)",
        "record_order_event(COMPLETED)",
        "order_child.inc()",
        1.20,
    ),
    (
        "record_revenue(1999, 'EUR')",
        "record_revenue(1999, 'EUR')",
        "revenue_child.inc(1999)",
        1.30,
    ),
    ("record_refund(1999, 'EUR')", "record_refund(1999, 'EUR')", "revenue_child.inc(1999)", None),
    (
        "counter.labels('success').inc() (naive)",
        "counter.labels('success').inc()",
        "login_child.inc()",
        None,
    ),
]
# The hot paths, timed again with exemplars enabled, outside and inside a sampled span.
EXEMPLAR_CASES = [
    case
    for case in CASES
    if case[0]
    in {
        "record_login_success()",
        "record_account_deletion()",
        "record_login('success')",
        "record_order_event(OrderStatus.X)",
        "record_revenue(1999, 'EUR')",
    }
]


@contextlib.contextmanager
def exemplars(mode: Mode) -> Iterator[None]:
    """Run the block with exemplars as ``mode`` says, and disabled again after it."""
    if mode == "disabled":
        yield
        return
    enable_trace_exemplars()
    try:
        if mode == "enabled":
            yield
        else:
            # What a sampled span of the SDK gives the lookup: a valid, sampled context.
            sampled = trace.SpanContext(
                0x0AF7651916CD43DD8448EB211C80319C,
                0xB7AD6B7169203331,
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            with trace.use_span(trace.NonRecordingSpan(sampled)):
                yield
    finally:
        disable_trace_exemplars()


def measure_ratios(
    rounds: int, number: int, modes: tuple[Mode, ...]
) -> list[tuple[str, float, float, float | None]]:
    """Return (label, ratio, nanoseconds per call, target) for every case in every mode."""
    namespace = _namespace()
    runs: list[tuple[str, str, str, float | None, Mode]] = [(*case, "disabled") for case in CASES]
    runs += [(*case, mode) for mode in modes if mode != "disabled" for case in EXEMPLAR_CASES]
    # Every baseline and the empty loop read no exemplar state: they are timed disabled.
    disabled: Mode = "disabled"
    timed = {("pass", disabled)} | {(run[1], run[4]) for run in runs}
    timed |= {(run[2], disabled) for run in runs}
    timers = {key: timeit.Timer(key[0], globals=namespace) for key in sorted(timed)}
    samples: dict[tuple[str, Mode], list[float]] = {key: [] for key in timers}
    for _ in range(rounds):
        for (statement, mode), timer in timers.items():
            with exemplars(mode):
                samples[statement, mode].append(timer.timeit(number) / number)
    results = []
    for label, statement, baseline, target, mode in runs:
        ratios = [
            (case - empty) / (base - empty)
            for case, base, empty in zip(
                samples[statement, mode],
                samples[baseline, "disabled"],
                samples["pass", "disabled"],
                strict=True,
            )
        ]
        nanoseconds = statistics.median(samples[statement, mode]) * 1e9
        add = MODE_TARGET_ADDS[mode]
        shown_target = None if target is None or add is None else target + add
        results.append(
            (label + MODE_LABELS[mode], statistics.median(ratios), nanoseconds, shown_target)
        )
    return results


def measure_import_ms(runs: int) -> float:
    """Return the median time to import the package once prometheus_client is loaded."""
    # With bytecode cached, as an installed wheel has it, even where the environment
    # says not to write any; the cache goes to a directory of its own, not the sources.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as cache:
        probe = [sys.executable, "-X", f"pycache_prefix={cache}", "-c", IMPORT_PROBE]
        subprocess.run(probe, env=environment, capture_output=True, check=True)
        seconds = [
            float(subprocess.check_output(probe, env=environment, text=True)) for _ in range(runs)
        ]
    return statistics.median(seconds) * 1e3


def measure_multiprocess_ratios(rounds: int, number: int, modes: tuple[Mode, ...]) -> list[float]:
    """Return each case's ratio measured in a child process in multiprocess mode."""
    shm = Path("/dev/shm")  # noqa: S108
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as directory:
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        command = [sys.executable, __file__, "--json", "--rounds", str(rounds)]
        command += ["--number", str(number), "--modes", ",".join(modes)]
        output = subprocess.check_output(command, env=environment)
    ratios: list[float] = json.loads(output)
    return ratios


def main() -> None:
    """Measure and print the ratios, single-process and multiprocess, and the import cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds")
    parser.add_argument("--number", type=int, default=50_000, help="calls per case per round")
    parser.add_argument("--import-runs", type=int, default=21, help="fresh interpreters")
    parser.add_argument("--json", action="store_true", help="print only the ratios, as JSON")
    parser.add_argument("--modes", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    modes: tuple[Mode, ...] = ("disabled", "enabled", "span")
    if args.modes is not None:
        modes = tuple(mode for mode in modes if mode in args.modes.split(","))
    elif not HAS_OTEL:
        modes = ("disabled",)
        print("opentelemetry-api is not installed: the exemplar cases are left out")
    results = measure_ratios(args.rounds, args.number, modes)
    if args.json:
        print(json.dumps([ratio for _, ratio, _, _ in results]))
        return
    multiprocess = measure_multiprocess_ratios(args.rounds, args.number, modes)
    print(f"{'case':44} {'ns/call':>8} {'ratio':>6} {'target':>7}    {'multiprocess':>12}")
    for (label, ratio, nanoseconds, target), other in zip(results, multiprocess, strict=True):
        verdict = "" if target is None else ("ok" if ratio <= target else "OVER")
        shown_target = "" if target is None else f"<={target:.2f}"
        print(
            f"{label:44} {nanoseconds:8.1f} {ratio:6.3f} {shown_target:>7} {verdict:4}"
            f" {other:12.3f}"
        )
    import_ms = measure_import_ms(args.import_runs)
    verdict = "ok" if import_ms <= 5.0 else "OVER"  # noqa: PLR2004
    print(
        f"import veza_business_metrics after prometheus_client: {import_ms:.2f} ms (<=5) {verdict}"
    )


if __name__ == "__main__":
    main()
