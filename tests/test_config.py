"""Tests for veza_business_metrics._config, the settings of the rules and dashboard."""

from __future__ import annotations

import dataclasses
import sys
import tomllib

import promql_parser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT, alert_sections, config_documents
from veza_business_metrics._config import (
    DEFAULT_RUNBOOK_BASE_URL,
    InvalidConfigError,
    Settings,
    config_text,
    load_settings,
    number_text,
    percent_text,
    promql_string,
    settings_from_mapping,
)

SPIKE = "VezaBusinessLoginFailureSpike"


def test_the_printed_defaults_load_back_as_the_defaults() -> None:
    """--print-config's text is valid TOML that loads as exactly the default settings."""
    text = config_text(Settings())
    assert load_settings(text) == Settings() == settings_from_mapping({})
    document = tomllib.loads(text)
    assert sorted(document) == sorted(
        [
            "runbook_base_url",
            "matchers",
            "login_slo_target",
            *alert_sections(Settings()),
        ]
    )


def test_the_default_runbook_address_is_the_documentation_address() -> None:
    """The default runbook base URL is where pyproject.toml says the documentation lives."""
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert f"{DEFAULT_RUNBOOK_BASE_URL}/" == urls["Documentation"]


def test_every_default_setting_is_explained_by_a_comment() -> None:
    """Each key of the printed defaults, and each alert table, follows a comment line."""
    lines = config_text(Settings()).splitlines()
    settings = [n for n, line in enumerate(lines) if line and not line.startswith("#")]
    assert len(settings) == 3 + 10 + 29  # top-level keys, alert tables, their keys
    assert all(lines[n - 1].startswith("# ") for n in settings)


def test_every_setting_can_be_changed() -> None:
    """A file that sets every key to another value changes every setting."""
    text = config_text(Settings())
    for old, new in [
        ('"10m"', '"11m"'),
        ('"15m"', '"16m"'),
        ('"1h"', '"2h"'),
        ('"2m"', '"3m"'),
        ("= 0.5\n", "= 0.4\n"),
        ("= 0.1\n", "= 0.2\n"),
        ("= 20\n", "= 21\n"),
        ("= 10\n", "= 11\n"),
        ("= 1000\n", "= 999\n"),
        ("= 100\n", "= 99\n"),
        ("= 0.25\n", "= 0.3\n"),
        ("= 0.995\n", "= 0.999\n"),
        ("= 14.4\n", "= 13\n"),
        ("= 6\n", "= 7\n"),
        ("= 3\n", "= 4\n"),
        ("= 1\n", "= 2\n"),
        ("matchers = []", "matchers = ['job=\"shop\"']"),
        ("https://docs.example.com/veza-business-metrics", "https://example.com/"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    changed, default = load_settings(text), Settings()
    for section, default_section in zip(
        [changed, *alert_sections(changed).values()],
        [default, *alert_sections(default).values()],
        strict=True,
    ):
        for field in dataclasses.fields(section):
            if "check" in field.metadata:
                assert getattr(section, field.name) != getattr(default_section, field.name)
    assert changed.runbook_base_url == "https://example.com"
    assert changed.matchers == ('job="shop"',)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_documents())
def test_every_valid_document_is_accepted_as_written(document: dict[str, object]) -> None:
    """Any document of valid values loads, and every value it sets is the one in use."""
    settings = settings_from_mapping(document)
    for key, value in document.items():
        if isinstance(value, dict):
            section = alert_sections(settings)[key]
            for name, setting in value.items():
                assert getattr(section, "for_" if name == "for" else name) == setting
        elif key != "matchers":
            assert getattr(settings, key) == (
                value.rstrip("/") if isinstance(value, str) else value
            )
    assert len(settings.matchers) == len(document.get("matchers", []))  # type: ignore[arg-type]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_documents())
def test_the_printed_config_of_any_settings_loads_back_as_them(
    document: dict[str, object],
) -> None:
    """The config file printed from any valid settings loads as exactly those settings."""
    loaded = settings_from_mapping(document)
    assert load_settings(config_text(loaded)) == loaded


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"runbook_url": "x"}, "unknown setting 'runbook_url'; the top level has"),
        ({SPIKE: {"max_ratio": 0.5}}, f"unknown setting '{SPIKE}.max_ratio'; {SPIKE} has for,"),
        ({"VezaBusinessNoSuchAlert": {}}, "unknown setting 'VezaBusinessNoSuchAlert'"),
        ({SPIKE: {"max_failure_ratio": 1.5}}, f"{SPIKE}.max_failure_ratio must be between 0"),
        ({SPIKE: {"max_failure_ratio": -0.1}}, "must be between 0 and 1, got -0.1"),
        ({SPIKE: {"min_logins_per_second": -1}}, "min_logins_per_second must be 0 or more"),
        ({SPIKE: {"min_logins_per_second": float("inf")}}, "must be a finite number, got inf"),
        ({SPIKE: {"min_logins_per_second": float("nan")}}, "must be a finite number, got nan"),
        ({SPIKE: {"min_logins_per_second": 10**400}}, "must be a finite number"),
        ({"login_slo_target": 1}, "login_slo_target must be above 0 and below 1"),
        ({"login_slo_target": 0}, "login_slo_target must be above 0 and below 1"),
        (
            {"VezaBusinessLoginErrorBudgetBurn": {"critical_burn_rate_1h": 0}},
            "VezaBusinessLoginErrorBudgetBurn.critical_burn_rate_1h must be above 0, got 0",
        ),
        ({SPIKE: {"for": "10"}}, f"{SPIKE}.for must be a Prometheus duration such as"),
        ({SPIKE: {"for": ""}}, "got ''"),
        ({SPIKE: {"for": "1.5h"}}, "got '1.5h'"),
        ({SPIKE: {"for": "10M"}}, "got '10M'"),
        ({SPIKE: {"for": "30m1h"}}, "got '30m1h'"),
        ({SPIKE: {"for": "293y"}}, f"{SPIKE}.for must be at most 292 years, got '293y'"),
        ({"runbook_base_url": "ftp://example.com"}, "must be an http(s) URL"),
        ({"runbook_base_url": "https://"}, "must be an http(s) URL"),
        ({"runbook_base_url": "https://example.com/?a=1"}, "without query or fragment"),
        ({"runbook_base_url": "https://example.com/a b"}, "got 'https://example.com/a b'"),
        ({"runbook_base_url": "https://example.com/{{x}}"}, "must be an http(s) URL"),
    ],
)
def test_a_bad_value_or_key_is_named_in_the_error(
    document: dict[str, object], message: str
) -> None:
    """An unknown key, or a value out of range, raises InvalidConfigError naming it."""
    with pytest.raises(InvalidConfigError) as raised:
        settings_from_mapping(document)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({SPIKE: {"max_failure_ratio": "0.5"}}, f"{SPIKE}.max_failure_ratio must be a number"),
        ({SPIKE: {"max_failure_ratio": True}}, "must be a number, got bool True"),
        ({SPIKE: {"for": 10}}, f"{SPIKE}.for must be a string such as '15m', got int 10"),
        ({SPIKE: 0.5}, f"{SPIKE} must be a table, got float 0.5"),
        ({"runbook_base_url": 1}, "runbook_base_url must be a string, got int 1"),
        ({"matchers": 'job="shop"'}, "matchers must be a list of strings"),
        ({"matchers": [1]}, "matchers must be a list of strings such as"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_in_a_type_error(
    document: dict[str, object], message: str
) -> None:
    """A value of the wrong TOML type raises TypeError naming the key and the type."""
    with pytest.raises(TypeError) as raised:
        settings_from_mapping(document)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ('job=~"shop|api"', 'job=~"shop|api"'),
        ("job = 'shop'", 'job="shop"'),
        ('env!="staging"', 'env!="staging"'),
        ('region!~"eu-.*"', 'region!~"eu-.*"'),
        ('team=""', 'team=""'),
        ('note="a \\"quoted\\" \\\\ word"', 'note="a \\"quoted\\" \\\\ word"'),
    ],
)
def test_matchers_are_parsed_and_written_back_as_promql(written: str, normalised: str) -> None:
    """Each matcher is parsed as PromQL and kept in one canonical spelling."""
    assert settings_from_mapping({"matchers": [written]}).matchers == (normalised,)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ('job=~"("', "matchers[1] is not a PromQL label matcher: 'job=~\"(\"' (illegal regex"),
        ("job", "matchers[1] is not a PromQL label matcher"),
        ('job="a", env="b"', "matchers[1] must be one label matcher"),
        ('job="a"} or vector(1) or up{job="b"', "matchers[1] must be one label matcher"),
        ('job="a"} offset 1h', "matchers[1] is not a PromQL label matcher"),
        ('job="a"} or {env="b"', "matchers[1] must be one label matcher"),
        ('job="a" or env="b"', "matchers[1] must be one label matcher"),
        ('__name__="up"', "matchers[1] must not match __name__"),
    ],
)
def test_an_invalid_matcher_is_named_in_the_error(written: str, message: str) -> None:
    """A matcher that is not exactly one valid PromQL label matcher is rejected by index."""
    with pytest.raises(InvalidConfigError) as raised:
        settings_from_mapping({"matchers": ['job="shop"', written]})
    assert message in str(raised.value)


def test_matchers_without_promql_parser_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without promql-parser installed, matchers fail with the extra that installs it."""
    monkeypatch.setitem(sys.modules, "promql_parser", None)
    with pytest.raises(InvalidConfigError, match=r"install veza-business-metrics\[rules\]"):
        settings_from_mapping({"matchers": ['job="shop"']})
    assert settings_from_mapping({}).matchers == ()


def test_text_that_is_not_toml_is_rejected_in_one_line() -> None:
    """A TOML syntax error is an InvalidConfigError that gives the line."""
    with pytest.raises(InvalidConfigError, match=r"^not valid TOML: .*\(at line 2, column 9\)$"):
        load_settings(f"[{SPIKE}]\nfor = 10m\n")


@given(st.text())
def test_promql_strings_read_back_as_the_same_text(value: str) -> None:
    """Any text written as a PromQL string parses back to itself, on one printable line."""
    quoted = promql_string(value)
    assert quoted.isprintable()
    selector = promql_parser.parse(f"up{{label={quoted}}}")
    assert isinstance(selector, promql_parser.VectorSelector)
    assert selector.matchers.matchers[0].value == value


def test_selectors_carry_the_rule_matchers_then_the_configured_ones() -> None:
    """A selector has the rule's own matchers first, then the configured ones."""
    tuned = settings_from_mapping({"matchers": ['job=~"shop|api"', 'env="prod"']})
    assert Settings().selector("up") == "up"
    assert Settings().selector("up", 'a="1"') == 'up{a="1"}'
    assert tuned.selector("up") == 'up{job=~"shop|api", env="prod"}'
    assert tuned.selector("up", 'a="1"') == 'up{a="1", job=~"shop|api", env="prod"}'


@pytest.mark.parametrize(
    ("value", "number", "percent"),
    [
        (20.0, "20", "2000%"),
        (0.5, "0.5", "50%"),
        (0.995, "0.995", "99.5%"),
        (1e20, "1e+20", "1e+22%"),
    ],
)
def test_numbers_read_as_people_write_them(value: float, number: str, percent: str) -> None:
    """Whole numbers lose their .0, fractions print as percentages."""
    assert (number_text(value), percent_text(value)) == (number, percent)


def test_the_docs_show_what_print_config_prints() -> None:
    """The config file reference in docs/alerting.md is the current --print-config output."""
    page = (ROOT / "docs" / "alerting.md").read_text()
    assert f"```toml\n{config_text(Settings())}```\n" in page
