"""Tests for veza_business_metrics.testing, the helpers and pytest plugin for users."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest

from veza_business_metrics import BusinessMetrics, LoginOutcome, OrderStatus
from veza_business_metrics.testing import MetricsDelta

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

pytest_plugins = ["pytester"]


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
    assert delta.revenue_cents == {"EUR": 1999, "EUR-refund": 500}
    assert delta.account_deletions == 1


def test_unseen_currency_has_changed_by_zero(metrics: BusinessMetrics) -> None:
    """A currency without a series reads as a change of 0 rather than a KeyError."""
    delta = MetricsDelta(metrics)
    assert delta.revenue_cents["JPY"] == 0


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


def test_assert_changes_flags_unknown_label_values(metrics: BusinessMetrics) -> None:
    """A misspelt label in the expectation shows up in the diff instead of passing."""
    delta = MetricsDelta(metrics)
    with pytest.raises(AssertionError, match=r'outcome="sucess"\}\s+1\s+0'):
        delta.assert_changes(logins={"sucess": 1})


def test_delta_of_the_default_instance_ignores_other_registries(
    registry: CollectorRegistry,
) -> None:
    """The default delta sees the default registry only, not an isolated instance."""
    isolated = BusinessMetrics(registry)
    delta = MetricsDelta()
    isolated.record_login_success()
    delta.assert_changes()


def test_plugin_fixture_works_on_default_and_isolated_instances(
    pytester: pytest.Pytester,
) -> None:
    """The entry-point plugin gives the fixture, on the default or an overridden instance."""
    pytester.makepyfile(
        test_default=textwrap.dedent("""
            import veza_business_metrics as business

            def test_login(business_metrics_delta):
                business.record_login_success()
                assert business_metrics_delta.logins["success"] == 1
                business_metrics_delta.assert_changes(logins={"success": 1})

            def test_starts_from_zero(business_metrics_delta):
                business_metrics_delta.assert_changes()
        """),
        test_isolated=textwrap.dedent("""
            import pytest
            from prometheus_client import CollectorRegistry
            from veza_business_metrics import BusinessMetrics

            @pytest.fixture
            def business_metrics():
                return BusinessMetrics(CollectorRegistry())

            def test_revenue(business_metrics, business_metrics_delta):
                business_metrics.record_revenue(1999, "eur")
                assert business_metrics_delta.revenue_cents["EUR"] == 1999

            def test_mismatch_fails(business_metrics, business_metrics_delta):
                business_metrics.record_order_failed()
                business_metrics_delta.assert_changes(orders={"failed": 2})
        """),
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(['*veza_business_orders_total{status="failed"}*2*1'])
