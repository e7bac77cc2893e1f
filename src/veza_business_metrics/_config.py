"""The settings of the printed rules and dashboard: defaults, TOML loading and checks.

Every threshold, ``for`` and the SLO target lives in a frozen dataclass below, with its
default and the sentence that ``--print-config`` prints above it. A TOML table is named
after its alert (``[VezaBusinessLoginFailureSpike]``), so that the name in a notification
leads straight to the setting.
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
import tomllib
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import promql_parser

_T = TypeVar("_T")

DEFAULT_RUNBOOK_BASE_URL: Final = "https://docs.example.com/veza-business-metrics"
# The prefix that turns a section's class name into its TOML table and alert name.
ALERT_PREFIX: Final = "VezaBusiness"

# Prometheus's own duration syntax (prometheus/common model.ParseDuration).
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
# Prometheus keeps durations as Go time.Duration: int64 nanoseconds.
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
# A selector needs a matcher that does not match the empty string, which `job=""` alone
# is not; this one lets any matcher parse on its own.
_PROBE_MATCHER = '__veza_probe__="1"'
_LAST_FOUR_DIGIT_CODE_POINT = 0xFFFF
# RFC 3986's characters: this keeps spaces, quotes and Go template braces out of the URL.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


class InvalidConfigError(ValueError):
    """A setting is unknown, or its value cannot go into the rules."""


def _number(where: str, value: object) -> float:
    # bool is an int to Python, but `max_failure_ratio = true` is a mistake in TOML.
    if isinstance(value, bool) or not isinstance(value, int | float):
        message = f"{where} must be a number, got {type(value).__name__} {value!r}"
        raise TypeError(message)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        message = f"{where} must be a finite number, got {value!r}"
        raise InvalidConfigError(message)
    return number


def _fraction(where: str, value: object) -> float:
    number = _number(where, value)
    if not 0 <= number <= 1:
        message = f"{where} must be between 0 and 1, got {value!r}"
        raise InvalidConfigError(message)
    return number


def _slo_target(where: str, value: object) -> float:
    number = _number(where, value)
    if not 0 < number < 1:
        message = f"{where} must be above 0 and below 1 (0.995 is 99.5%), got {value!r}"
        raise InvalidConfigError(message)
    return number


def _non_negative(where: str, value: object) -> float:
    number = _number(where, value)
    if number < 0:
        message = f"{where} must be 0 or more, got {value!r}"
        raise InvalidConfigError(message)
    return number


def _positive(where: str, value: object) -> float:
    number = _number(where, value)
    if number <= 0:
        message = f"{where} must be above 0, got {value!r}"
        raise InvalidConfigError(message)
    return number


def _duration(where: str, value: object) -> str:
    if not isinstance(value, str):
        message = f"{where} must be a string such as '15m', got {type(value).__name__} {value!r}"
        raise TypeError(message)
    match = _DURATION.fullmatch(value)
    if match is None or not value:
        message = f"{where} must be a Prometheus duration such as '15m' or '1h30m', got {value!r}"
        raise InvalidConfigError(message)
    total = sum(
        int(amount) * unit
        for amount, unit in zip(match.groups(), _DURATION_UNITS_MS, strict=True)
        if amount
    )
    if total > _MAX_DURATION_MS:
        message = f"{where} must be at most 292 years, got {value!r}"
        raise InvalidConfigError(message)
    return value


def _url(where: str, value: object) -> str:
    if not isinstance(value, str):
        message = f"{where} must be a string, got {type(value).__name__} {value!r}"
        raise TypeError(message)
    parts = urllib.parse.urlsplit(value)
    if (
        parts.scheme not in {"http", "https"}
        or not parts.netloc
        or parts.query
        or parts.fragment
        or not _URL_CHARACTERS.fullmatch(value)
    ):
        message = f"{where} must be an http(s) URL without query or fragment, got {value!r}"
        raise InvalidConfigError(message)
    return value.rstrip("/")


def promql_string(value: str) -> str:
    """Return ``value`` as a PromQL double-quoted string that is also printable YAML."""
    escaped = []
    for char in value:
        if char in '\\"':
            escaped.append("\\" + char)
        elif char.isprintable():
            escaped.append(char)
        elif ord(char) <= _LAST_FOUR_DIGIT_CODE_POINT:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(f"\\U{ord(char):08x}")
    return '"' + "".join(escaped) + '"'


def _matcher(where: str, text: str) -> str:
    try:
        import promql_parser  # noqa: PLC0415
    except ImportError:
        message = (
            f"{where}: checking label matchers needs promql-parser;"
            " install veza-business-metrics[rules]"
        )
        raise InvalidConfigError(message) from None
    try:
        selector = promql_parser.parse(f"{{{_PROBE_MATCHER}, {text}}}")
    except ValueError as error:
        reason = " ".join(str(error).split())
        message = f"{where} is not a PromQL label matcher: {text!r} ({reason})"
        raise InvalidConfigError(message) from None
    # Two: the probe and this one. `a="1" or b="2"` leaves both in or_matchers instead.
    if (
        not isinstance(selector, promql_parser.VectorSelector)
        or len(selector.matchers.matchers) != 2  # noqa: PLR2004
    ):
        message = f"{where} must be one label matcher such as 'job=~\"shop|api\"', got {text!r}"
        raise InvalidConfigError(message)
    _, matcher = selector.matchers.matchers
    if matcher.name == "__name__":
        message = f"{where} must not match __name__, the rules choose the series: {text!r}"
        raise InvalidConfigError(message)
    return matcher_text(matcher)


def matcher_text(matcher: promql_parser.Matcher) -> str:
    """Return a matcher that promql-parser read, written back as PromQL."""
    import promql_parser  # noqa: PLC0415

    # MatchOp members can be compared but not hashed, so no dict here.
    operators = (
        (promql_parser.MatchOp.Equal, "="),
        (promql_parser.MatchOp.NotEqual, "!="),
        (promql_parser.MatchOp.Re, "=~"),
        (promql_parser.MatchOp.NotRe, "!~"),
    )
    operator = next(text for op, text in operators if matcher.op == op)
    return f"{matcher.name}{operator}{promql_string(matcher.value)}"


def _matchers(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        message = (
            f"{where} must be a list of strings such as ['job=~\"shop|api\"'],"
            f" got {type(value).__name__} {value!r}"
        )
        raise TypeError(message)
    return tuple(_matcher(f"{where}[{index}]", item) for index, item in enumerate(value))


def _setting(default: _T, check: Callable[[str, object], _T], doc: str) -> _T:
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


_FOR_DOC = "How long the condition must hold before the alert fires."


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoginFailureSpike:
    """Most logins fail: credential stuffing, or the auth service failing."""

    for_: str = _setting("10m", _duration, _FOR_DOC)
    max_failure_ratio: float = _setting(
        0.5, _fraction, "Fire above this share of failed logins over 5 minutes..."
    )
    min_logins_per_second: float = _setting(
        0.1, _non_negative, "...while at least this many logins per second are attempted."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrderCompletionLow:
    """Few of the orders created in the last hour completed."""

    for_: str = _setting("15m", _duration, _FOR_DOC)
    min_completion_ratio: float = _setting(
        0.5, _fraction, "Fire below this share of completed over created orders in 1 hour..."
    )
    min_orders_created: float = _setting(
        20.0, _non_negative, "...when at least this many orders were created in that hour."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PaymentFailuresHigh:
    """Many orders of the last 30 minutes failed payment."""

    for_: str = _setting("10m", _duration, _FOR_DOC)
    max_failed_ratio: float = _setting(
        0.25, _fraction, "Fire above this share of failed over created orders in 30 minutes..."
    )
    min_orders_created: float = _setting(
        10.0, _non_negative, "...when at least this many orders were created in those 30 minutes."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RevenueStalled:
    """No revenue for 2 hours although orders are being created."""

    for_: str = _setting("15m", _duration, _FOR_DOC)
    min_orders_created: float = _setting(
        10.0, _non_negative, "Fire only when at least this many orders were created in 2 hours."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccountDeletionsStopped:
    """No account deleted for 7 days while users keep logging in."""

    for_: str = _setting("1h", _duration, _FOR_DOC)
    min_logins: float = _setting(
        1000.0, _non_negative, "Fire only when at least this many logins happened in 7 days."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsAbsent:
    """No service exports veza_business_logins_total."""

    for_: str = _setting("10m", _duration, _FOR_DOC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrdersDroppedWeekOverWeek:
    """Orders created in the last hour fell against the same hour a week earlier."""

    for_: str = _setting("15m", _duration, _FOR_DOC)
    max_ratio: float = _setting(
        0.5, _fraction, "Fire when the last hour has less than this share of last week's hour..."
    )
    min_orders_created_last_week: float = _setting(
        20.0, _non_negative, "...and last week's hour had at least this many orders created."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoginsDroppedWeekOverWeek:
    """Successful logins in the last hour fell against the same hour a week earlier."""

    for_: str = _setting("15m", _duration, _FOR_DOC)
    max_ratio: float = _setting(
        0.5, _fraction, "Fire when the last hour has less than this share of last week's hour..."
    )
    min_logins_last_week: float = _setting(
        100.0, _non_negative, "...and last week's hour had at least this many successful logins."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RevenueDroppedWeekOverWeek:
    """A currency's revenue in the last hour fell against the same hour a week earlier."""

    for_: str = _setting("15m", _duration, _FOR_DOC)
    max_ratio: float = _setting(
        0.5, _fraction, "Fire when the last hour has less than this share of last week's hour..."
    )
    min_orders_completed_last_week: float = _setting(
        20.0,
        _non_negative,
        "...and last week's hour had at least this many orders completed, platform-wide.",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoginErrorBudgetBurn:
    """Logins fail with failure_other fast enough to spend the error budget early.

    The burn rates are multiples of the error budget (1 - login_slo_target) and follow
    the SRE workbook's multiwindow, multi-burn-rate alerts over a 30-day SLO.
    """

    critical_for: str = _setting("2m", _duration, "How long a fast burn lasts before it pages.")
    critical_burn_rate_1h: float = _setting(
        14.4, _positive, "Page above this burn rate over both 1 hour and 5 minutes..."
    )
    critical_burn_rate_6h: float = _setting(
        6.0, _positive, "...or above this one over both 6 hours and 30 minutes."
    )
    warning_for: str = _setting("15m", _duration, "How long a slow burn lasts before it warns.")
    warning_burn_rate_1d: float = _setting(
        3.0, _positive, "Warn above this burn rate over both 1 day and 2 hours..."
    )
    warning_burn_rate_3d: float = _setting(
        1.0, _positive, "...or above this one over both 3 days and 6 hours."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that ``--config FILE`` can change in the printed rules and dashboard."""

    runbook_base_url: str = _setting(
        DEFAULT_RUNBOOK_BASE_URL,
        _url,
        "Each alert's runbook_url is <runbook_base_url>/runbooks/<AlertName>.html. The"
        f" default, {DEFAULT_RUNBOOK_BASE_URL}, is a placeholder until the project has a"
        " public home: set it to where you serve these documentation pages.",
    )
    matchers: tuple[str, ...] = _setting(
        (),
        _matchers,
        "Label matchers added to every selector of a veza_business_* series in the rules"
        " and the dashboard, for example ['job=~\"shop|api\"', 'env=\"prod\"'].",
    )
    login_slo_target: float = _setting(
        0.995,
        _slo_target,
        "Share of logins that must not end in failure_other, over 30 days (0.995 is 99.5%).",
    )
    login_failure_spike: LoginFailureSpike = LoginFailureSpike()
    order_completion_low: OrderCompletionLow = OrderCompletionLow()
    payment_failures_high: PaymentFailuresHigh = PaymentFailuresHigh()
    revenue_stalled: RevenueStalled = RevenueStalled()
    account_deletions_stopped: AccountDeletionsStopped = AccountDeletionsStopped()
    metrics_absent: MetricsAbsent = MetricsAbsent()
    orders_dropped_week_over_week: OrdersDroppedWeekOverWeek = OrdersDroppedWeekOverWeek()
    logins_dropped_week_over_week: LoginsDroppedWeekOverWeek = LoginsDroppedWeekOverWeek()
    revenue_dropped_week_over_week: RevenueDroppedWeekOverWeek = RevenueDroppedWeekOverWeek()
    login_error_budget_burn: LoginErrorBudgetBurn = LoginErrorBudgetBurn()

    def selector(self, name: str, *matchers: str) -> str:
        """Return a selector of the series ``name`` with ``matchers`` and the configured ones.

        Args:
            name: A metric name.
            matchers: The label matchers that the rule itself needs, in PromQL syntax.
        """
        every = [*matchers, *self.matchers]
        return f"{name}{{{', '.join(every)}}}" if every else name


def _key(field: dataclasses.Field[Any]) -> str:
    """Return the TOML key of a setting or the TOML table of a section."""
    if "check" in field.metadata:
        return field.name.rstrip("_")
    return ALERT_PREFIX + type(field.default).__name__


def _build(kind: type[_T], table: Mapping[str, object], prefix: str) -> _T:
    fields = {_key(field): field for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    for key, value in table.items():
        where = f"{prefix}{key}"
        if key not in fields:
            scope = prefix.rstrip(".") or "the top level"
            message = f"unknown setting {where!r}; {scope} has {', '.join(fields)}"
            raise InvalidConfigError(message)
        field = fields[key]
        if "check" in field.metadata:
            values[field.name] = field.metadata["check"](where, value)
        elif isinstance(value, dict):
            values[field.name] = _build(type(field.default), value, f"{where}.")
        else:
            message = f"{where} must be a table, got {type(value).__name__} {value!r}"
            raise TypeError(message)
    return kind(**values)


def settings_from_mapping(document: Mapping[str, object]) -> Settings:
    """Return the settings that a parsed config file holds, checking every key and value.

    Args:
        document: The config file as ``tomllib`` parses it.

    Raises:
        InvalidConfigError: If a key is unknown or a value is out of range or malformed.
        TypeError: If a value has the wrong type.
    """
    return _build(Settings, document, "")


def load_settings(text: str) -> Settings:
    """Return the settings that the TOML ``text`` of a config file holds.

    Args:
        text: The config file's content.

    Raises:
        InvalidConfigError: If the text is not TOML, a key is unknown or a value is bad.
        TypeError: If a value has the wrong type.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = f"not valid TOML: {error}"
        raise InvalidConfigError(message) from None
    return settings_from_mapping(document)


def number_text(value: float) -> str:
    """Return ``value`` as PromQL and people read it: ``20`` rather than ``20.0``."""
    value = float(value)
    # Beyond 2**53 a float's integer digits are not all its own; repr() says 1e+16.
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def percent_text(value: float) -> str:
    """Return the fraction ``value`` as a percentage, such as ``99.5%``."""
    return f"{value * 100:.6g}%"


def _toml_value(value: float | str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, float | int):
        return number_text(float(value))
    # TOML's basic strings escape as PromQL's do; JSON's surrogate pairs are not TOML.
    return promql_string(value)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=89, initial_indent="# ", subsequent_indent="# ")


def _table_lines(section: object) -> list[str]:
    lines = []
    for field in dataclasses.fields(section):  # type: ignore[arg-type]
        if "check" in field.metadata:
            lines += _comment(field.metadata["doc"])
            lines.append(f"{_key(field)} = {_toml_value(getattr(section, field.name))}")
    return lines


def config_text(settings: Settings) -> str:
    """Return a config file that sets every setting to its value in ``settings``, commented.

    Args:
        settings: The values to write, such as ``Settings()`` for the defaults.
    """
    lines = [
        "# Settings for `python -m veza_business_metrics rules|dashboard --config FILE`.",
        "# Every key is optional: a key left out keeps its default.",
        "",
        *_table_lines(settings),
    ]
    for field in dataclasses.fields(settings):
        if "check" not in field.metadata:
            section = getattr(settings, field.name)
            doc = " ".join((type(section).__doc__ or "").split())
            lines += ["", *_comment(doc), f"[{_key(field)}]", *_table_lines(section)]
    return "\n".join(lines) + "\n"
