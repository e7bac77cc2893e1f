"""The closed sets of label values that the Go service emits."""

from __future__ import annotations

import enum
from typing import Literal, TypeAlias


class LoginOutcome(enum.StrEnum):
    """How a login attempt ended, as the ``outcome`` label of ``veza_business_logins_total``."""

    SUCCESS = "success"
    FAILURE_CREDENTIALS = "failure_credentials"
    FAILURE_UNVERIFIED = "failure_unverified"
    FAILURE_LOCKED = "failure_locked"
    FAILURE_2FA = "failure_2fa"
    FAILURE_OTHER = "failure_other"


class OrderStatus(enum.StrEnum):
    """An order's status transition, as the ``status`` label of ``veza_business_orders_total``."""

    CREATED = "created"
    COMPLETED = "completed"
    REFUNDED = "refunded"
    FAILED = "failed"


# Literal twins of the enums let mypy reject a misspelt string at the call site;
# a test keeps each twin equal to its enum.
LoginOutcomeValue: TypeAlias = Literal[
    "success",
    "failure_credentials",
    "failure_unverified",
    "failure_locked",
    "failure_2fa",
    "failure_other",
]
OrderStatusValue: TypeAlias = Literal["created", "completed", "refunded", "failed"]
