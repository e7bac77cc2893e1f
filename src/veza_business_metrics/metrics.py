"""The business counters on prometheus_client's default registry.

Importing this module registers the four counters on ``prometheus_client.REGISTRY``,
so a host app's existing ``/metrics`` endpoint serves them with no extra wiring.
Reloading or re-importing it reuses the counters already registered there.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

from veza_business_metrics._recorder import BusinessMetrics

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
