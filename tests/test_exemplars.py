"""Tests for trace exemplars: enable_trace_exemplars() and the record path once enabled."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import urllib.request
import weakref
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import context, trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import veza_business_metrics
from helpers import DELETIONS, LOGINS, ORDERS, REVENUE, exposing, samples
from veza_business_metrics import (
    BusinessMetrics,
    LoginOutcome,
    OrderStatus,
    _exemplars,
    disable_trace_exemplars,
    enable_trace_exemplars,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from opentelemetry.trace import Tracer

Exemplars = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], float]]

# (helper, its arguments, the sample it increments, the increment)
CALLS: list[tuple[str, tuple[Any, ...], str, tuple[tuple[str, str], ...], float]] = [
    *(
        (f"record_login_{outcome.value}", (), LOGINS, (("outcome", outcome.value),), 1.0)
        for outcome in LoginOutcome
    ),
    ("record_login", ("failure_locked",), LOGINS, (("outcome", "failure_locked"),), 1.0),
    ("record_login", (LoginOutcome.FAILURE_2FA,), LOGINS, (("outcome", "failure_2fa"),), 1.0),
    # A str subclass takes the general path.
    (
        "record_login",
        (type("Text", (str,), {})("success"),),
        LOGINS,
        (("outcome", "success"),),
        1.0,
    ),
    *(
        (f"record_order_{status.value}", (), ORDERS, (("status", status.value),), 1.0)
        for status in OrderStatus
    ),
    ("record_order_event", ("refunded",), ORDERS, (("status", "refunded"),), 1.0),
    ("record_order_event", (OrderStatus.FAILED,), ORDERS, (("status", "failed"),), 1.0),
    ("record_revenue", (1999, "eur"), REVENUE, (("currency", "EUR"),), 1999.0),
    ("record_revenue", (2**53, "JPY"), REVENUE, (("currency", "JPY"),), float(2**53)),
    ("record_refund", (500, "EUR"), REVENUE, (("currency", "EUR-refund"),), 500.0),
    ("record_account_deletion", (), DELETIONS, (), 1.0),
]
CALL_IDS = [f"{name}{args!r}" for name, args, *_ in CALLS]


@pytest.fixture(autouse=True)
def _exemplars_enabled() -> Iterator[None]:
    """Enable exemplars for each test, and disable them whatever the test did."""
    enable_trace_exemplars()
    try:
        yield
    finally:
        disable_trace_exemplars()


@pytest.fixture
def tracer() -> Tracer:
    """Give a tracer of the real SDK that samples every span."""
    return TracerProvider(sampler=ALWAYS_ON).get_tracer(__name__)


def exemplars(registry: CollectorRegistry) -> Exemplars:
    """Return every sample's exemplar labels and value, by sample name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): (
            dict(sample.exemplar.labels),
            sample.exemplar.value,
        )
        for family in registry.collect()
        for sample in family.samples
        if sample.exemplar is not None
    }


def ids(span: trace.Span) -> dict[str, str]:
    """Return the exemplar labels that ``span`` must give: its ids in lower-case hex."""
    span_context = span.get_span_context()
    return {
        "trace_id": trace.format_trace_id(span_context.trace_id),
        "span_id": trace.format_span_id(span_context.span_id),
    }


def record_in(span_context: object, record: Callable[[], None]) -> None:
    """Call ``record`` while a span whose context is ``span_context`` is current."""
    with trace.use_span(NonRecordingSpan(span_context)):  # type: ignore[arg-type]
        record()


@pytest.mark.parametrize(("name", "args", "sample", "labels", "amount"), CALLS, ids=CALL_IDS)
def test_each_helper_attaches_the_sampled_spans_ids_with_its_increment(
    tracer: Tracer,
    name: str,
    args: tuple[Any, ...],
    sample: str,
    labels: tuple[tuple[str, str], ...],
    amount: float,
) -> None:
    """Inside a sampled span, a helper gives its series the span's ids and the increment."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    with tracer.start_as_current_span("request") as span:
        getattr(metrics, name)(*args)
    assert exemplars(registry) == {(sample, labels): (ids(span), amount)}


@pytest.mark.parametrize(("name", "args", "sample", "labels", "amount"), CALLS, ids=CALL_IDS)
def test_the_fast_path_of_a_value_already_seen_attaches_the_newest_span(
    tracer: Tracer,
    name: str,
    args: tuple[Any, ...],
    sample: str,
    labels: tuple[tuple[str, str], ...],
    amount: float,
) -> None:
    """A second call, on the cached child, replaces the first span's exemplar with its own."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    with tracer.start_as_current_span("first") as first:
        getattr(metrics, name)(*args)
    with tracer.start_as_current_span("second") as second:
        getattr(metrics, name)(*args)
    assert ids(first) != ids(second)
    assert exemplars(registry) == {(sample, labels): (ids(second), amount)}


@pytest.mark.parametrize(("name", "args", "sample", "labels", "amount"), CALLS, ids=CALL_IDS)
def test_outside_a_span_nothing_is_attached(
    name: str,
    args: tuple[Any, ...],
    sample: str,
    labels: tuple[tuple[str, str], ...],
    amount: float,
) -> None:
    """Without a current span, a helper counts its event and attaches no exemplar."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    getattr(metrics, name)(*args)
    assert exemplars(registry) == {}
    assert samples(registry)[sample, labels] == amount


@pytest.mark.parametrize(("name", "args"), [call[:2] for call in CALLS], ids=CALL_IDS)
def test_in_a_span_that_is_not_sampled_nothing_is_attached(
    name: str, args: tuple[Any, ...]
) -> None:
    """Inside a span that the sampler dropped, a helper attaches no exemplar."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer(__name__)
    with unsampled.start_as_current_span("dropped") as span:
        getattr(metrics, name)(*args)
    assert span.get_span_context().is_valid
    assert exemplars(registry) == {}


@pytest.mark.parametrize(("name", "args"), [call[:2] for call in CALLS], ids=CALL_IDS)
def test_disabled_exemplars_attach_nothing_even_in_a_sampled_span(
    tracer: Tracer, name: str, args: tuple[Any, ...]
) -> None:
    """Once disabled, a helper inside a sampled span attaches no exemplar."""
    disable_trace_exemplars()
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    with tracer.start_as_current_span("request"):
        getattr(metrics, name)(*args)
    assert exemplars(registry) == {}


def test_disabling_keeps_the_exemplars_already_attached(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """An exemplar attached before the disable stays until a newer one replaces it."""
    with tracer.start_as_current_span("before") as before:
        metrics.record_order_completed()
    disable_trace_exemplars()
    with tracer.start_as_current_span("after"):
        metrics.record_order_completed()
    assert exemplars(registry) == {(ORDERS, (("status", "completed"),)): (ids(before), 1.0)}


def test_enabling_rewires_the_recorders_created_before(tracer: Tracer) -> None:
    """Recorders created while disabled, their revenue children cached, attach once enabled."""
    disable_trace_exemplars()
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    metrics.record_revenue(100, "EUR")
    metrics.record_refund(100, "EUR")
    enable_trace_exemplars()
    with tracer.start_as_current_span("request") as span:
        metrics.record_revenue(1999, "EUR")
        metrics.record_refund(500, "EUR")
        metrics.record_account_deletion()
    assert exemplars(registry) == {
        (REVENUE, (("currency", "EUR"),)): (ids(span), 1999.0),
        (REVENUE, (("currency", "EUR-refund"),)): (ids(span), 500.0),
        (DELETIONS, ()): (ids(span), 1.0),
    }


def test_disabling_rewires_the_revenue_children_cached_while_enabled(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """A revenue child cached while enabled attaches nothing once disabled."""
    with tracer.start_as_current_span("before") as before:
        metrics.record_revenue(1999, "EUR")
    disable_trace_exemplars()
    with tracer.start_as_current_span("after"):
        metrics.record_revenue(1999, "EUR")
    assert exemplars(registry) == {(REVENUE, (("currency", "EUR"),)): (ids(before), 1999.0)}
    assert samples(registry)[REVENUE, (("currency", "EUR"),)] == 3998


def test_the_exemplar_switch_keeps_no_recorder_alive() -> None:
    """A recorder that nothing else references is freed, exemplars enabled or not."""
    metrics = BusinessMetrics(CollectorRegistry())
    reference = weakref.ref(metrics)
    del metrics
    gc.collect()
    assert reference() is None


def test_switching_while_threads_record_loses_no_count(tracer: Tracer) -> None:
    """Enabling and disabling while threads record leaves every total exact."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    calls, threads = 2000, 4
    stop = threading.Event()

    def record() -> None:
        with tracer.start_as_current_span("request"):
            for _ in range(calls):
                metrics.record_login_success()
                metrics.record_revenue(3, "EUR")
                metrics.record_refund(2, "eur")

    switches: list[None] = []

    def switch() -> None:
        while not stop.is_set():
            disable_trace_exemplars()
            enable_trace_exemplars()
            switches.append(None)

    switcher = threading.Thread(target=switch)
    recorders = [threading.Thread(target=record) for _ in range(threads)]
    switcher.start()
    try:
        for thread in recorders:
            thread.start()
        for thread in recorders:
            thread.join(timeout=60)
    finally:
        stop.set()
        switcher.join(timeout=60)
    assert not any(thread.is_alive() for thread in [switcher, *recorders])
    assert switches
    series = samples(registry)
    assert series[LOGINS, (("outcome", "success"),)] == calls * threads
    assert series[REVENUE, (("currency", "EUR"),)] == 3 * calls * threads
    assert series[REVENUE, (("currency", "EUR-refund"),)] == 2 * calls * threads


def test_enabling_twice_is_the_same_as_once(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """A second enable_trace_exemplars() leaves exemplars on, attached once per call."""
    enable_trace_exemplars()
    with tracer.start_as_current_span("request") as span:
        metrics.record_revenue(1999, "EUR")
    assert exemplars(registry) == {(REVENUE, (("currency", "EUR"),)): (ids(span), 1999.0)}


def test_a_zero_amount_counts_nothing_and_attaches_nothing(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """record_revenue(0, ...) in a sampled span creates no series and no exemplar."""
    with tracer.start_as_current_span("request"):
        metrics.record_revenue(0, "EUR")
        metrics.record_refund(0, "EUR")
    assert exemplars(registry) == {}
    assert [s for f in registry.collect() for s in f.samples if s.name == REVENUE] == []


def test_a_refused_event_attaches_nothing(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """A value that the helper refuses raises as before, and attaches no exemplar."""
    with tracer.start_as_current_span("request"):
        with pytest.raises(veza_business_metrics.InvalidLabelError):
            metrics.record_login("succes")  # type: ignore[arg-type]
        with pytest.raises(veza_business_metrics.InvalidAmountError):
            metrics.record_revenue(-1, "EUR")
    assert exemplars(registry) == {}


def test_the_exemplar_is_of_the_innermost_span(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """In nested spans, the exemplar names the span that is current at the call."""
    with (
        tracer.start_as_current_span("request"),
        tracer.start_as_current_span("payment") as inner,
    ):
        metrics.record_order_failed()
    assert exemplars(registry) == {(ORDERS, (("status", "failed"),)): (ids(inner), 1.0)}


def test_concurrent_tasks_each_attach_the_span_of_their_own_request(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """Interleaved asyncio tasks, each in its own span, attach each its own span's ids."""

    async def handle(outcome: str) -> trace.Span:
        with tracer.start_as_current_span(outcome) as span:
            # Both spans are open at once: the other task runs here.
            await asyncio.sleep(0)
            metrics.record_login(outcome)  # type: ignore[arg-type]
            return span

    async def serve() -> tuple[trace.Span, trace.Span]:
        return await asyncio.gather(handle("success"), handle("failure_locked"))

    success, locked = asyncio.run(serve())
    assert exemplars(registry) == {
        (LOGINS, (("outcome", "success"),)): (ids(success), 1.0),
        (LOGINS, (("outcome", "failure_locked"),)): (ids(locked), 1.0),
    }


def test_a_child_of_an_unsampled_remote_parent_attaches_nothing(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """Under the default parent-based sampler, an upstream's "not sampled" holds here too."""
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
    parent = TraceContextTextMapPropagator().extract(carrier)
    tracer = TracerProvider(sampler=ParentBased(ALWAYS_ON)).get_tracer(__name__)
    with tracer.start_as_current_span("request", context=parent) as span:
        metrics.record_login_success()
    assert span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert exemplars(registry) == {}


@pytest.mark.parametrize(
    "span_context",
    [
        trace.INVALID_SPAN_CONTEXT,
        SpanContext(0, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
        SpanContext(1, 0, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
        SpanContext(2**128, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
        SpanContext(1, 2**64, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
        SpanContext(-1, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
        SpanContext(1.5, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)),  # type: ignore[arg-type]
        SpanContext(True, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)),  # noqa: FBT003
        SpanContext(1, 1, is_remote=True, trace_flags="01"),  # type: ignore[arg-type]
        SpanContext(1, 1, is_remote=True, trace_flags=TraceFlags(0x02)),
        "not a span context",
        None,
    ],
    ids=[
        "invalid",
        "trace id 0",
        "span id 0",
        "trace id 2**128",
        "span id 2**64",
        "trace id -1",
        "trace id float",
        "trace id bool",
        "flags str",
        "not sampled",
        "str",
        "None",
    ],
)
def test_a_hostile_span_context_attaches_nothing(
    metrics: BusinessMetrics, registry: CollectorRegistry, span_context: object
) -> None:
    """A span whose context is invalid, unsampled or no SpanContext counts without exemplar."""
    record_in(span_context, metrics.record_order_created)
    assert exemplars(registry) == {}
    assert metrics.orders_total.labels("created")._value.get() == 1


class FailingSpan(NonRecordingSpan):
    """A span whose context cannot be read: its method raises."""

    def get_span_context(self) -> SpanContext:
        """Raise, as a broken span class might."""
        message = "no context"
        raise RuntimeError(message)


class FailingSpanContext(SpanContext):
    """A span context whose trace id cannot be read: its property raises."""

    @property
    def trace_id(self) -> int:
        """Raise, as a broken context class might."""
        message = "no trace id"
        raise RuntimeError(message)


@pytest.mark.parametrize(
    "span",
    [
        FailingSpan(trace.INVALID_SPAN_CONTEXT),
        NonRecordingSpan(
            FailingSpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        ),
    ],
    ids=["context raises", "trace id raises"],
)
def test_a_span_that_raises_counts_without_exemplar(
    metrics: BusinessMetrics, registry: CollectorRegistry, span: NonRecordingSpan
) -> None:
    """A span whose context or ids raise when read fails no call: it counts, unexemplared."""
    with trace.use_span(span):
        metrics.record_order_created()
    assert exemplars(registry) == {}
    assert metrics.orders_total.labels("created")._value.get() == 1


def test_a_forked_child_gets_a_lock_of_its_own_for_the_switch() -> None:
    """The fork hook gives the child a free lock, even if a parent's thread held the old one."""
    held = _exemplars._lock
    with held:
        _exemplars._after_fork_in_child()
        assert _exemplars._lock is not held
        assert not _exemplars._lock.locked()
        enable_trace_exemplars()
        disable_trace_exemplars()


@pytest.mark.parametrize("value", [INVALID_SPAN, "a span", 42, None], ids=repr)
def test_anything_put_in_the_context_as_the_span_attaches_nothing(
    metrics: BusinessMetrics, registry: CollectorRegistry, value: object
) -> None:
    """What a context holds under the span key, if not a valid span, attaches nothing."""
    token = context.attach(trace.set_span_in_context(value))  # type: ignore[arg-type]
    try:
        metrics.record_account_deletion()
    finally:
        context.detach(token)
    assert exemplars(registry) == {}
    assert metrics.account_deletions_total._value.get() == 1


def test_a_context_with_values_but_no_span_attaches_nothing(
    metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """A context that holds baggage or other values, but no span, attaches nothing."""
    token = context.attach(context.set_value("tenant", "shop-1"))
    try:
        metrics.record_order_refunded()
    finally:
        context.detach(token)
    assert exemplars(registry) == {}
    assert samples(registry)[ORDERS, (("status", "refunded"),)] == 1


@given(
    trace_id=st.one_of(st.integers(min_value=-1, max_value=2**129), st.just(2**128 - 1)),
    span_id=st.one_of(st.integers(min_value=-1, max_value=2**65), st.just(2**64 - 1)),
    flags=st.integers(min_value=0, max_value=255),
    remote=st.booleans(),
)
def test_any_span_context_attaches_its_ids_exactly_when_valid_and_sampled(
    trace_id: int, span_id: int, flags: int, *, remote: bool
) -> None:
    """Any ids and flags give exactly the W3C hex ids when valid and sampled, else nothing."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    span_context = SpanContext(trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(flags))
    record_in(span_context, lambda: metrics.record_revenue(7, "USD"))
    attached = exemplars(registry)
    if span_context.is_valid and span_context.trace_flags.sampled:
        trace_hex, span_hex = attached[REVENUE, (("currency", "USD"),)][0].values()
        assert (int(trace_hex, 16), int(span_hex, 16)) == (trace_id, span_id)
        assert (len(trace_hex), len(span_hex)) == (32, 16)
        assert trace_hex == trace_hex.lower()
        assert span_hex == span_hex.lower()
    else:
        assert attached == {}


@given(
    traceparent=st.one_of(
        st.text(max_size=60), st.from_regex(r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
    )
)
def test_a_traceparent_header_gives_the_exemplar_of_the_context_it_carries(
    traceparent: str,
) -> None:
    """A request's traceparent, whatever it holds, gives the exemplar of the context OTel reads."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    carried = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    token = context.attach(carried)
    try:
        span_context = trace.get_current_span().get_span_context()
        metrics.record_login_failure_other()
    finally:
        context.detach(token)
    expected = {}
    if span_context.is_valid and span_context.trace_flags.sampled:
        labels = {
            "trace_id": traceparent[3:35].lower(),
            "span_id": traceparent[36:52].lower(),
        }
        expected = {(LOGINS, (("outcome", "failure_other"),)): (labels, 1.0)}
    assert exemplars(registry) == expected


def test_a_runtime_context_of_another_kind_is_read_through_the_public_api(
    monkeypatch: pytest.MonkeyPatch,
    tracer: Tracer,
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
) -> None:
    """With a runtime context other than OTel's default one, the current span is still found."""

    class OwnRuntimeContext(ContextVarsRuntimeContext):
        """A runtime context of the user's own, as OTEL_PYTHON_CONTEXT can select."""

    monkeypatch.setattr(context, "_RUNTIME_CONTEXT", OwnRuntimeContext())
    enable_trace_exemplars()
    with tracer.start_as_current_span("request") as span:
        metrics.record_login_success()
    assert exemplars(registry) == {(LOGINS, (("outcome", "success"),)): (ids(span), 1.0)}


def test_openmetrics_serves_the_exemplar_and_the_text_format_does_not(
    tracer: Tracer, metrics: BusinessMetrics, registry: CollectorRegistry
) -> None:
    """prometheus_client's server gives the exemplar to an OpenMetrics scraper only."""
    with tracer.start_as_current_span("checkout") as span:
        metrics.record_revenue(1999, "EUR")
    with exposing(registry) as url:
        request = urllib.request.Request(  # noqa: S310  a local URL
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            openmetrics = response.read().decode()
            kind = response.headers["Content-Type"]
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
            text = response.read().decode()
    assert kind.startswith("application/openmetrics-text")
    served = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.exemplar
        for family in text_string_to_metric_families(openmetrics)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.exemplar is not None
    }
    ((key, exemplar),) = served.items()
    assert key == (REVENUE, (("currency", "EUR"),))
    assert (exemplar.labels, exemplar.value) == (ids(span), 1999.0)
    assert openmetrics == generate_latest(registry).decode()  # type: ignore[no-untyped-call]
    assert ids(span)["trace_id"] not in text
    assert 'veza_business_revenue_cents_total{currency="EUR"} 1999.0' in text


def test_without_the_extra_enabling_raises_names_it_and_enables_nothing(
    monkeypatch: pytest.MonkeyPatch,
    tracer: Tracer,
    metrics: BusinessMetrics,
    registry: CollectorRegistry,
) -> None:
    """Where opentelemetry-api cannot be imported, enabling raises naming the extra."""
    disable_trace_exemplars()
    with monkeypatch.context() as patch:
        # As if opentelemetry-api were not installed: any import of it now fails.
        patch.setitem(sys.modules, "opentelemetry", None)
        with pytest.raises(ModuleNotFoundError) as raised:
            enable_trace_exemplars()
    assert raised.value.name == "opentelemetry"
    assert str(raised.value) == (
        "enable_trace_exemplars() needs opentelemetry-api, which could not be imported"
        " (import of opentelemetry halted; None in sys.modules); install"
        " veza-business-metrics[otel]"
    )
    assert isinstance(raised.value.__cause__, ImportError)
    with tracer.start_as_current_span("request"):
        metrics.record_login_success()
    assert exemplars(registry) == {}
    assert samples(registry)[LOGINS, (("outcome", "success"),)] == 1


def test_in_multiprocess_mode_a_traced_call_counts_exactly_and_serves_its_exemplar(
    run_python: Callable[..., str], tmp_path: Path
) -> None:
    """In multiprocess mode, a traced call counts as before and the collector serves its ids."""
    program = """
import sys

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
import veza_business_metrics as business
from veza_business_metrics.multiprocess import MultiProcessCollector

business.enable_trace_exemplars()
with TracerProvider().get_tracer("worker").start_as_current_span("request") as span:
    business.record_revenue(1999, "EUR")
    business.record_login_success()
registry = CollectorRegistry()
MultiProcessCollector(registry)
ids = span.get_span_context()
sys.stdout.write(f"{ids.trace_id:032x} {ids.span_id:016x}\\n")
sys.stdout.write(generate_latest(registry).decode())
"""
    output = run_python(program, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    ids, _, exposition = output.partition("\n")
    trace_id, span_id = ids.split()
    served = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample
        for family in text_string_to_metric_families(exposition)  # type: ignore[no-untyped-call]
        for sample in family.samples
    }
    revenue = served[REVENUE, (("currency", "EUR"),)]
    login = served[LOGINS, (("outcome", "success"),)]
    assert (revenue.value, login.value) == (1999, 1)
    assert (
        revenue.exemplar.labels
        == login.exemplar.labels
        == {
            "trace_id": trace_id,
            "span_id": span_id,
        }
    )
    assert (revenue.exemplar.value, login.exemplar.value) == (1999, 1)
    assert [name for name, sample in served.items() if sample.exemplar is not None] == [
        (LOGINS, (("outcome", "success"),)),
        (REVENUE, (("currency", "EUR"),)),
    ]


def test_a_program_that_ends_with_recorders_alive_prints_nothing_at_exit() -> None:
    """Recorders still alive when the interpreter ends leave no error on stderr."""
    program = """
from prometheus_client import CollectorRegistry
import veza_business_metrics as business

recorders = [business.BusinessMetrics(CollectorRegistry()) for _ in range(3)]
business.enable_trace_exemplars()
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_importing_the_package_does_not_import_opentelemetry(
    run_python: Callable[..., str],
) -> None:
    """Importing the package leaves opentelemetry unloaded; enable_trace_exemplars() loads it."""
    program = """
import sys
import veza_business_metrics
print("opentelemetry" in sys.modules)
veza_business_metrics.enable_trace_exemplars()
print("opentelemetry" in sys.modules)
"""
    assert run_python(program).split() == ["False", "True"]
