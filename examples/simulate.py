"""Send an example shop a plausible mix of logins, orders, payments and refunds over HTTP.

Point it at any of the example apps, whatever serves it::

    python examples/simulate.py http://127.0.0.1:8000

``python3 scripts/dev.py demo`` runs it beside the app it serves, unless given
``--no-simulate``. It stops by itself after ``--events`` rounds (an hour at the default
pace), or at the first request that cannot reach the shop.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.request

# The fake user table's passwords (see shop.py): mostly alice logging in, the others and
# a stranger failing in their own ways.
LOGINS = [
    ({"username": "alice", "password": "wonderland"}, 20),
    ({"username": "bob", "password": "builder"}, 1),
    ({"username": "carol", "password": "singing"}, 1),
    ({"username": "dave", "password": "grohl", "otp": "123456"}, 2),
    ({"username": "erin", "password": "brockovich"}, 1),
    ({"username": "mallory", "password": "guess"}, 2),
]
# Per round: one login, and with these odds an order and an account deletion. Of the
# orders, COMPLETED_SHARE complete (REFUNDED_SHARE of all are then refunded), and
# FAILED_SHARE fail; the rest stay open.
ORDER_SHARE, DELETION_SHARE = 0.5, 0.01
COMPLETED_SHARE, REFUNDED_SHARE, FAILED_SHARE = 0.8, 0.05, 0.1
CURRENCIES = ["EUR", "EUR", "USD", "eur"]


def send(method: str, url: str, body: object = None) -> object:
    """Send one JSON request and return the decoded reply, whatever its status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310  the URL comes from the command line
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            raw = reply.read()
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
    return json.loads(raw) if raw else None


def simulate(base: str, events: int, pause: float, rng: random.Random) -> None:
    """Play ``events`` rounds of traffic against the shop at ``base``."""
    bodies, weights = zip(*LOGINS, strict=True)
    for _ in range(events):
        send("POST", f"{base}/login", rng.choices(bodies, weights)[0])
        if rng.random() < ORDER_SHARE:
            order = send("POST", f"{base}/orders", {})
            order_id = order["id"] if isinstance(order, dict) else "unknown"
            webhook = {
                "amount_cents": rng.randrange(500, 10_000),
                "currency": rng.choice(CURRENCIES),
            }
            outcome = rng.random()
            if outcome < REFUNDED_SHARE:
                send("POST", f"{base}/orders/{order_id}/complete", webhook)
                send("POST", f"{base}/orders/{order_id}/refund", webhook)
            elif outcome < COMPLETED_SHARE:
                send("POST", f"{base}/orders/{order_id}/complete", webhook)
            elif outcome < COMPLETED_SHARE + FAILED_SHARE:
                send("POST", f"{base}/orders/{order_id}/fail")
        if rng.random() < DELETION_SHARE:
            send("DELETE", f"{base}/account")
        time.sleep(pause)


def main() -> None:
    """Parse the command line and play the traffic; exit quietly once the shop is gone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="where the shop is served, e.g. http://127.0.0.1:8000")
    parser.add_argument("--events", type=int, default=18_000, help="rounds to play")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between rounds")
    args = parser.parse_args()
    try:
        # This seed completes EUR and USD orders and refunds one within the first two rounds,
        # so that every series and panel of the demo has data from its first seconds.
        rng = random.Random(87)  # noqa: S311
        simulate(args.base_url.rstrip("/"), args.events, args.pause, rng)
    except OSError as error:
        sys.exit(f"simulate.py: stopped: {args.base_url} is unreachable ({error})")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
