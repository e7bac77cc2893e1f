"""Run each request of an ASGI app in a sampled OpenTelemetry span, and tell its ids.

``fastapi_app.py`` wraps itself in ``TraceEachRequest`` and enables trace exemplars
when ``SHOP_TRACES=1``, with OpenTelemetry's SDK installed. A real service would rather
use OpenTelemetry's instrumentation of its framework and export the spans to Tempo or
Jaeger; this one needs only the SDK, exports nothing, and says in each response which
span it was, so that a test can match Prometheus's exemplars against the spans.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class TraceEachRequest:
    """Wrap an ASGI app so that each HTTP request runs in a new sampled server span.

    Each response carries the span's ids as a ``traceparent`` header, and the pid of the
    worker that answered as ``x-worker-pid``.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app
        # The SDK's default sampler samples every span that has no parent.
        self.tracer = TracerProvider().get_tracer("shop")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection, each HTTP request inside its own span."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Named by its method alone: a path such as /orders/42/complete is unbounded.
        server = trace.SpanKind.SERVER
        with self.tracer.start_as_current_span(scope["method"], kind=server) as span:
            ids = span.get_span_context()
            told = [
                (b"traceparent", f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01".encode()),
                (b"x-worker-pid", str(os.getpid()).encode()),
            ]

            async def send_with_ids(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *told]}
                await send(message)

            await self.app(scope, receive, send_with_ids)
