"""Typed use of the public API, checked by ``mypy --strict`` and never run.

Each ``type: ignore`` marks a call that must stay a type error: with
``warn_unused_ignores`` on, mypy fails as soon as one of them type-checks.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

import veza_business_metrics
from veza_business_metrics import BusinessMetrics, LoginOutcome, OrderStatus, metrics


def record_a_checkout(recorder: BusinessMetrics) -> None:
    """Record the events of one paid order through an isolated instance."""
    recorder.record_order_event(OrderStatus.CREATED)
    recorder.record_order_event("completed")
    recorder.record_revenue(1999, "EUR")
    recorder.record_refund(500, "eur")


def record_logins() -> None:
    """Record logins through the module-level helpers."""
    veza_business_metrics.record_login(LoginOutcome.SUCCESS)
    veza_business_metrics.record_login("failure_2fa")
    veza_business_metrics.record_login_failure_locked()
    veza_business_metrics.record_account_deletion()


def misspellings_are_type_errors(recorder: BusinessMetrics, outcome: str) -> None:
    """Show the calls that mypy rejects before they could ever reach run time."""
    recorder.record_login("sucess")  # type: ignore[arg-type]
    recorder.record_login(outcome)  # type: ignore[arg-type]
    recorder.record_login(OrderStatus.FAILED)  # type: ignore[arg-type]
    recorder.record_order_event("complete")  # type: ignore[arg-type]
    recorder.record_revenue(19.99, "EUR")  # type: ignore[arg-type]
    recorder.record_revenue(1999, None)  # type: ignore[arg-type]


def counters() -> list[Counter]:
    """Return the default counters, typed as prometheus_client counters."""
    record_a_checkout(BusinessMetrics(CollectorRegistry()))
    return [
        metrics.BUSINESS_LOGINS_TOTAL,
        metrics.BUSINESS_ORDERS_TOTAL,
        metrics.BUSINESS_REVENUE_CENTS_TOTAL,
        metrics.BUSINESS_ACCOUNT_DELETIONS_TOTAL,
    ]
