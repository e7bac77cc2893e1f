"""Tests for veza_business_metrics.testing, the deltas that users assert on."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from veza_business_metrics import BusinessMetrics, InvalidLabelError, LoginOutcome, OrderStatus
from veza_business_metrics.testing import MetricsDelta

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry


def test_delta_reports_changes_since_creation(metrics: BusinessMetrics) -> None:
    """Each property reports what changed after the delta was created, not before."""
    metrics.record_login_success()
    metrics.record_revenue(100, "EUR")
    delta = MetricsDelta(metrics)
    metrics.record_login_success()
    metrics.record_login_failure_2fa()
    metrics.record_order_created()
    metrics.record_revenue(1999, "eur")
    metrics.record_refund(500, "EUR")
    metrics.record_account_deletion()
    assert delta.logins == {
        "success": 1,
        "failure_credentials": 0,
        "failure_unverified": 0,
        "failure_locked": 0,
        "failure_2fa": 1,
        "failure_other": 0,
    }
    assert delta.orders == {"created": 1, "completed": 0, "refunded": 0, "failed": 0}
    assert (
        repr(delta.orders) == "{'created': 1.0, 'completed': 0.0, 'refunded': 0.0, 'failed': 0.0}"
    )
    assert delta.revenue_cents == {"EUR": 1999, "EUR-refund": 500}
    assert delta.account_deletions == 1


def test_unseen_currency_has_changed_by_zero(metrics: BusinessMetrics) -> None:
    """A currency without a series reads as a change of 0 rather than a KeyError."""
    delta = MetricsDelta(metrics)
    assert delta.revenue_cents["JPY"] == 0
    assert "jpy" not in delta.revenue_cents
    assert len(delta.revenue_cents) == 0
    metrics.record_revenue(5, "JPY")
    assert "jpy" in delta.revenue_cents


def test_assert_changes_passes_on_exact_changes(metrics: BusinessMetrics) -> None:
    """assert_changes accepts exactly the changes made, with enum members as keys."""
    delta = MetricsDelta(metrics)
    metrics.record_login(LoginOutcome.FAILURE_LOCKED)
    metrics.record_order_completed()
    metrics.record_revenue(1999, "USD")
    metrics.record_account_deletion()
    delta.assert_changes(
        logins={LoginOutcome.FAILURE_LOCKED: 1},
        orders={OrderStatus.COMPLETED: 1},
        revenue_cents={"USD": 1999},
        account_deletions=1,
    )


def test_assert_changes_prints_a_diff(metrics: BusinessMetrics) -> None:
    """A mismatch lists each differing series with its expected and actual change."""
    delta = MetricsDelta(metrics)
    metrics.record_login_success()
    metrics.record_login_success()
    metrics.record_refund(250, "EUR")
    metrics.record_account_deletion()
    with pytest.raises(AssertionError) as raised:
        delta.assert_changes(logins={"success": 1}, revenue_cents={"EUR": 250})
    assert str(raised.value).splitlines() == [
        "business metrics changed differently than expected:",
        "  series                                                      expected      actual",
        "  veza_business_account_deletions_total                              0           1",
        '  veza_business_logins_total{outcome="success"}                      1           2',
        '  veza_business_revenue_cents_total{currency="EUR"}                250           0',
        '  veza_business_revenue_cents_total{currency="EUR-refund"}           0         250',
    ]


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"logins": {"sucess": 1}}, "outcome must be a LoginOutcome or one of 'success'"),
        ({"orders": {"complete": 1}}, "status must be an OrderStatus or one of 'created'"),
        ({"orders": {LoginOutcome.SUCCESS: 1}}, "got <LoginOutcome.SUCCESS: 'success'>"),
        ({"revenue_cents": {"EURO": 1}}, "currency must be one of the 165 ISO 4217 codes"),
        ({"revenue_cents": {"EURO-refund": 1}}, "got 'EURO'"),
    ],
)
def test_assert_changes_rejects_what_the_recorders_reject(
    metrics: BusinessMetrics, expectation: dict[str, dict[str, float]], message: str
) -> None:
    """A key that no recorder accepts raises the recorders' error instead of a diff."""
    delta = MetricsDelta(metrics)
    with pytest.raises(InvalidLabelError, match=re.escape(message)):
        delta.assert_changes(**expectation)  # type: ignore[arg-type]


def test_currencies_match_in_any_case(metrics: BusinessMetrics) -> None:
    """Revenue keys match their series in any case, with or without the refund suffix."""
    delta = MetricsDelta(metrics)
    metrics.record_revenue(1999, "EUR")
    metrics.record_refund(500, "usd")
    assert delta.revenue_cents["eur"] == 1999
    assert delta.revenue_cents["usd-REFUND"] == 500
    delta.assert_changes(revenue_cents={"eur": 1999, "Usd-Refund": 500})


def test_delta_mappings_reject_unknown_keys(metrics: BusinessMetrics) -> None:
    """Looking up a label value that no recorder accepts raises instead of reading 0."""
    delta = MetricsDelta(metrics)
    with pytest.raises(InvalidLabelError, match="got 'sucess'"):
        delta.logins["sucess"]
    with pytest.raises(InvalidLabelError, match="got 'complete'"):
        delta.orders["complete"]
    with pytest.raises(TypeError, match="currency must be a str"):
        delta.revenue_cents[978]
    assert delta.orders[OrderStatus.FAILED] == 0


def test_two_spellings_of_one_series_are_refused(metrics: BusinessMetrics) -> None:
    """An expectation that names one series twice, as "eur" and "EUR", raises ValueError."""
    delta = MetricsDelta(metrics)
    with pytest.raises(ValueError, match="names the series 'EUR' twice, the last time as 'EUR'"):
        delta.assert_changes(revenue_cents={"eur": 1, "EUR": 1})


def test_delta_works_without_pytest(run_python: Callable[..., str]) -> None:
    """MetricsDelta imports and reports changes in a process where pytest cannot be imported."""
    code = """
import sys
sys.modules["pytest"] = None  # any import of pytest now raises ImportError
from prometheus_client import CollectorRegistry
from veza_business_metrics import BusinessMetrics
from veza_business_metrics.testing import MetricsDelta
metrics = BusinessMetrics(CollectorRegistry())
delta = MetricsDelta(metrics)
metrics.record_login_success()
delta.assert_changes(logins={"success": 1})
print(dict(delta.logins)["success"])
"""
    assert run_python(code) == "1.0\n"


def test_delta_of_the_default_instance_ignores_other_registries(
    registry: CollectorRegistry,
) -> None:
    """The default delta sees the default registry only, not an isolated instance."""
    isolated = BusinessMetrics(registry)
    delta = MetricsDelta()
    isolated.record_login_success()
    delta.assert_changes()
