"""The example shop as a FastAPI app, with /metrics from prometheus_client, under uvicorn.

Run it with ``python3 scripts/dev.py demo --app fastapi``, or with
``python examples/fastapi_app.py [--port N]`` where the package, fastapi and uvicorn are
installed; its metrics are then on ``http://127.0.0.1:8000/metrics/``.

With ``PROMETHEUS_MULTIPROC_DIR`` set, it serves every worker's counts, so that any ASGI
server may run it with several workers (``docs/hosts/servers.md``); ``/metrics`` then
answers only ``Authorization: Bearer $METRICS_TOKEN`` where ``METRICS_TOKEN`` is set.

With ``SHOP_TRACES=1`` and opentelemetry-sdk installed, each request runs in a sampled
span (``tracing.py``) whose ids its events attach as exemplars, and each response tells
them in a ``traceparent`` header, with the worker's pid in ``x-worker-pid``
(``docs/exemplars.md``).
"""

from __future__ import annotations

import argparse
import json
import os

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram, make_asgi_app

import shop
import veza_business_metrics as business
from veza_business_metrics import multiprocess

# The host application's own metrics, which the multiprocess files carry too.
PINGS = Counter("shop_pings_total", "Pings answered by the shop.")
PING_SECONDS = Histogram("shop_ping_seconds", "Time to answer a ping.", buckets=(0.1, 0.5, 1))

app = FastAPI(title="Example shop")
if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    # The default registry would only show the worker that answers the scrape; this app
    # reads every worker's files, live, exited or merged, and merges those of exited
    # workers first, since uvicorn, Hypercorn and Granian tell the app of no exit.
    metrics_app = multiprocess.make_asgi_app(bearer_token=os.environ.get("METRICS_TOKEN"))
else:
    metrics_app = make_asgi_app()
# A mount answers /metrics with a redirect to /metrics/, which Prometheus follows.
app.mount("/metrics", metrics_app)
if os.environ.get("SHOP_TRACES") == "1":
    # Only then, so that the shop runs without OpenTelemetry's SDK installed.
    from tracing import TraceEachRequest

    app.add_middleware(TraceEachRequest)
    business.enable_trace_exemplars()


async def _json(request: Request) -> object:
    try:
        return await request.json()
    except ValueError:
        return None


def _respond(reply: shop.Reply) -> Response:
    content = None if reply.payload is None else json.dumps(reply.payload)
    return Response(content, status_code=reply.status, media_type="application/json")


@app.post("/login")
async def login(request: Request) -> Response:
    """Log a user in from the fake user table."""
    return _respond(shop.login(await _json(request)))


@app.post("/orders")
async def create_order(request: Request) -> Response:
    """Create an order."""
    return _respond(shop.create_order(await _json(request)))


@app.post("/orders/{order_id}/complete")
async def complete_order(order_id: str, request: Request) -> Response:
    """Receive the payment provider's completion webhook."""
    return _respond(shop.complete_order(order_id, await _json(request)))


@app.post("/orders/{order_id}/fail")
async def fail_order(order_id: str) -> Response:
    """Receive the payment provider's rejection webhook."""
    return _respond(shop.fail_order(order_id))


@app.post("/orders/{order_id}/refund")
async def refund_order(order_id: str, request: Request) -> Response:
    """Receive the payment provider's refund webhook."""
    return _respond(shop.refund_order(order_id, await _json(request)))


@app.get("/ping")
async def ping() -> Response:
    """Answer a ping, counted only on the host application's own metrics."""
    PINGS.inc()
    # A fixed duration keeps the histogram's sum exact for the tests.
    PING_SECONDS.observe(0.25)
    return Response(status_code=204)


@app.delete("/account")
async def delete_account() -> Response:
    """Delete the caller's account."""
    return _respond(shop.delete_account())


def main() -> None:
    """Serve the app on 127.0.0.1 with uvicorn."""
    import uvicorn  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
