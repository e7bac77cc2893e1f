"""Tests of the FastAPI example, written the way a team tests its own instrumentation.

They use FastAPI's TestClient and the ``business_metrics_delta`` fixture, which the
installed package provides to pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from fastapi_app import app

if TYPE_CHECKING:
    from veza_business_metrics.testing import MetricsDelta

client = TestClient(app)


def test_completed_order_counts_its_revenue(business_metrics_delta: MetricsDelta) -> None:
    """A completion webhook counts one completed order and its revenue, upper-cased."""
    response = client.post("/orders/42/complete", json={"amount_cents": 1999, "currency": "eur"})
    assert response.status_code == 200
    assert business_metrics_delta.revenue_cents["EUR"] == 1999
    business_metrics_delta.assert_changes(orders={"completed": 1}, revenue_cents={"EUR": 1999})


def test_refund_counts_the_refunded_amount(business_metrics_delta: MetricsDelta) -> None:
    """A refund webhook counts one refunded order and the amount under EUR-refund."""
    response = client.post("/orders/42/refund", json={"amount_cents": 500, "currency": "EUR"})
    assert response.status_code == 200
    business_metrics_delta.assert_changes(
        orders={"refunded": 1}, revenue_cents={"EUR-refund": 500}
    )


@pytest.mark.parametrize(
    ("credentials", "outcome"),
    [
        ({"username": "alice", "password": "wonderland"}, "success"),
        ({"username": "mallory", "password": "guess"}, "failure_credentials"),
        ({"username": "dave", "password": "grohl"}, "failure_2fa"),
    ],
)
def test_login_counts_its_outcome(
    business_metrics_delta: MetricsDelta, credentials: dict[str, str], outcome: str
) -> None:
    """Each login counts exactly one attempt, under the outcome the handler decided."""
    client.post("/login", json=credentials)
    assert business_metrics_delta.logins[outcome] == 1
    business_metrics_delta.assert_changes(logins={outcome: 1})


def test_unknown_currency_is_refused_and_not_counted(
    business_metrics_delta: MetricsDelta,
) -> None:
    """A webhook in an unknown currency gets a 422 and leaves every counter unchanged."""
    response = client.post("/orders/42/complete", json={"amount_cents": 1999, "currency": "EURO"})
    assert response.status_code == 422
    assert "got 'EURO'" in response.json()["error"]
    business_metrics_delta.assert_changes()


def test_account_deletion_is_counted(business_metrics_delta: MetricsDelta) -> None:
    """Deleting an account counts one deletion."""
    assert client.delete("/account").status_code == 204
    assert business_metrics_delta.account_deletions == 1
