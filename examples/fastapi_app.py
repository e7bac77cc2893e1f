"""The example shop as a FastAPI app, with /metrics from prometheus_client, under uvicorn.

Run it with ``python3 scripts/dev.py demo --app fastapi``, or with
``python examples/fastapi_app.py [--port N]`` where the package, fastapi and uvicorn are
installed; its metrics are then on ``http://127.0.0.1:8000/metrics/``.
"""

from __future__ import annotations

import argparse
import json

from fastapi import FastAPI, Request, Response
from prometheus_client import make_asgi_app

import shop

app = FastAPI(title="Example shop")
# A mount answers /metrics with a redirect to /metrics/, which Prometheus follows.
app.mount("/metrics", make_asgi_app())


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
