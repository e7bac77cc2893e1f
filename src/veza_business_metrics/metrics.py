"""The contract: the four business counters as the Go service declares them.

The names, help texts and label names below are the Go backend's, character for
character, so that dashboards and the ``veza_business`` alert group read Go and Python
services alike. Importing this module registers the counters on prometheus_client's
default registry, so a host app's existing ``/metrics`` endpoint serves them with no
extra wiring. Reloading or re-importing it reuses the counters already registered there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import REGISTRY

from veza_business_metrics._recorder import CounterSpec, Recorder, register_counters

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

LOGINS: Final = CounterSpec(
    "veza_business_logins_total",
    "Logins broken down by outcome. Drives the auth-failure-spike alert.",
    ("outcome",),
)
ORDERS: Final = CounterSpec(
    "veza_business_orders_total",
    "Marketplace orders by status transition.",
    ("status",),
)
REVENUE_CENTS: Final = CounterSpec(
    "veza_business_revenue_cents_total",
    "Cumulative platform revenue in minor units (e.g. EUR cents).",
    ("currency",),
)
ACCOUNT_DELETIONS: Final = CounterSpec(
    "veza_business_account_deletions_total",
    "Hard-delete + RGPD account erasures.",
    (),
)


class BusinessMetrics(Recorder):
    """Hold the four business counters of one registry and record validated events on them.

    The module-level ``record_*`` functions are the methods of the instance bound to
    prometheus_client's default registry. Build your own instance on a fresh
    ``CollectorRegistry`` to record in isolation, for example in tests.

    Args:
        registry: The registry that holds the counters. A second instance on the same
            registry shares the counters already registered there.

    Raises:
        MultiprocessError: In prometheus_client's multiprocess mode, if ``registry`` is
            not the default registry (every registry shares one file slot per series
            there), or if ``PROMETHEUS_MULTIPROC_DIR`` is not a directory.
        ValueError: If one of the four series names is already registered there as
            something other than the matching counter. Nothing is registered then.
    """

    __slots__ = ()

    def __init__(self, registry: CollectorRegistry) -> None:
        """Get or create the counters on ``registry`` and their zero series."""
        super().__init__(
            *register_counters(registry, (LOGINS, ORDERS, REVENUE_CENTS, ACCOUNT_DELETIONS))
        )


DEFAULT_METRICS = BusinessMetrics(REGISTRY)

BUSINESS_LOGINS_TOTAL = DEFAULT_METRICS.logins_total
BUSINESS_ORDERS_TOTAL = DEFAULT_METRICS.orders_total
BUSINESS_REVENUE_CENTS_TOTAL = DEFAULT_METRICS.revenue_cents_total
BUSINESS_ACCOUNT_DELETIONS_TOTAL = DEFAULT_METRICS.account_deletions_total

record_login = DEFAULT_METRICS.record_login
record_login_success = DEFAULT_METRICS.record_login_success
record_login_failure_credentials = DEFAULT_METRICS.record_login_failure_credentials
record_login_failure_unverified = DEFAULT_METRICS.record_login_failure_unverified
record_login_failure_locked = DEFAULT_METRICS.record_login_failure_locked
record_login_failure_2fa = DEFAULT_METRICS.record_login_failure_2fa
record_login_failure_other = DEFAULT_METRICS.record_login_failure_other
record_order_event = DEFAULT_METRICS.record_order_event
record_order_created = DEFAULT_METRICS.record_order_created
record_order_completed = DEFAULT_METRICS.record_order_completed
record_order_refunded = DEFAULT_METRICS.record_order_refunded
record_order_failed = DEFAULT_METRICS.record_order_failed
record_revenue = DEFAULT_METRICS.record_revenue
record_refund = DEFAULT_METRICS.record_refund
record_account_deletion = DEFAULT_METRICS.record_account_deletion
