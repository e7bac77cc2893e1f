"""Tests for veza_business_metrics._labels."""

from __future__ import annotations

import typing

import pytest

from veza_business_metrics._labels import (
    LoginOutcome,
    LoginOutcomeValue,
    OrderStatus,
    OrderStatusValue,
)


def test_login_outcomes_match_the_go_label_values() -> None:
    """LoginOutcome has exactly the six outcome values the Go service emits."""
    assert {member.name: member.value for member in LoginOutcome} == {
        "SUCCESS": "success",
        "FAILURE_CREDENTIALS": "failure_credentials",
        "FAILURE_UNVERIFIED": "failure_unverified",
        "FAILURE_LOCKED": "failure_locked",
        "FAILURE_2FA": "failure_2fa",
        "FAILURE_OTHER": "failure_other",
    }


def test_order_statuses_match_the_go_label_values() -> None:
    """OrderStatus has exactly the four status values the Go service emits."""
    assert {member.name: member.value for member in OrderStatus} == {
        "CREATED": "created",
        "COMPLETED": "completed",
        "REFUNDED": "refunded",
        "FAILED": "failed",
    }


@pytest.mark.parametrize(
    ("enum", "literal"), [(LoginOutcome, LoginOutcomeValue), (OrderStatus, OrderStatusValue)]
)
def test_literal_twins_list_the_same_values(enum: type[LoginOutcome], literal: object) -> None:
    """Each Literal alias used in signatures lists exactly its enum's values."""
    assert list(typing.get_args(literal)) == [member.value for member in enum]


@pytest.mark.parametrize("member", [*LoginOutcome, *OrderStatus])
def test_members_format_as_their_value(member: LoginOutcome | OrderStatus) -> None:
    """A member formats as its bare value, never as ``Class.NAME``."""
    assert str(member) == member.value
    assert f"{member}" == member.value
