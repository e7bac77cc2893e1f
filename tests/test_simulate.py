"""Tests for examples/simulate.py: the demo's traffic against the shipped alerts, with promtool.

The traffic is the simulator's own: its rounds, from its seed, go through the example
shop's handlers onto a registry of their own, which is read every STEP_SECONDS of
simulated time at the simulator's pace. promtool then evaluates the rules over those
series.
"""

from __future__ import annotations

import math
import sys
import time
import types
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

import shop
import simulate
import veza_business_metrics
from helpers import EXAMPLES, business_series, promtool_ok
from veza_business_metrics import BusinessMetrics
from veza_business_metrics.__main__ import main

if TYPE_CHECKING:
    from pathlib import Path

STEP_SECONDS = 15
ROUNDS_PER_STEP = round(STEP_SECONDS / simulate.PAUSE)
# The rules that `dev.py demo --scenario` loads, with short `for` durations.
INCIDENTS_CONFIG = EXAMPLES / "incidents.toml"
# The rules and the shop's handlers are the same on every Python and prometheus-client.
pytestmark = pytest.mark.once


def play(mix: simulate.Mix, steps: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Play ``steps`` steps of ``mix`` through the shop; return promtool's input series.

    Each series maps to its values after every step, ``_`` before it exists.
    """
    registry = CollectorRegistry()
    recorder = BusinessMetrics(registry)
    names = [name for name in dir(recorder) if name.startswith("record_")]
    business = types.SimpleNamespace(
        **{
            **{
                name: getattr(veza_business_metrics, name)
                for name in veza_business_metrics.__all__
            },
            **{name: getattr(recorder, name) for name in names},
        }
    )
    monkeypatch.setattr(shop, "business", business)
    traffic = simulate.rounds(mix, simulate.seeded())
    history: list[dict[str, float]] = []
    for step in range(steps + 1):
        for requests in (next(traffic) for _ in range(ROUNDS_PER_STEP if step else 0)):
            for request in requests:
                dispatch(request)
        history.append(
            {
                name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}": value
                for (name, labels), value in business_series(registry).items()
            }
        )
    every = sorted({series for values in history for series in values})
    return {
        series: " ".join(str(values[series]) if series in values else "_" for values in history)
        for series in every
    }


def dispatch(request: simulate.Request) -> None:
    """Answer ``request`` with the example shop's handler for its route."""
    if request.path == "/login":
        shop.login(request.body)
    elif request.path == "/orders":
        shop.create_order(request.body)
    elif request.path.endswith("/complete"):
        shop.complete_order("o-1", request.body)
    elif request.path.endswith("/refund"):
        shop.refund_order("o-1", request.body)
    elif request.path.endswith("/fail"):
        shop.fail_order("o-1")
    else:
        assert (request.method, request.path) == ("DELETE", "/account")
        shop.delete_account()


def unit_test(rules: Path, series: dict[str, str], minutes: int, checks: list[Any]) -> str:
    """Return a promtool unit test file over ``series`` with ``checks`` at ``minutes``."""
    return yaml.safe_dump(
        {
            "rule_files": [str(rules)],
            "evaluation_interval": f"{STEP_SECONDS}s",
            "tests": [
                {
                    "interval": f"{STEP_SECONDS}s",
                    "input_series": [
                        {"series": name.replace("{", '{instance="demo:8000", ', 1), "values": v}
                        for name, v in series.items()
                    ],
                    "promql_expr_test": [
                        {"expr": expr, "eval_time": f"{minutes}m", "exp_samples": samples}
                        for expr, samples in checks
                    ],
                }
            ],
        },
        width=math.inf,
    )


def alert_labels(rules: Path, alert: str) -> str:
    """Return the labels of the ALERTS series of the firing ``alert``, in promtool's form."""
    (labels,) = {
        tuple(sorted(rule["labels"].items()))
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == alert
    }
    pairs = [("alertname", alert), ("alertstate", "firing"), *labels]
    return "{" + ", ".join(f'{name}="{value}"' for name, value in sorted(pairs)) + "}"


def test_no_shipped_alert_fires_or_waits_under_the_default_traffic(
    promtool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six hours of the default traffic leave every shipped alert inactive, not even pending."""
    rules = tmp_path / "rules.yml"
    main(["rules", "--output", str(rules)])
    minutes = 6 * 60
    series = play(simulate.HEALTHY, minutes * 60 // STEP_SECONDS, monkeypatch)
    assert 'veza_business_logins_total{outcome="failure_other"}' in series
    checks: list[tuple[str, list[Any]]] = [(f"max_over_time(ALERTS[{minutes}m])", [])]
    (tmp_path / "healthy_test.yml").write_text(unit_test(rules, series, minutes, checks))
    promtool_ok(promtool, "test", "rules", "healthy_test.yml", cwd=tmp_path)


@pytest.mark.parametrize("name", simulate.SCENARIOS)
def test_each_scenario_fires_its_alert_and_no_other(
    name: str, promtool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the demo's tuned rules, a scenario's alert goes pending, then fires, alone."""
    scenario = simulate.SCENARIOS[name]
    rules = tmp_path / "rules.yml"
    main(["rules", "--config", str(INCIDENTS_CONFIG), "--output", str(rules)])
    # Long enough for the other alerts to fire too, at their 10 or 15 minutes, if the
    # scenario's traffic met their conditions.
    minutes = 45
    series = play(scenario.mix, minutes * 60 // STEP_SECONDS, monkeypatch)
    window = f"[{minutes}m]"
    checks = [
        (
            f'max_over_time(ALERTS{{alertstate="firing"}}{window})',
            [{"labels": alert_labels(rules, scenario.alert), "value": 1}],
        ),
        (
            f'max_over_time(ALERTS{{alertname="{scenario.alert}", alertstate="pending"}}{window})',
            [
                {
                    "labels": alert_labels(rules, scenario.alert).replace("firing", "pending"),
                    "value": 1,
                }
            ],
        ),
    ]
    (tmp_path / "scenario_test.yml").write_text(unit_test(rules, series, minutes, checks))
    promtool_ok(promtool, "test", "rules", "scenario_test.yml", cwd=tmp_path)


def test_the_simulator_runs_past_the_hour_until_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --events, simulate.py plays on past 18,000 rounds, an hour, until Ctrl-C."""
    sent = []

    def send(method: str, url: str, body: object = None) -> object:
        sent.append((method, url, body))
        if len(sent) > 40_000:
            raise KeyboardInterrupt
        return {"id": "o-1"} if url.endswith("/orders") else None

    monkeypatch.setattr(simulate, "send", send)
    monkeypatch.setattr(time, "sleep", lambda _: None)
    monkeypatch.setattr(sys, "argv", ["simulate.py", "http://127.0.0.1:1"])
    simulate.main()
    logins = [url for _, url, _ in sent if url.endswith("/login")]
    assert len(logins) > 18_000
