"""The fake shop behind every example app: the same routes, whatever the framework.

Each handler takes the parsed JSON body and returns a ``Reply``; the framework adapters
(``fastapi_app.py``, ``flask_app.py``) only translate requests and replies. Payment
webhooks carry the amount the provider settled and the order's currency, so handlers
keep no order state and run unchanged in any number of worker processes.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING

import veza_business_metrics as business

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class User:
    """A row of the fake user table."""

    password: str
    verified: bool = True
    locked: bool = False
    otp: str | None = None
    suspended: bool = False


# One user per login outcome; any unknown user or wrong password is failure_credentials.
USERS = {
    "alice": User(password="wonderland"),
    "bob": User(password="builder", verified=False),
    "carol": User(password="singing", locked=True),
    "dave": User(password="grohl", otp="123456"),
    "erin": User(password="brockovich", suspended=True),
}


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a handler answers: an HTTP status and a JSON payload, if any."""

    status: int
    payload: dict[str, object] | None = None


def _bad_request(message: str, status: int = 422) -> Reply:
    return Reply(status, {"error": message})


def login(body: object) -> Reply:
    """Check the credentials in ``body`` against the user table and count the outcome."""
    if not isinstance(body, dict):
        return _bad_request("the body must be a JSON object", 400)
    username = body.get("username")
    user = USERS.get(username) if isinstance(username, str) else None
    if user is None or body.get("password") != user.password:
        outcome = business.LoginOutcome.FAILURE_CREDENTIALS
    elif user.locked:
        outcome = business.LoginOutcome.FAILURE_LOCKED
    elif not user.verified:
        outcome = business.LoginOutcome.FAILURE_UNVERIFIED
    elif user.otp is not None and body.get("otp") != user.otp:
        outcome = business.LoginOutcome.FAILURE_2FA
    elif user.suspended:
        outcome = business.LoginOutcome.FAILURE_OTHER
    else:
        outcome = business.LoginOutcome.SUCCESS
    business.record_login(outcome)
    status = 200 if outcome is business.LoginOutcome.SUCCESS else 401
    return Reply(status, {"outcome": outcome.value})


def create_order(_body: object) -> Reply:
    """Create an order and count it."""
    business.record_order_created()
    return Reply(201, {"id": uuid.uuid4().hex})


def complete_order(order_id: str, body: object) -> Reply:
    """Count a payment webhook's completion and the revenue it settled."""
    return _record_money(order_id, body, business.record_revenue, business.record_order_completed)


def refund_order(order_id: str, body: object) -> Reply:
    """Count a refund webhook's refund and the amount it gave back."""
    return _record_money(order_id, body, business.record_refund, business.record_order_refunded)


def fail_order(order_id: str) -> Reply:
    """Count an order whose payment the provider rejected."""
    business.record_order_failed()
    return Reply(200, {"id": order_id, "status": business.OrderStatus.FAILED.value})


def delete_account() -> Reply:
    """Count an account deletion."""
    business.record_account_deletion()
    return Reply(204)


def _record_money(
    order_id: str,
    body: object,
    record_amount: Callable[[int, str], None],
    record_status: Callable[[], None],
) -> Reply:
    if not isinstance(body, dict) or not {"amount_cents", "currency"} <= body.keys():
        return _bad_request("the body must be a JSON object with amount_cents and currency", 400)
    # The amount is recorded first: if the library rejects it, the status is not counted
    # either, so a bad webhook leaves no trace in the metrics.
    try:
        record_amount(body["amount_cents"], body["currency"])
    except (TypeError, ValueError) as error:
        return _bad_request(str(error))
    record_status()
    return Reply(200, {"id": order_id})
