"""Trace exemplars: the current OpenTelemetry span's ids on each increment, once enabled.

Nothing here imports OpenTelemetry until ``enable_trace_exemplars()`` runs, so that
``import veza_business_metrics`` stays as cheap without the extra as with it. Enabling
and disabling rewire every recorder's cached children, wrapped in ``Traced`` or not, so
that the record path checks nothing while exemplars are disabled.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Final, cast

from prometheus_client.samples import Exemplar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Protocol

    from opentelemetry.trace import Span
    from prometheus_client import Counter

    class Wired(Protocol):
        """A recorder, whose children the exemplar switch rewires."""

        def _wire(self, *, traced: bool) -> None:
            """Cache every child, wrapped in ``Traced`` if ``traced``."""


EXTRA: Final = "veza-business-metrics[otel]"
# W3C trace context: a trace id is 16 bytes, a span id 8, and all zeros is invalid.
_TRACE_ID_LIMIT: Final = 2**128
_SPAN_ID_LIMIT: Final = 2**64
_SAMPLED: Final = 0x01

# Whether exemplars are enabled; the recorders read it only to cache a new child.
enabled = False
# Held while enabled changes and the recorders are rewired, so that a recorder created
# meanwhile is wired as the flag ends up.
_lock = threading.Lock()
# Every recorder, kept while it lives. A WeakSet, not a set of WeakMethods, whose
# callbacks fail, and print so, when the interpreter tears them down before a recorder.
_recorders: weakref.WeakSet[Wired] = weakref.WeakSet()
# Set on the first enable_trace_exemplars(), and kept after a disable, so that a call
# that took a Traced child just before the disable still finds them.
_current_context: Callable[[], Mapping[str, object]]
_span_key: str
_span_type: type
_span_context_type: type


def _after_fork_in_child() -> None:
    # A thread that the child does not have may have held the lock at the fork.
    global _lock  # noqa: PLW0603
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def enable_trace_exemplars() -> None:
    """Attach the current sampled OpenTelemetry span's ids to every increment from now on.

    Each ``record_*`` call made inside a sampled span with a valid context then gives the
    series it increments the exemplar ``{"trace_id": ..., "span_id": ...}`` (lower-case
    hex, 32 and 16 characters), with the increment as its value. prometheus_client's
    endpoints serve it in the OpenMetrics format, to scrapers that ask for that format;
    in multiprocess mode, this package's collector and apps do, for every worker. A
    process forked after the call inherits it; one started afresh calls it too. Calling
    it again changes nothing.

    Raises:
        ModuleNotFoundError: If ``opentelemetry-api``, which the ``otel`` extra installs,
            cannot be imported. Nothing is enabled then.
    """
    global _current_context, _span_key, _span_type, _span_context_type  # noqa: PLW0603  # Traced reads them on every call
    from contextvars import ContextVar  # noqa: PLC0415

    try:
        from opentelemetry import context, trace  # noqa: PLC0415
        from opentelemetry.context.contextvars_context import (  # noqa: PLC0415
            ContextVarsRuntimeContext,
        )
    except ImportError as error:
        message = (
            "enable_trace_exemplars() needs opentelemetry-api, which could not be imported"
            f" ({error}); install {EXTRA}"
        )
        raise ModuleNotFoundError(message, name=error.name) from error
    runtime = context._RUNTIME_CONTEXT  # noqa: SLF001
    variable = getattr(runtime, "_current_context", None)
    # OpenTelemetry's public get_current() costs three Python calls; the context variable
    # that its default runtime context reads is one C call, on every recorded event. Any
    # other runtime context, or a release that renamed the variable, gets the public call.
    if type(runtime) is ContextVarsRuntimeContext and type(variable) is ContextVar:
        _current_context = variable.get
    else:
        _current_context = context.get_current
    # The key under which OpenTelemetry keeps the current span is private: a context that
    # holds a span and nothing else shows it through the public API.
    (_span_key,) = trace.set_span_in_context(trace.INVALID_SPAN, context.Context())
    _span_type = trace.Span
    _span_context_type = trace.SpanContext
    _set(traced=True)


def disable_trace_exemplars() -> None:
    """Stop attaching exemplars; each later increment costs what it did before enabling.

    The exemplars already attached stay on their series until a newer one replaces them.
    """
    _set(traced=False)


def register(recorder: Wired) -> None:
    """Call ``recorder._wire(traced=...)`` now and whenever exemplars are switched.

    Args:
        recorder: A recorder. Only a weak reference to it is kept.
    """
    with _lock:
        _recorders.add(recorder)
        recorder._wire(traced=enabled)  # noqa: SLF001


def _set(*, traced: bool) -> None:
    global enabled  # noqa: PLW0603  # the recorders read it when they cache a new child
    with _lock:
        enabled = traced
        for recorder in list(_recorders):
            recorder._wire(traced=traced)  # noqa: SLF001


def traced(child: Counter) -> Traced:
    """Return ``child`` wrapped to attach exemplars where prometheus_client keeps its values.

    Args:
        child: The counter, or labelled child, that a record call increments.
    """
    if getattr(child._value, "_multiprocess", False):  # noqa: SLF001
        return TracedToFile(child)
    return Traced(child)


class Traced:
    """Increment a counter's child with the current sampled span's ids as its exemplar.

    It calls the child's value, as ``Counter.inc()`` does once it has checked the
    amount, which the record path validated already: so that, outside a span, enabled
    exemplars cost a context lookup and no more calls than before.

    Args:
        child: The counter, or labelled child, that a record call increments.
    """

    __slots__ = ("_value",)

    def __init__(self, child: Counter) -> None:
        """Wrap ``child``."""
        self._value = child._value  # noqa: SLF001

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``, the exemplar's value, to the child; attach the span's ids if any.

        Args:
            amount: The increment, already validated.
        """
        self._value.inc(amount)
        current = _current_context()
        # Outside any request the context is OpenTelemetry's empty default one, which is
        # cheaper to test than to search.
        if current:
            span = current.get(_span_key)
            if span is not None:
                ids = _ids(span)
                if ids is not None:
                    self._attach(amount, *ids)

    def _attach(self, amount: float, trace_id: int, span_id: int) -> None:
        labels = {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}
        self._value.set_exemplar(Exemplar(labels, amount, time.time()))


class TracedToFile(Traced):
    """Do what ``Traced`` does in multiprocess mode, where the exemplar goes to a file.

    Args:
        child: The counter, or labelled child, that a record call increments.
    """

    __slots__ = ("_key", "_write")

    def __init__(self, child: Counter) -> None:
        """Wrap ``child``, and name its series for the exemplar file."""
        # Only multiprocess mode pays for importing the package that keeps the files.
        from veza_business_metrics.multiprocess import _exemplars  # noqa: PLC0415

        super().__init__(child)
        self._key = _exemplars.key_of(child)
        self._write = _exemplars.writer.write

    def _attach(self, amount: float, trace_id: int, span_id: int) -> None:
        self._write(self._key, amount, trace_id, span_id, time.time())


def _ids(span: object) -> tuple[int, int] | None:
    # Anyone can put any object in a context, and a span's context may carry ids of any
    # type or size: only exact ints in the W3C ranges are taken, so that an exemplar is
    # always 32 and 16 hex digits, within prometheus_client's 128-rune limit, and a
    # recorded event never fails because of its span.
    if not isinstance(span, _span_type):
        return None
    try:
        span_context = cast("Span", span).get_span_context()
        if not isinstance(span_context, _span_context_type):
            return None
        trace_id: object = span_context.trace_id
        span_id: object = span_context.span_id
        flags: object = span_context.trace_flags
    except Exception:  # noqa: BLE001  a span of any class, whose methods may raise anything
        return None
    if (
        type(trace_id) is int
        and type(span_id) is int
        and 0 < trace_id < _TRACE_ID_LIMIT
        and 0 < span_id < _SPAN_ID_LIMIT
        and issubclass(type(flags), int)
        and int.__and__(cast("int", flags), _SAMPLED)
    ):
        return trace_id, span_id
    return None
