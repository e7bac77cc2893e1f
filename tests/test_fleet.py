"""End to end: the Go backend and the Python examples side by side under one Prometheus.

The Go service is this module's own code around the reference implementation, which is
read from the shared folder at test time and never copied into the repository. A second
Prometheus scrapes the demo's traffic simulator, for the check that every selector of the
shipped rules and dashboard finds series.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import promql_parser
import pytest
import yaml
from packaging.version import Version
from prometheus_client import CollectorRegistry

from helpers import (
    EXAMPLES,
    EXPECTED_AFTER_ROUTES,
    LOGIN_CASES,
    drive_every_route,
    exposing,
    free_port,
    http,
    missing,
    poll,
    prometheus_series,
    require_shared_file,
    require_tool,
    running_prometheus,
    serving,
    vector_selectors,
)
from veza_business_metrics import BusinessMetrics
from veza_business_metrics.__main__ import main
from veza_business_metrics._config import Settings, matcher_text, settings_from_mapping
from veza_business_metrics._dashboard import dashboard
from veza_business_metrics._rules import render_rules

if TYPE_CHECKING:
    from collections.abc import Iterator

    from helpers import Prometheus, Series

# Debian's golang-github-prometheus-client-golang-dev, for GOPATH mode without network.
GOCODE = Path("/usr/share/gocode")
GO_MAIN = """\
package main

import (
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"vezafleet/monitoring"
)

// Each route records one event through the reference implementation.
func main() {
	http.Handle("/metrics", promhttp.Handler())
	http.HandleFunc("/login/", func(w http.ResponseWriter, r *http.Request) {
		monitoring.RecordLogin(strings.TrimPrefix(r.URL.Path, "/login/"))
	})
	http.HandleFunc("/orders/", func(w http.ResponseWriter, r *http.Request) {
		monitoring.RecordOrderEvent(strings.TrimPrefix(r.URL.Path, "/orders/"))
	})
	http.HandleFunc("/revenue/", func(w http.ResponseWriter, r *http.Request) {
		currency, cents, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/revenue/"), "/")
		amount, err := strconv.ParseInt(cents, 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		monitoring.RecordRevenue(amount, currency)
	})
	http.HandleFunc("/account-deletion", func(w http.ResponseWriter, r *http.Request) {
		monitoring.RecordAccountDeletion()
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		os.Stderr.WriteString(err.Error() + "\\n")
		os.Exit(1)
	}
}
"""
# The events of drive_every_route(), as the Go service records them. A refund is revenue
# on the `<CUR>-refund` series plus a refunded order, as record_refund() does it.
GO_EVENTS = [
    *(f"login/{outcome}" for _, _, outcome in LOGIN_CASES),
    *["orders/created"] * 3,
    "revenue/EUR/1999",
    "orders/completed",
    "revenue/USD/500",
    "orders/completed",
    "revenue/USD-refund/500",
    "orders/refunded",
    "orders/failed",
    "account-deletion",
]
# Go creates a labelled series at its first event, so Prometheus sees its first value
# already counted, and rate() cannot count that step. The sequence runs twice: the
# second time, every series of every instance exists before its events.
ROUNDS = 2
EXPECTED: Series = {key: ROUNDS * value for key, value in EXPECTED_AFTER_ROUTES.items()}
FAMILIES = ["logins", "orders", "revenue_cents", "account_deletions"]


@dataclasses.dataclass(frozen=True)
class Fleet:
    """The Go and Python services under one Prometheus, and what it saw of them."""

    prometheus: Prometheus
    instances: dict[str, str]  # the instance label of go, fastapi and gunicorn
    settled_at: float  # a time when Prometheus held every final value
    evaluated_at: float  # a rule evaluation after scraping stopped, so on settled data
    metadata: dict[str, Any]
    target_metadata: list[dict[str, Any]]
    expositions: dict[str, str]  # the text format that go and fastapi serve


def exposition(address: str) -> str:
    """Return the Prometheus text format served at ``address``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        text: str = response.read().decode()
        return text


def shipped_exprs() -> list[str]:
    """Return every expression of the default rules and dashboard, variables set to all."""
    rule_exprs = [
        rule["expr"]
        for group in yaml.safe_load(render_rules(Settings()))["groups"]
        for rule in group["rules"]
    ]
    panel_exprs = [
        target["expr"].replace("$currency", ".*")
        for panel in dashboard(Settings())["panels"]
        for target in panel["targets"]
    ]
    return rule_exprs + panel_exprs


def recording_rules(settings: Settings) -> dict[str, str]:
    """Return the expression of every recording rule, by the series it records."""
    return {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(render_rules(settings))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the Go service around the reference, in GOPATH mode and without network."""
    reference = require_shared_file("reference/business.go")
    go = require_tool("go")
    if not (GOCODE / "src/github.com/prometheus/client_golang").is_dir():
        missing(f"client_golang is not in {GOCODE}", ".ci/run installs it")
    gopath = tmp_path_factory.mktemp("gopath")
    package = gopath / "src" / "vezafleet"
    (package / "monitoring").mkdir(parents=True)
    shutil.copy(reference, package / "monitoring" / "business.go")
    (package / "main.go").write_text(GO_MAIN)
    binary = gopath / "vezafleet"
    offline = {
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{GOCODE}",
        "GOFLAGS": "",
        "GOPROXY": "off",
        # The net package would need a C compiler otherwise.
        "CGO_ENABLED": "0",
    }
    # GOCACHE stays Go's default, so that builds after the first take about a second.
    built = subprocess.run(
        [go, "build", "-o", str(binary), "vezafleet"],
        cwd=package,
        env={**os.environ, **offline},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Serve the FastAPI demo with simulated traffic, scraped by a Prometheus of its own."""
    directory = tmp_path_factory.mktemp("demo")
    rules = directory / "rules.yml"
    main(["rules", "--output", str(rules)])
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [sys.executable, str(EXAMPLES / "fastapi_app.py"), f"--port={port}"]
    simulator = [sys.executable, str(EXAMPLES / "simulate.py"), f"http://{address}"]
    with (
        serving(command, f"http://{address}/metrics", EXAMPLES, directory / "log"),
        subprocess.Popen(simulator) as traffic,
        running_prometheus(directory, rules, {"demo": [address]}) as prometheus,
    ):
        try:
            yield prometheus
        finally:
            traffic.terminate()


def drive_round(go: str, pythons: list[str]) -> None:
    """Send the event sequence once to the Go service and to each Python app."""
    for address in pythons:
        drive_every_route(f"http://{address}")
    for event in GO_EVENTS:
        assert http("POST", f"http://{go}/{event}") == (200, None), event


def settle(prometheus: Prometheus, expected: dict[str, Series]) -> float:
    """Wait until Prometheus holds the ``expected`` series; return a time when it did."""

    def seen() -> tuple[float, dict[str, Series]]:
        moment = time.time()
        return moment, prometheus_series(prometheus, moment)

    moment, series = poll(seen, lambda now: now[1] == expected)
    assert series == expected
    return moment


def stop_scraping(prometheus: Prometheus) -> float:
    """Remove every target, then return the time of a rule evaluation made after that.

    With no sample arriving any more, that evaluation read exactly the data that a query
    at its timestamp reads, so the two can be compared exactly.
    """
    prometheus.rescrape({})
    assert poll(lambda: prometheus.api("targets")["activeTargets"], lambda now: not now) == []
    stopped_at = time.time()

    def last_evaluation() -> float:
        samples = prometheus.query("timestamp(veza_business:logins:rate5m)")
        return max((float(sample["value"][1]) for sample in samples), default=0.0)

    evaluated_at = poll(last_evaluation, lambda moment: moment > stopped_at + 1)
    assert evaluated_at > stopped_at + 1
    return evaluated_at


@pytest.fixture(scope="module")
def fleet(
    demo: Prometheus,  # noqa: ARG001  # started first, so that its traffic builds up meanwhile
    go_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """Run Go, FastAPI and gunicorn with the same events under one Prometheus, then freeze it."""
    gunicorn = require_tool("gunicorn")
    directory = tmp_path_factory.mktemp("fleet")
    rules = directory / "rules.yml"
    main(["rules", "--output", str(rules)])
    ports = {name: free_port() for name in ["go", "fastapi", "gunicorn"]}
    instances = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    gunicorn_config = str(EXAMPLES / "gunicorn" / "gunicorn.conf.py")
    (directory / "multiprocess").mkdir()
    commands = {
        "go": ([str(go_binary), instances["go"]], {}),
        "fastapi": (
            [sys.executable, str(EXAMPLES / "fastapi_app.py"), f"--port={ports['fastapi']}"],
            {},
        ),
        "gunicorn": (
            [gunicorn, "--no-control-socket", "--config", gunicorn_config, "app:app"],
            {
                "PROMETHEUS_MULTIPROC_DIR": str(directory / "multiprocess"),
                "SHOP_BIND": instances["gunicorn"],
                "SHOP_WORKERS": "2",
            },
        ),
    }
    with contextlib.ExitStack() as stack:
        for name, (command, env) in commands.items():
            url = f"http://{instances[name]}/metrics"
            stack.enter_context(serving(command, url, directory, directory / f"{name}.log", env))
        prometheus = stack.enter_context(
            running_prometheus(directory, rules, {"fleet": list(instances.values())})
        )
        for round_number in range(1, ROUNDS + 1):
            drive_round(instances["go"], [instances["fastapi"], instances["gunicorn"]])
            expected = {key: round_number * value for key, value in EXPECTED_AFTER_ROUTES.items()}
            settled_at = settle(prometheus, dict.fromkeys(instances.values(), expected))
        metadata = poll(
            lambda: prometheus.api("metadata"),
            lambda now: len([name for name in now if name.startswith("veza_business")]) == 8,
        )
        yield Fleet(
            prometheus=prometheus,
            instances=instances,
            settled_at=settled_at,
            metadata=metadata,
            target_metadata=prometheus.api("targets/metadata", match_target='{job="fleet"}'),
            expositions={name: exposition(instances[name]) for name in ["go", "fastapi"]},
            evaluated_at=stop_scraping(prometheus),
        )


def test_python_series_equal_the_go_series(fleet: Fleet) -> None:
    """Per instance, FastAPI's and gunicorn's series equal Go's: names, labels and values."""
    seen = prometheus_series(fleet.prometheus, fleet.settled_at)
    by_name = {name: seen[address] for name, address in fleet.instances.items()}
    assert by_name["fastapi"] == by_name["go"] == by_name["gunicorn"] == EXPECTED
    assert len(EXPECTED) == 14
    jobs = fleet.prometheus.query(
        'count by (job) ({__name__=~"veza_business_.*_total"})', fleet.settled_at
    )
    assert [(item["metric"], item["value"][1]) for item in jobs] == [({"job": "fleet"}, "42")]


def test_metadata_gives_the_same_help_and_type_from_both_languages(fleet: Fleet) -> None:
    """/api/v1/metadata has one HELP and TYPE per family, the same from Go and Python."""
    for family in FAMILIES:
        go_name, python_name = f"veza_business_{family}_total", f"veza_business_{family}"
        entries = fleet.metadata[go_name]
        assert len(entries) == 1
        assert entries[0]["type"] == "counter"
        assert entries[0]["help"]
        # Prometheus asks for OpenMetrics, which prometheus_client serves and names the
        # family without _total; Go's client serves the text format, which keeps it.
        assert fleet.metadata[python_name] == entries
    names = {address: name for name, address in fleet.instances.items()}
    reported = {
        (names[item["target"]["instance"]], item["metric"])
        for item in fleet.target_metadata
        if item["metric"].startswith("veza_business")
    }
    assert reported == {
        *(("go", f"veza_business_{family}_total") for family in FAMILIES),
        *(
            (python, f"veza_business_{family}")
            for python in ["fastapi", "gunicorn"]
            for family in FAMILIES
        ),
    }


def sample_values(samples: list[dict[str, Any]]) -> dict[frozenset[tuple[str, str]], float]:
    """Return the values of a query's samples by their labels, without the metric name."""
    return {
        frozenset(
            (name, value) for name, value in sample["metric"].items() if name != "__name__"
        ): (float(sample["value"][1]))
        for sample in samples
    }


def operands(expr: str) -> tuple[str, str]:
    """Return the two sides of a binary PromQL expression, as PromQL."""
    tree = promql_parser.parse(expr)
    assert isinstance(tree, promql_parser.BinaryExpr)
    return str(tree.lhs), str(tree.rhs)


def test_each_recording_rule_aggregates_all_three_instances(fleet: Fleet) -> None:
    """Each recording rule is the sum, or the ratio of sums, of Go's, FastAPI's and gunicorn's."""

    def query(expr: str) -> dict[frozenset[tuple[str, str]], float]:
        return sample_values(fleet.prometheus.query(expr, fleet.evaluated_at))

    # The same rules with an instance="..." matcher on every counter: one instance's share.
    shares = [
        recording_rules(settings_from_mapping({"matchers": [f'instance="{address}"']}))
        for address in fleet.instances.values()
    ]
    for record, expr in recording_rules(Settings()).items():
        tree = promql_parser.parse(expr)
        if isinstance(tree, promql_parser.AggregateExpr):
            parts = [query(share[record]) for share in shares]
            assert all(any(part.values()) for part in parts), record
            expected = {labels: sum(part[labels] for part in parts) for labels in parts[0]}
        elif isinstance(tree, promql_parser.BinaryExpr) and str(tree.op) == "/":
            sides = [operands(share[record]) for share in shares]
            numerator = sum(query(lhs)[frozenset()] for lhs, _ in sides)
            denominator = sum(query(rhs)[frozenset()] for _, rhs in sides)
            expected = {frozenset(): numerator / denominator}
        else:
            assert record == "veza_business:net_revenue_cents:rate1h"
            revenue = query("veza_business:revenue_cents:rate1h")
            refunds = query("veza_business:refunds_cents:rate1h")
            expected = {
                labels: revenue.get(labels, 0) - refunds.get(labels, 0)
                for labels in revenue.keys() | refunds.keys()
            }
        assert query(record) == pytest.approx(expected, rel=1e-9), record


def test_the_expositions_differ_only_in_form(fleet: Fleet) -> None:
    """Go writes 4 where Python writes 4.0, and only Python adds _created gauges."""
    go, fastapi = fleet.expositions["go"], fleet.expositions["fastapi"]
    assert 'veza_business_logins_total{outcome="success"} 4\n' in go
    assert 'veza_business_logins_total{outcome="success"} 4.0\n' in fastapi
    assert "veza_business_logins_created{" in fastapi
    assert "_created" not in go
    created = fleet.prometheus.query(
        'count by (instance) ({__name__=~"veza_business_.*_created"})', fleet.settled_at
    )
    # gunicorn's multiprocess collector does not write them either.
    assert [item["metric"]["instance"] for item in created] == [fleet.instances["fastapi"]]


def test_no_shipped_rule_or_panel_reads_the_differences() -> None:
    """Every selector names a *_total counter or a recorded series, never _created or metadata."""
    exprs = shipped_exprs()
    selectors = [selector for expr in exprs for selector in vector_selectors(expr)]
    assert len(exprs) == 27 + 12 + 4  # the rules, the panel queries, the exemplar queries
    for selector in selectors:
        name = selector.name or ""
        assert name.endswith("_total") or name.startswith("veza_business:"), name
        assert all(matcher.name != "__name__" for matcher in selector.matchers.matchers)


def existence_query(selector: promql_parser.VectorSelector) -> str:
    """Return the selector without range, offset or @, as pint's promql/series check does."""
    matchers = ", ".join(map(matcher_text, selector.matchers.matchers))
    return f"{selector.name}{{{matchers}}}" if matchers else str(selector.name)


def test_every_selector_returns_data_under_the_demo_traffic(demo: Prometheus) -> None:
    """Under simulated traffic, every selector finds series and every recording rule a value."""
    wanted = {
        existence_query(selector)
        for expr in shipped_exprs()
        for selector in vector_selectors(expr)
    } | set(recording_rules(Settings()))

    def without_data() -> list[str]:
        return [query for query in sorted(wanted) if not demo.query(f"count({query})")]

    assert poll(without_data, lambda empty: not empty, timeout=90) == []
    health = [
        (rule["name"], rule["health"])
        for group in demo.api("rules")["groups"]
        for rule in group["rules"]
    ]
    assert health == [(name, "ok") for name, _ in health]
    assert len(health) == 27


# prometheus_client wrote exponents of two digits and more with a leading 0 until 0.26.0.
GO_EXPONENTS_FROM = Version("0.26.0")


@contextlib.contextmanager
def serving_text(text: str) -> Iterator[str]:
    """Serve ``text`` as an exposition on 127.0.0.1 until the block ends; yield its address."""

    class Exposition(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_prometheus_reads_ten_billion_as_written_by_either_language(
    go_binary: Path, tmp_path: Path
) -> None:
    """Go writes 1e+10, prometheus_client before 0.26.0 1e+010, and Prometheus reads both."""
    amount = 10**10
    registry = CollectorRegistry()
    BusinessMetrics(registry).record_revenue(amount, "EUR")
    go = f"127.0.0.1:{free_port()}"
    line = 'veza_business_revenue_cents_total{currency="EUR"} '
    installed = Version(importlib.metadata.version("prometheus-client"))
    python_form = "1e+10" if installed >= GO_EXPONENTS_FROM else "1e+010"
    with (
        serving([str(go_binary), go], f"http://{go}/metrics", tmp_path, tmp_path / "go.log"),
        exposing(registry) as python_url,
        serving_text(f"# TYPE veza_business_revenue_cents_total counter\n{line}1e+010\n") as old,
    ):
        assert http("POST", f"http://{go}/revenue/EUR/{amount}") == (200, None)
        python = python_url.removeprefix("http://").removesuffix("/metrics")
        assert f"{line}1e+10\n" in exposition(go)
        assert f"{line}{python_form}\n" in exposition(python)
        rules = tmp_path / "rules.yml"
        rules.write_text("groups: []\n")
        targets = {"go": [go], "python": [python], "before-0.26": [old]}
        with running_prometheus(tmp_path, rules, targets) as prometheus:

            def revenue() -> dict[str, float]:
                found = prometheus.query('veza_business_revenue_cents_total{currency="EUR"}')
                return {item["metric"]["job"]: float(item["value"][1]) for item in found}

            assert poll(revenue, lambda now: len(now) == len(targets)) == dict.fromkeys(
                targets, 1e10
            )
