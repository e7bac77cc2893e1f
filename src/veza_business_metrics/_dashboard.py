"""Render the Grafana dashboard, as JSON to import or as a ConfigMap for Grafana's sidecar."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

from veza_business_metrics._config import number_text, percent_text
from veza_business_metrics._rules import DELETIONS, LOGINS, ORDERS, REVENUE

if TYPE_CHECKING:
    from veza_business_metrics._config import Settings

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_CURRENCY_VALUES = "label_values(veza_business:revenue_cents:rate1h, currency)"
CONFIGMAP_KEY = "veza-business-kpis.json"
_EXEMPLARS_NOTE = (
    " The dots are trace exemplars, each one event linked to its trace, from the raw"
    " counter: recording rules keep none."
)


def _against_last_week(selector: str) -> str:
    return f"{selector} / {selector} offset 1w"


def _panel(  # noqa: PLR0913
    number: int,
    title: str,
    *,
    description: str,
    position: tuple[int, int, int],
    defaults: dict[str, Any],
    targets: list[tuple[str, str]],
    exemplars: str = "",
) -> dict[str, Any]:
    x, y, width = position
    queries = [(expr, legend, False) for expr, legend in targets]
    if exemplars:
        # Grafana asks Prometheus for the exemplars of every series that a query selects,
        # and recorded series have none: this query selects the raw counter's series, and
        # plots nothing, since a counter is never below 0.
        queries.append((f"{exemplars} < 0", "exemplars", True))
        description += _EXEMPLARS_NOTE
    return {
        "id": number,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "datasource": _DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "refId": chr(ord("A") + index),
                "range": True,
                "exemplar": exemplar,
            }
            for index, (expr, legend, exemplar) in enumerate(queries)
        ],
    }


def _panels(settings: Settings) -> list[dict[str, Any]]:
    spike = settings.login_failure_spike
    completion = settings.order_completion_low
    orders = settings.orders_dropped_week_over_week
    logins = settings.logins_dropped_week_over_week
    revenue = settings.revenue_dropped_week_over_week
    slo = number_text(settings.login_slo_target)
    ratio = {"unit": "percentunit", "min": 0}
    per_hour = '{currency=~"$currency"} * 3600'
    failed_logins = settings.selector(LOGINS, 'outcome=~"failure_.*"')
    return [
        _panel(
            1,
            "Logins by outcome",
            description="Login attempts per second, platform-wide, by outcome"
            " (veza_business:logins:rate5m).",
            position=(0, 0, 12),
            defaults={"unit": "reqps"},
            targets=[("veza_business:logins:rate5m", "{{outcome}}")],
            exemplars=failed_logins,
        ),
        _panel(
            2,
            "Login failure ratio",
            description="Share of all logins that failed over 5 minutes."
            " VezaBusinessLoginFailureSpike fires above"
            f" {percent_text(spike.max_failure_ratio)} at"
            f" {number_text(spike.min_logins_per_second)} logins/s or more.",
            position=(12, 0, 12),
            defaults={**ratio, "max": 1},
            targets=[("veza_business:login_failure_ratio:rate5m", "failure ratio")],
            exemplars=failed_logins,
        ),
        _panel(
            3,
            "Order events by status",
            description="Order status transitions per second over 1 hour, platform-wide"
            " (veza_business:orders:rate1h).",
            position=(0, 8, 12),
            defaults={"unit": "reqps"},
            targets=[("veza_business:orders:rate1h", "{{status}}")],
            exemplars=settings.selector(ORDERS),
        ),
        _panel(
            4,
            "Order completion ratio",
            description="Completed over created orders, over 1 hour."
            " VezaBusinessOrderCompletionLow fires below"
            f" {percent_text(completion.min_completion_ratio)} with"
            f" {number_text(completion.min_orders_created)} orders or more.",
            position=(12, 8, 12),
            defaults=ratio,
            targets=[("veza_business:order_completion_ratio:rate1h", "completed / created")],
        ),
        _panel(
            5,
            "Revenue and net revenue by currency",
            description="Minor currency units (cents) per hour, averaged over 1 hour. Net revenue"
            " subtracts refunds.",
            position=(0, 16, 12),
            defaults={"unit": "short"},
            targets=[
                (f"veza_business:revenue_cents:rate1h{per_hour}", "{{currency}} revenue"),
                (f"veza_business:net_revenue_cents:rate1h{per_hour}", "{{currency}} net"),
            ],
            exemplars=settings.selector(REVENUE, 'currency=~"$currency"', 'currency!~".*-refund"'),
        ),
        _panel(
            6,
            "Refunds by currency",
            description="Refunded minor currency units (cents) per hour, averaged over 1 hour.",
            position=(12, 16, 12),
            defaults={"unit": "short"},
            targets=[(f"veza_business:refunds_cents:rate1h{per_hour}", "{{currency}} refunds")],
        ),
        _panel(
            7,
            "Account deletions per day",
            description="Hard deletes and GDPR erasures over the last 24 hours."
            " VezaBusinessAccountDeletionsStopped fires after 7 days at zero while users"
            " log in.",
            position=(0, 24, 24),
            defaults={"unit": "short"},
            targets=[
                (
                    f"sum(increase({settings.selector(DELETIONS)}[1d]))",
                    "deletions in 24h",
                )
            ],
        ),
        _panel(
            8,
            "Last hour against the same hour a week earlier",
            description="Orders created, successful logins and revenue per currency over the"
            " last hour, as a share of the same hour one week earlier. The week-over-week"
            f" alerts fire below {percent_text(orders.max_ratio)} for orders,"
            f" {percent_text(logins.max_ratio)} for logins and"
            f" {percent_text(revenue.max_ratio)} for revenue, once last week's hour had"
            " enough traffic.",
            position=(0, 32, 12),
            defaults=ratio,
            targets=[
                (
                    _against_last_week('veza_business:orders:rate1h{status="created"}'),
                    "orders created",
                ),
                (
                    _against_last_week('veza_business:logins:rate1h{outcome="success"}'),
                    "successful logins",
                ),
                (
                    _against_last_week(
                        'veza_business:revenue_cents:rate1h{currency=~"$currency"}'
                    ),
                    "{{currency}} revenue",
                ),
            ],
        ),
        _panel(
            9,
            "Login error budget remaining",
            description="Share of the 30-day error budget of the"
            f" {percent_text(settings.login_slo_target)} login SLO that is left: logins that"
            " ended in failure_other over the last 30 days, against the"
            f" {percent_text(1 - settings.login_slo_target)} they may take. Below 0 the SLO"
            " is missed. VezaBusinessLoginErrorBudgetBurn fires when it falls too fast.",
            position=(12, 32, 12),
            defaults={"unit": "percentunit", "max": 1},
            targets=[
                (f"1 - veza_business:login_error_ratio:rate30d / (1 - {slo})", "budget left")
            ],
        ),
    ]


def dashboard(settings: Settings) -> dict[str, Any]:
    """Return the Grafana dashboard as data.

    Args:
        settings: The thresholds shown in the panel descriptions, the SLO and the matchers.
    """
    currency_query = {"query": _CURRENCY_VALUES, "refId": "currency"}
    return {
        "uid": "veza-business-kpis",
        "title": "Veza business KPIs",
        "description": "Logins, orders, revenue and account deletions from the"
        " veza_business_* counters and their recording rules.",
        "tags": ["veza", "business"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                {
                    "name": "currency",
                    "label": "Currency",
                    "type": "query",
                    "datasource": _DATASOURCE,
                    "definition": _CURRENCY_VALUES,
                    "query": currency_query,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": _panels(settings),
    }


def render_dashboard(settings: Settings) -> str:
    """Return the dashboard JSON to import in Grafana.

    Args:
        settings: The thresholds shown in the panel descriptions, the SLO and the matchers.
    """
    return json.dumps(dashboard(settings), indent=2) + "\n"


def render_configmap(settings: Settings) -> str:
    """Return a ConfigMap that Grafana's dashboard sidecar loads (``grafana_dashboard: "1"``).

    Args:
        settings: The thresholds shown in the panel descriptions, the SLO and the matchers.
    """
    # json.dumps writes ASCII only, so the JSON is safe verbatim in a YAML literal block.
    return "\n".join(
        [
            "apiVersion: v1",
            "kind: ConfigMap",
            "metadata:",
            "  name: veza-business-dashboard",
            "  labels:",
            '    grafana_dashboard: "1"',
            "data:",
            f"  {CONFIGMAP_KEY}: |",
            textwrap.indent(render_dashboard(settings), "    "),
        ]
    )
