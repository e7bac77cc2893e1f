"""The Veza platform's business KPI counters, series-compatible with the Go backend."""

from typing import TYPE_CHECKING

from veza_business_metrics._errors import InvalidAmountError, InvalidLabelError, MultiprocessError
from veza_business_metrics._exemplars import disable_trace_exemplars, enable_trace_exemplars
from veza_business_metrics._labels import LoginOutcome, OrderStatus
from veza_business_metrics._money import to_minor_units
from veza_business_metrics.metrics import (
    DEFAULT_METRICS,
    BusinessMetrics,
    record_account_deletion,
    record_login,
    record_login_failure_2fa,
    record_login_failure_credentials,
    record_login_failure_locked,
    record_login_failure_other,
    record_login_failure_unverified,
    record_login_success,
    record_order_completed,
    record_order_created,
    record_order_event,
    record_order_failed,
    record_order_refunded,
    record_refund,
    record_revenue,
)

__all__ = [
    "DEFAULT_METRICS",
    "BusinessMetrics",
    "InvalidAmountError",
    "InvalidLabelError",
    "LoginOutcome",
    "MultiprocessError",
    "OrderStatus",
    "__version__",
    "disable_trace_exemplars",
    "enable_trace_exemplars",
    "record_account_deletion",
    "record_login",
    "record_login_failure_2fa",
    "record_login_failure_credentials",
    "record_login_failure_locked",
    "record_login_failure_other",
    "record_login_failure_unverified",
    "record_login_success",
    "record_order_completed",
    "record_order_created",
    "record_order_event",
    "record_order_failed",
    "record_order_refunded",
    "record_refund",
    "record_revenue",
    "to_minor_units",
]

if TYPE_CHECKING:
    __version__: str
else:

    def __getattr__(name: str) -> str:
        # Reading the installed metadata costs tens of milliseconds, so the version is
        # looked up only when someone asks for it, not on every import.
        if name == "__version__":
            from importlib.metadata import version  # noqa: PLC0415

            return version("veza-business-metrics")
        message = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(message)
