"""Tests for veza_business_metrics.metrics, the counters on the default registry."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import veza_business_metrics
from veza_business_metrics import LoginOutcome, OrderStatus, metrics

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    RunPython = Callable[..., str]

CONTRACT: dict[str, tuple[str, list[str]]] = {
    "veza_business_logins": (
        "Logins broken down by outcome. Drives the auth-failure-spike alert.",
        ["outcome"],
    ),
    "veza_business_orders": ("Marketplace orders by status transition.", ["status"]),
    "veza_business_revenue_cents": (
        "Cumulative platform revenue in minor units (e.g. EUR cents).",
        ["currency"],
    ),
    "veza_business_account_deletions": ("Hard-delete + RGPD account erasures.", []),
}

# Prints every veza_business_*_total sample of the default registry as JSON.
DUMP_SERIES = """
import json
from prometheus_client import REGISTRY
print(json.dumps([
    [s.name, s.labels, s.value]
    for family in REGISTRY.collect() for s in family.samples
    if s.name.startswith("veza_business_") and s.name.endswith("_total")
]))
"""


Labels = tuple[tuple[str, str], ...]


def as_series(dumped: str) -> dict[tuple[str, Labels], float]:
    """Turn the JSON printed by DUMP_SERIES into values keyed by name and sorted labels."""
    return {
        (name, tuple(sorted(labels.items()))): value for name, labels, value in json.loads(dumped)
    }


ZERO_SERIES: dict[tuple[str, Labels], float] = {
    **{("veza_business_logins_total", (("outcome", o.value),)): 0.0 for o in LoginOutcome},
    **{("veza_business_orders_total", (("status", s.value),)): 0.0 for s in OrderStatus},
    ("veza_business_account_deletions_total", ()): 0.0,
}


def parsed_default_registry() -> dict[str, tuple[str, str, dict[Labels, float]]]:
    """Parse the default registry's exposition into name -> (help, type, values by labels)."""
    text = generate_latest(REGISTRY).decode()
    return {
        family.name: (
            family.documentation,
            family.type,
            {
                tuple(sorted(dict(sample.labels).items())): sample.value
                for sample in family.samples
                if sample.name.endswith("_total")
            },
        )
        for family in text_string_to_metric_families(text)
        if family.name.startswith("veza_business_")
    }


def test_module_attributes_are_the_default_registry_counters() -> None:
    """The four module attributes are the counters that the default registry collects."""
    collected = {family.name for family in REGISTRY.collect()}
    for counter, name in [
        (metrics.BUSINESS_LOGINS_TOTAL, "veza_business_logins"),
        (metrics.BUSINESS_ORDERS_TOTAL, "veza_business_orders"),
        (metrics.BUSINESS_REVENUE_CENTS_TOTAL, "veza_business_revenue_cents"),
        (metrics.BUSINESS_ACCOUNT_DELETIONS_TOTAL, "veza_business_account_deletions"),
    ]:
        assert [family.name for family in counter.describe()] == [name]
        assert name in collected


def test_import_creates_exactly_the_eleven_zero_series(run_python: RunPython) -> None:
    """Importing the package in a fresh process exports exactly 11 series, all at 0."""
    dumped = as_series(run_python("import veza_business_metrics\n" + DUMP_SERIES))
    assert dumped == ZERO_SERIES
    assert len(dumped) == 11


def test_exposition_carries_the_go_contract() -> None:
    """The parsed exposition has the Go service's names, HELP texts, types and labels."""
    veza_business_metrics.record_revenue(1999, "EUR")
    veza_business_metrics.record_refund(500, "eur")
    parsed = parsed_default_registry()
    counters = {name for name, (_, kind, _) in parsed.items() if kind == "counter"}
    assert counters == set(CONTRACT)
    # The Python client's own addition, which the README says how to switch off.
    assert set(parsed) - counters == {f"{name}_created" for name in CONTRACT}
    for name, (documentation, labelnames) in CONTRACT.items():
        help_text, kind, values = parsed[name]
        assert (help_text, kind) == (documentation, "counter")
        assert {tuple(key for key, _ in labels) for labels in values} == {tuple(labelnames)}


def test_default_helpers_count_on_the_default_registry() -> None:
    """Each module-level helper moves its series on the default registry by exactly its amount."""
    before = parsed_default_registry()
    veza_business_metrics.record_login_success()
    veza_business_metrics.record_login(veza_business_metrics.LoginOutcome.FAILURE_2FA)
    veza_business_metrics.record_order_event("created")
    veza_business_metrics.record_order_completed()
    veza_business_metrics.record_revenue(1999, "usd")
    veza_business_metrics.record_refund(250, "USD")
    veza_business_metrics.record_account_deletion()
    after = parsed_default_registry()

    def delta(name: str, labels: Labels) -> float:
        return after[name][2][labels] - before[name][2].get(labels, 0.0)

    assert delta("veza_business_logins", (("outcome", "success"),)) == 1
    assert delta("veza_business_logins", (("outcome", "failure_2fa"),)) == 1
    assert delta("veza_business_logins", (("outcome", "failure_locked"),)) == 0
    assert delta("veza_business_orders", (("status", "created"),)) == 1
    assert delta("veza_business_orders", (("status", "completed"),)) == 1
    assert delta("veza_business_revenue_cents", (("currency", "USD"),)) == 1999
    assert delta("veza_business_revenue_cents", (("currency", "USD-refund"),)) == 250
    assert delta("veza_business_account_deletions", ()) == 1


def test_promtool_finds_nothing_to_report(promtool: str) -> None:
    """Promtool check metrics reports zero findings on the default registry's exposition."""
    veza_business_metrics.record_revenue(1, "JPY")
    veza_business_metrics.record_refund(1, "JPY")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(REGISTRY),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_reload_keeps_counting_on_the_same_counters(run_python: RunPython) -> None:
    """importlib.reload raises no DuplicateTimeseries and keeps counts in one collector."""
    code = """
import importlib
import veza_business_metrics.metrics as m
m.record_login_success()
m.record_revenue(100, "EUR")
counter = m.BUSINESS_LOGINS_TOTAL
importlib.reload(m)
assert m.BUSINESS_LOGINS_TOTAL is counter
m.record_login_success()
m.record_revenue(100, "eur")
"""
    assert as_series(run_python(code + DUMP_SERIES)) == {
        **ZERO_SERIES,
        ("veza_business_logins_total", (("outcome", "success"),)): 2.0,
        ("veza_business_revenue_cents_total", (("currency", "EUR"),)): 200.0,
    }


def test_reimport_after_removal_from_sys_modules_keeps_counting(run_python: RunPython) -> None:
    """Re-importing the package after dropping it from sys.modules carries the counts on."""
    code = """
import sys
import veza_business_metrics as first
first.record_order_created()
for name in [n for n in sys.modules if n.startswith("veza_business_metrics")]:
    del sys.modules[name]
import veza_business_metrics as second
assert second is not first
second.record_order_created()
assert second.metrics.BUSINESS_ORDERS_TOTAL is first.metrics.BUSINESS_ORDERS_TOTAL
"""
    assert as_series(run_python(code + DUMP_SERIES)) == {
        **ZERO_SERIES,
        ("veza_business_orders_total", (("status", "created"),)): 2.0,
    }


def test_multiprocess_mode_sums_forked_workers(tmp_path: Path, run_python: RunPython) -> None:
    """Two forked processes record, and a MultiProcessCollector sees the exact sums and zeros."""
    code = textwrap.dedent("""
        import json, os
        from prometheus_client import CollectorRegistry, multiprocess
        import veza_business_metrics as v

        for worker in (1, 2):
            pid = os.fork()
            if pid == 0:
                for _ in range(100 * worker):
                    v.record_login_success()
                v.record_revenue(1000 * worker, "eur")
                v.record_order_event(v.OrderStatus.COMPLETED)
                os._exit(0)
            os.waitpid(pid, 0)

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(json.dumps([
            [s.name, s.labels, s.value]
            for family in registry.collect() for s in family.samples
            if s.name.startswith("veza_business_")
        ]))
    """)
    dumped = run_python(code, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    # No *_created samples: multiprocess mode does not export them.
    assert as_series(dumped) == {
        **ZERO_SERIES,
        ("veza_business_logins_total", (("outcome", "success"),)): 300.0,
        ("veza_business_orders_total", (("status", "completed"),)): 2.0,
        ("veza_business_revenue_cents_total", (("currency", "EUR"),)): 3000.0,
    }
