"""The example shop as a FastAPI app, with /metrics from prometheus_client, under uvicorn.

Run it with ``python3 scripts/dev.py demo``, or with
``python examples/fastapi_app.py [--port N] [--simulate]`` where the package, fastapi
and uvicorn are installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import make_asgi_app

import shop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# Set by --simulate (or the demo command): record made-up traffic in the background.
SIMULATE_ENV = "SHOP_SIMULATE_TRAFFIC"
# The simulator stops by itself after this many rounds (about an hour at 5 a second).
SIMULATED_EVENTS = 18_000
# Per round: one login, and with these odds an order and an account deletion. Of the
# orders, COMPLETED_SHARE complete (REFUNDED_SHARE of all are then refunded), and
# FAILED_SHARE fail; the rest stay open.
ORDER_SHARE, DELETION_SHARE = 0.5, 0.01
COMPLETED_SHARE, REFUNDED_SHARE, FAILED_SHARE = 0.8, 0.05, 0.1
CURRENCIES = ["EUR", "EUR", "USD", "eur"]


async def simulate_traffic(events: int, pause: float = 0.2) -> None:
    """Drive the shop's handlers with a plausible mix of logins, orders and payments."""
    # This seed completes EUR and USD orders and refunds one within the first two rounds,
    # so that every series and panel of the demo has data from its first seconds.
    rng = random.Random(87)  # noqa: S311
    # Mostly alice logging in; the others and a stranger fail in their own ways.
    usernames, weights = [*shop.USERS, "mallory"], [20, 1, 1, 2, 1, 2]
    for _ in range(events):
        username = rng.choices(usernames, weights)[0]
        password = shop.USERS[username].password if username in shop.USERS else "guess"
        shop.login({"username": username, "password": password, "otp": "123456"})
        if rng.random() < ORDER_SHARE:
            order_id = str((shop.create_order({}).payload or {})["id"])
            webhook = {
                "amount_cents": rng.randrange(500, 10_000),
                "currency": rng.choice(CURRENCIES),
            }
            outcome = rng.random()
            if outcome < REFUNDED_SHARE:
                shop.complete_order(order_id, webhook)
                shop.refund_order(order_id, webhook)
            elif outcome < COMPLETED_SHARE:
                shop.complete_order(order_id, webhook)
            elif outcome < COMPLETED_SHARE + FAILED_SHARE:
                shop.fail_order(order_id)
        if rng.random() < DELETION_SHARE:
            shop.delete_account()
        await asyncio.sleep(pause)


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Run the traffic simulator for the app's lifetime when it is switched on."""
    simulator = None
    if os.environ.get(SIMULATE_ENV) == "1":
        simulator = asyncio.create_task(simulate_traffic(SIMULATED_EVENTS))
    yield
    if simulator is not None:
        simulator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await simulator


app = FastAPI(title="Example shop", lifespan=lifespan)
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
    parser.add_argument("--simulate", action="store_true", help="record made-up traffic")
    args = parser.parse_args()
    if args.simulate:
        os.environ[SIMULATE_ENV] = "1"
    url = f"http://127.0.0.1:{args.port}/metrics/"
    print(f"Serving {url}", flush=True)
    print(f"Try: curl -s {url} | grep veza_business", flush=True)
    print(
        "Scrape it with Prometheus: prometheus --config.file=examples/prometheus.yml"
        ' --storage.tsdb.path="$(mktemp -d)" --web.listen-address=127.0.0.1:9090',
        flush=True,
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
