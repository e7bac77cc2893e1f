"""Property tests of the example shop's handlers with arbitrary webhook bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import given
from hypothesis import strategies as st

import shop
from veza_business_metrics.testing import MetricsDelta

if TYPE_CHECKING:
    from collections.abc import Callable

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
WEBHOOKS = st.fixed_dictionaries(
    {
        "amount_cents": st.one_of(st.integers(min_value=-(10**6), max_value=10**6), JSON),
        "currency": st.one_of(st.sampled_from(["EUR", "usd", "EUR-refund", "XYZ", ""]), JSON),
    }
)
HANDLERS: list[tuple[Callable[[str, object], shop.Reply], str]] = [
    (shop.complete_order, "completed"),
    (shop.refund_order, "refunded"),
]


@given(body=st.one_of(WEBHOOKS, JSON), handler=st.sampled_from(HANDLERS))
def test_webhooks_record_everything_or_nothing(
    body: object, handler: tuple[Callable[[str, object], shop.Reply], str]
) -> None:
    """Any webhook body gets a 200 with both counts, or a 4xx with nothing recorded."""
    record, status = handler
    delta = MetricsDelta()
    reply = record("order-1", body)
    if reply.status == 200:
        assert isinstance(body, dict)
        assert delta.orders[status] == 1
        assert sum(delta.revenue_cents.values()) == body["amount_cents"]
    else:
        assert reply.status in {400, 422}
        assert reply.payload is not None
        assert reply.payload["error"]
        delta.assert_changes()


@given(body=JSON)
def test_any_login_body_counts_one_outcome_or_is_refused(body: object) -> None:
    """Any login body counts exactly one outcome, or gets a 400 when it is not an object."""
    delta = MetricsDelta()
    reply = shop.login(body)
    if isinstance(body, dict):
        assert reply.status in {200, 401}
        assert sum(delta.logins.values()) == 1
    else:
        assert reply.status == 400
        delta.assert_changes()
