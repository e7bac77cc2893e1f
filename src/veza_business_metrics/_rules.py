"""Render the Prometheus recording and alerting rules, as a rule file or a PrometheusRule.

The YAML is written here rather than dumped from data, so that the file keeps its
comments and block-scalar expressions without a YAML library on the import path. Only
numbers and durations that ``_config`` checked, and matchers that it re-quoted, reach
the text; the runbook URL is written as a quoted string.
"""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

from veza_business_metrics._config import ALERT_PREFIX, number_text, percent_text

if TYPE_CHECKING:
    from veza_business_metrics._config import Settings

# The series of the contract in metrics.py, which only __init__ and testing import;
# tests/test_rules.py checks that the two agree.
LOGINS = "veza_business_logins_total"
ORDERS = "veza_business_orders_total"
REVENUE = "veza_business_revenue_cents_total"
DELETIONS = "veza_business_account_deletions_total"
# The windows of the login error ratio: the seven that the burn-rate alerts compare,
# and the 30-day SLO period that the error budget panel of the dashboard reads.
ERROR_RATIO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")

_HEADER = """\
# Prometheus recording and alerting rules for the veza_business_* counters.
# Printed by `python -m veza_business_metrics rules`; they ship with the library so
# that they always match the series the installed version exports.
# Every expression aggregates over all instances and services that export the series.
"""
_VALUE = "{{ $value | humanize }}"
_VALUE_PERCENT = "{{ $value | humanizePercentage }}"
_RULE_INDENT = " " * 6
_WIDTH = 91


def _block(text: str, indent: int) -> str:
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * indent)


def _folded(text: str, indent: int) -> str:
    lines = textwrap.wrap(
        text, width=_WIDTH - indent, break_long_words=False, break_on_hyphens=False
    )
    return "\n".join(" " * indent + line for line in lines)


def _comment_lines(comment: str) -> list[str]:
    return [f"{_RULE_INDENT}# {line}" for line in textwrap.wrap(comment, _WIDTH - 8)]


def _record(name: str, expr: str, comment: str = "") -> str:
    lines = _comment_lines(comment)
    lines += [f"{_RULE_INDENT}- record: {name}", f"{_RULE_INDENT}  expr: |", _block(expr, 10)]
    return "\n".join(lines)


def _alert(  # noqa: PLR0913
    settings: Settings,
    section: object,
    *,
    expr: str,
    pending: str,
    severity: str,
    summary: str,
    description: str,
    comment: str = "",
) -> str:
    name = ALERT_PREFIX + type(section).__name__
    runbook_url = f"{settings.runbook_base_url}/runbooks/{name}.html"
    return "\n".join(
        [
            *_comment_lines(comment),
            f"{_RULE_INDENT}- alert: {name}",
            f"{_RULE_INDENT}  expr: |",
            _block(expr, 10),
            f"{_RULE_INDENT}  for: {pending}",
            f"{_RULE_INDENT}  labels:",
            f"{_RULE_INDENT}    severity: {severity}",
            f"{_RULE_INDENT}  annotations:",
            f"{_RULE_INDENT}    summary: >-",
            _folded(summary, 12),
            f"{_RULE_INDENT}    description: >-",
            _folded(description, 12),
            f"{_RULE_INDENT}    runbook_url: {json.dumps(runbook_url)}",
        ]
    )


def _recording_rules(settings: Settings) -> list[str]:
    select = settings.selector
    logins, orders = select(LOGINS), select(ORDERS)
    revenue = select(REVENUE, 'currency!~".*-refund"')
    refunds = select(REVENUE, 'currency=~".+-refund"')
    rules = [
        _record("veza_business:logins:rate5m", f"sum by (outcome) (rate({logins}[5m]))"),
        _record("veza_business:logins:rate1h", f"sum by (outcome) (rate({logins}[1h]))"),
        _record(
            "veza_business:login_failure_ratio:rate5m",
            f"""
            sum(rate({select(LOGINS, 'outcome=~"failure_.*"')}[5m]))
            /
            sum(rate({logins}[5m]))
            """,
        ),
    ]
    failed_by_auth_service = select(LOGINS, 'outcome="failure_other"')
    rules += [
        _record(
            f"veza_business:login_error_ratio:rate{window}",
            f"""
            sum(rate({failed_by_auth_service}[{window}]))
            /
            sum(rate({logins}[{window}]))
            """,
            comment=(
                "The login SLI: logins that the auth service itself failed, over all logins."
                " Wrong passwords and the other user-side outcomes count as good."
            )
            if window == ERROR_RATIO_WINDOWS[0]
            else "",
        )
        for window in ERROR_RATIO_WINDOWS
    ]
    rules += [
        _record("veza_business:orders:rate1h", f"sum by (status) (rate({orders}[1h]))"),
        _record(
            "veza_business:order_completion_ratio:rate1h",
            f"""
            sum(rate({select(ORDERS, 'status="completed"')}[1h]))
            /
            sum(rate({select(ORDERS, 'status="created"')}[1h]))
            """,
        ),
        _record(
            "veza_business:revenue_cents:rate1h",
            f"""
            sum by (currency) (
              rate({revenue}[1h])
            )
            """,
        ),
        _record(
            "veza_business:refunds_cents:rate1h",
            f"""
            sum by (currency) (
              label_replace(
                rate({refunds}[1h]),
                "currency", "$1", "currency", "(.+)-refund"
              )
            )
            """,
        ),
        _record(
            "veza_business:net_revenue_cents:rate1h",
            """
            (veza_business:revenue_cents:rate1h or veza_business:refunds_cents:rate1h * 0)
            -
            (veza_business:refunds_cents:rate1h or veza_business:revenue_cents:rate1h * 0)
            """,
            comment=(
                "A currency with revenue but no refunds nets its revenue; one with refunds but"
                " no revenue in the hour nets minus its refunds."
            ),
        ),
    ]
    return rules


def _alerts(settings: Settings) -> list[str]:
    select = settings.selector
    created = select(ORDERS, 'status="created"')
    revenue = select(REVENUE, 'currency!~".*-refund"')
    spike = settings.login_failure_spike
    completion = settings.order_completion_low
    payments = settings.payment_failures_high
    stalled = settings.revenue_stalled
    deletions = settings.account_deletions_stopped
    absent = settings.metrics_absent
    return [
        _alert(
            settings,
            spike,
            expr=f"""
            veza_business:login_failure_ratio:rate5m > {number_text(spike.max_failure_ratio)}
            and on ()
            sum(veza_business:logins:rate5m) >= {number_text(spike.min_logins_per_second)}
            """,
            pending=spike.for_,
            severity="warning",
            summary=f"More than {percent_text(spike.max_failure_ratio)} of all logins are"
            " failing.",
            description=f"{_VALUE_PERCENT} of logins failed over the last 5 minutes, with at"
            f" least {number_text(spike.min_logins_per_second)} logins per second"
            " platform-wide.",
        ),
        _alert(
            settings,
            completion,
            expr=f"""
            veza_business:order_completion_ratio:rate1h < {number_text(completion.min_completion_ratio)}
            and on ()
            sum(increase({created}[1h])) >= {number_text(completion.min_orders_created)}
            """,  # noqa: E501
            pending=completion.for_,
            severity="warning",
            summary=f"Fewer than {percent_text(completion.min_completion_ratio)} of the orders"
            " created in the last hour completed.",
            description=f"Only {_VALUE_PERCENT} of orders created over the last hour reached"
            f" completed, with at least {number_text(completion.min_orders_created)} orders"
            " created.",
        ),
        _alert(
            settings,
            payments,
            expr=f"""
            sum(rate({select(ORDERS, 'status="failed"')}[30m]))
            /
            sum(rate({created}[30m]))
            > {number_text(payments.max_failed_ratio)}
            and on ()
            sum(increase({created}[30m])) >= {number_text(payments.min_orders_created)}
            """,
            pending=payments.for_,
            severity="warning",
            summary=f"More than {percent_text(payments.max_failed_ratio)} of the orders of the"
            " last 30 minutes failed payment.",
            description=f"Failed orders are {_VALUE_PERCENT} of orders created over the last"
            f" 30 minutes, with at least {number_text(payments.min_orders_created)} orders"
            " created.",
        ),
        _alert(
            settings,
            stalled,
            expr=f"""
            (
              sum(increase({revenue}[2h])) == 0
              or on ()
              sum(absent({revenue}))
            )
            and on ()
            sum(increase({created}[2h])) >= {number_text(stalled.min_orders_created)}
            """,
            pending=stalled.for_,
            severity="critical",
            summary="No revenue recorded for 2 hours although orders are being created.",
            description=f"At least {number_text(stalled.min_orders_created)} orders were"
            " created over the last 2 hours, but no revenue series increased (or none"
            " exists).",
            comment="sum() drops the labels that absent() copies from the = matchers of its"
            " selector, so that configured matchers add no label to an alert.",
        ),
        _alert(
            settings,
            deletions,
            expr=f"""
            sum(increase({select(DELETIONS)}[7d])) == 0
            and on ()
            sum(increase({select(LOGINS)}[7d])) >= {number_text(deletions.min_logins)}
            """,
            pending=deletions.for_,
            severity="warning",
            summary="No account has been deleted for 7 days while users keep logging in.",
            description="No hard delete or GDPR erasure in 7 days, with at least"
            f" {number_text(deletions.min_logins)} logins in the same period. The deletion"
            " endpoint may be broken.",
        ),
        _alert(
            settings,
            absent,
            expr=f"sum(absent({select(LOGINS)}))",
            pending=absent.for_,
            severity="warning",
            summary="No service exports veza_business_logins_total.",
            description="Prometheus has no veza_business_logins_total series at all: the"
            " business dashboards and every other veza_business alert are blind.",
        ),
        *_week_over_week_alerts(settings),
        *_error_budget_alerts(settings),
    ]


def _week_over_week_alerts(settings: Settings) -> list[str]:
    select = settings.selector
    created = select(ORDERS, 'status="created"')
    succeeded = select(LOGINS, 'outcome="success"')
    revenue = select(REVENUE, 'currency!~".*-refund"')
    completed = select(ORDERS, 'status="completed"')
    orders = settings.orders_dropped_week_over_week
    logins = settings.logins_dropped_week_over_week
    money = settings.revenue_dropped_week_over_week
    return [
        _alert(
            settings,
            orders,
            expr=f"""
            sum(increase({created}[1h]))
            < {number_text(orders.max_ratio)} * sum(increase({created}[1h] offset 1w))
            and on ()
            sum(increase({created}[1h] offset 1w)) >= {number_text(orders.min_orders_created_last_week)}
            """,  # noqa: E501
            pending=orders.for_,
            severity="warning",
            summary=f"Orders created in the last hour are under {percent_text(orders.max_ratio)}"
            " of the same hour last week.",
            description=f"{_VALUE} orders were created over the last hour, under"
            f" {percent_text(orders.max_ratio)} of the same hour one week earlier, which had"
            f" at least {number_text(orders.min_orders_created_last_week)}.",
        ),
        _alert(
            settings,
            logins,
            expr=f"""
            sum(increase({succeeded}[1h]))
            < {number_text(logins.max_ratio)} * sum(increase({succeeded}[1h] offset 1w))
            and on ()
            sum(increase({succeeded}[1h] offset 1w)) >= {number_text(logins.min_logins_last_week)}
            """,
            pending=logins.for_,
            severity="warning",
            summary="Successful logins in the last hour are under"
            f" {percent_text(logins.max_ratio)} of the same hour last week.",
            description=f"{_VALUE} logins succeeded over the last hour, under"
            f" {percent_text(logins.max_ratio)} of the same hour one week earlier, which had"
            f" at least {number_text(logins.min_logins_last_week)}.",
        ),
        _alert(
            settings,
            money,
            expr=f"""
            sum by (currency) (increase({revenue}[1h]))
            < {number_text(money.max_ratio)} * sum by (currency) (increase({revenue}[1h] offset 1w))
            and on ()
            sum(increase({completed}[1h] offset 1w)) >= {number_text(money.min_orders_completed_last_week)}
            """,  # noqa: E501
            pending=money.for_,
            severity="warning",
            summary="Revenue in {{ $labels.currency }} over the last hour is under"
            f" {percent_text(money.max_ratio)} of the same hour last week.",
            description=f"{_VALUE} minor units of {{{{ $labels.currency }}}} over the last"
            f" hour, under {percent_text(money.max_ratio)} of the same hour one week earlier,"
            f" when at least {number_text(money.min_orders_completed_last_week)} orders"
            " completed platform-wide.",
        ),
    ]


def _error_budget_alerts(settings: Settings) -> list[str]:
    burn = settings.login_error_budget_burn
    slo = number_text(settings.login_slo_target)
    budget = percent_text(1 - settings.login_slo_target)

    def over(rate: float, long: str, short: str) -> str:
        threshold = f"{number_text(rate)} * (1 - {slo})"
        return f"""\
(
  veza_business:login_error_ratio:rate{long} > {threshold}
  and
  veza_business:login_error_ratio:rate{short} > {threshold}
)"""

    def summary(slowest: float) -> str:
        return (
            "Logins fail with failure_other fast enough to spend the 30-day error budget"
            f" within {30 / slowest:.3g} days."
        )

    def description(fast: float, slow: float, windows: tuple[str, str, str, str]) -> str:
        def ratio(rate: float) -> str:
            return percent_text(rate * (1 - settings.login_slo_target))

        return (
            f"{_VALUE_PERCENT} of logins ended in failure_other. The alert fires above"
            f" {ratio(fast)} (burn rate {number_text(fast)} on the {budget} error budget) over"
            f" both the last {windows[0]} and {windows[1]}, or above {ratio(slow)} (burn rate"
            f" {number_text(slow)}) over both the last {windows[2]} and {windows[3]}. The SLO"
            f" is {percent_text(settings.login_slo_target)} of logins over 30 days."
        )

    return [
        _alert(
            settings,
            burn,
            expr=over(burn.critical_burn_rate_1h, "1h", "5m")
            + "\nor\n"
            + over(burn.critical_burn_rate_6h, "6h", "30m"),
            pending=burn.critical_for,
            severity="critical",
            summary=summary(min(burn.critical_burn_rate_1h, burn.critical_burn_rate_6h)),
            description=description(
                burn.critical_burn_rate_1h,
                burn.critical_burn_rate_6h,
                ("hour", "5 minutes", "6 hours", "30 minutes"),
            ),
        ),
        _alert(
            settings,
            burn,
            expr=over(burn.warning_burn_rate_1d, "1d", "2h")
            + "\nor\n"
            + over(burn.warning_burn_rate_3d, "3d", "6h"),
            pending=burn.warning_for,
            severity="warning",
            summary=summary(min(burn.warning_burn_rate_1d, burn.warning_burn_rate_3d)),
            description=description(
                burn.warning_burn_rate_1d,
                burn.warning_burn_rate_3d,
                ("day", "2 hours", "3 days", "6 hours"),
            ),
        ),
    ]


def _groups(settings: Settings) -> str:
    return "\n".join(
        [
            "groups:",
            "  - name: veza_business",
            "    # Rules of a group run in order, so each alert below sees the recording rules",
            "    # computed in the same evaluation.",
            "    rules:",
            "\n\n".join([*_recording_rules(settings), *_alerts(settings)]),
        ]
    )


def render_rules(settings: Settings) -> str:
    """Return the rule file that Prometheus loads through ``rule_files``.

    Args:
        settings: The thresholds, durations, matchers and runbook base URL to use.
    """
    return f"{_HEADER}{_groups(settings)}\n"


def render_prometheus_rule(settings: Settings) -> str:
    """Return the rules as a ``monitoring.coreos.com/v1`` PrometheusRule manifest.

    Args:
        settings: The thresholds, durations, matchers and runbook base URL to use.
    """
    return (
        "\n".join(
            [
                _HEADER.rstrip("\n"),
                "apiVersion: monitoring.coreos.com/v1",
                "kind: PrometheusRule",
                "metadata:",
                "  name: veza-business-metrics",
                "  labels:",
                "    app.kubernetes.io/name: veza-business-metrics",
                "spec:",
                textwrap.indent(_groups(settings), "  ", lambda line: bool(line.strip())),
            ]
        )
        + "\n"
    )
