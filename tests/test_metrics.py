"""Tests for veza_business_metrics.metrics, the counters on the default registry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import veza_business_metrics
from helpers import LOGINS, ORDERS, REVENUE, ZERO, business_series, key
from veza_business_metrics import metrics

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from helpers import Labels

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

# Prints the default registry's exposition.
DUMP_SERIES = """
import pytest
from prometheus_client import REGISTRY, generate_latest
print(generate_latest(REGISTRY).decode())
"""


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
    dumped = business_series(run_python("import veza_business_metrics\n" + DUMP_SERIES))
    assert dumped == ZERO
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
    assert business_series(run_python(code + DUMP_SERIES)) == {
        **ZERO,
        key(LOGINS, "outcome", "success"): 2.0,
        key(REVENUE, "currency", "EUR"): 200.0,
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
    assert business_series(run_python(code + DUMP_SERIES)) == {
        **ZERO,
        key(ORDERS, "status", "created"): 2.0,
    }


def test_multiprocess_mode_sums_forked_workers(tmp_path: Path, run_python: RunPython) -> None:
    """Two forked processes record, and a MultiProcessCollector sees the exact sums and zeros."""
    code = textwrap.dedent("""
        import os
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
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
        print(generate_latest(registry).decode())
    """)
    dumped = run_python(code, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    # No *_created samples: multiprocess mode does not export them.
    assert "_created" not in dumped
    assert business_series(dumped) == {
        **ZERO,
        key(LOGINS, "outcome", "success"): 300.0,
        key(ORDERS, "status", "completed"): 2.0,
        key(REVENUE, "currency", "EUR"): 3000.0,
    }


def test_isolated_instance_is_refused_in_multiprocess_mode(
    tmp_path: Path, run_python: RunPython
) -> None:
    """In multiprocess mode a second registry raises MultiprocessError and writes nothing."""
    code = textwrap.dedent("""
        import os
        from prometheus_client import CollectorRegistry
        import veza_business_metrics as v

        before = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        try:
            v.BusinessMetrics(CollectorRegistry())
        except v.MultiprocessError as error:
            print(error)
        assert sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])) == before
    """)
    printed = run_python(code, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert printed.startswith("BusinessMetrics(<prometheus_client.registry.CollectorRegistry")
    assert "cannot count in isolation in multiprocess mode" in printed


@pytest.mark.parametrize("variable", ["PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"])
def test_a_missing_multiprocess_directory_is_named(tmp_path: Path, variable: str) -> None:
    """Importing with the directory missing raises MultiprocessError naming the variable."""
    missing = tmp_path / "gone"
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", "import veza_business_metrics"],
        capture_output=True,
        text=True,
        env={**env, variable: str(missing)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"veza_business_metrics.MultiprocessError: PROMETHEUS_MULTIPROC_DIR is"
        f" '{missing}', which is not a directory: create it before the first metric is"
        " created, or unset the variable to count in this process only"
    )
