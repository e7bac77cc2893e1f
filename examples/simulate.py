"""Send an example shop a plausible mix of logins, orders, payments and refunds over HTTP.

Point it at any of the example apps, whatever serves it::

    python examples/simulate.py http://127.0.0.1:8000
    python examples/simulate.py http://127.0.0.1:8000 --scenario payments-failing

``python3 scripts/dev.py demo`` runs it beside the app it serves, unless given
``--no-simulate``. The default traffic is healthy: none of the shipped alerts fires under
it. A ``--scenario`` plays an incident instead, which fires the alert named in
``SCENARIOS``. It runs until interrupted, or for ``--events`` rounds, and stops at the
first request that cannot reach the shop.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

# The fake user table's passwords (see shop.py): mostly alice logging in, the others
# failing in their own ways: bob unverified, carol locked, mallory a wrong password, and
# erin with failure_other, which the login error budget counts.
ALICE = {"username": "alice", "password": "wonderland"}
BOB = {"username": "bob", "password": "builder"}
CAROL = {"username": "carol", "password": "singing"}
DAVE = {"username": "dave", "password": "grohl", "otp": "123456"}
ERIN = {"username": "erin", "password": "brockovich"}
MALLORY = {"username": "mallory", "password": "guess"}
CURRENCIES = ["EUR", "EUR", "USD", "eur"]
# Seconds between rounds by default: about 5 rounds a second.
PAUSE = 0.2


@dataclasses.dataclass(frozen=True)
class Mix:
    """What one round of traffic does, and how often.

    Each round sends one login, drawn from ``logins`` by weight, and with these odds an
    order and an account deletion. Of the orders, ``completed`` complete (``refunded``
    of all are then refunded) and ``failed`` fail; the rest stay open. A payment settles
    an amount from ``amounts`` minor units.
    """

    logins: tuple[tuple[dict[str, str], float], ...]
    order: float = 0.5
    deletion: float = 0.01
    completed: float = 0.8
    refunded: float = 0.05
    failed: float = 0.1
    amounts: range = range(500, 10_000)


# 0.2% of logins end in failure_other: well within the 99.5% login SLO, whose error
# budget alerts warn from 0.5%. 15% fail in all, far below the 50% of the failure spike.
HEALTHY = Mix(
    logins=((ALICE, 770), (DAVE, 80), (BOB, 40), (CAROL, 40), (MALLORY, 68), (ERIN, 2)),
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """An incident that the demo plays: its traffic, and the alert it should fire."""

    description: str
    alert: str
    mix: Mix


SCENARIOS = {
    "login-failure-spike": Scenario(
        "credential stuffing: most logins are wrong passwords",
        "VezaBusinessLoginFailureSpike",
        dataclasses.replace(HEALTHY, logins=(*HEALTHY.logins, (MALLORY, 3000))),
    ),
    "payments-failing": Scenario(
        "the payment provider rejects more than a third of the orders",
        "VezaBusinessPaymentFailuresHigh",
        # Still more than half complete, so that the completion alert stays quiet.
        dataclasses.replace(HEALTHY, completed=0.6, failed=0.35),
    ),
    "revenue-stalled": Scenario(
        "orders complete, but every payment webhook settles 0",
        "VezaBusinessRevenueStalled",
        dataclasses.replace(HEALTHY, amounts=range(1)),
    ),
}


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of the traffic; ``{order}`` in the path stands for the last order's id."""

    method: str
    path: str
    body: object = None


def rounds(mix: Mix, rng: random.Random) -> Iterator[list[Request]]:
    """Yield the requests of each round of ``mix``, without end."""
    bodies, weights = zip(*mix.logins, strict=True)
    while True:
        requests = [Request("POST", "/login", rng.choices(bodies, weights)[0])]
        if rng.random() < mix.order:
            requests.append(Request("POST", "/orders", {}))
            webhook = {
                "amount_cents": rng.choice(mix.amounts),
                "currency": rng.choice(CURRENCIES),
            }
            outcome = rng.random()
            if outcome < mix.refunded:
                requests.append(Request("POST", "/orders/{order}/complete", webhook))
                requests.append(Request("POST", "/orders/{order}/refund", webhook))
            elif outcome < mix.completed:
                requests.append(Request("POST", "/orders/{order}/complete", webhook))
            elif outcome < mix.completed + mix.failed:
                requests.append(Request("POST", "/orders/{order}/fail"))
        if rng.random() < mix.deletion:
            requests.append(Request("DELETE", "/account"))
        yield requests


def seeded() -> random.Random:
    """Return the generator that the simulator draws its traffic from."""
    # This seed completes EUR and USD orders and refunds one within the first two rounds,
    # so that every series and panel of the demo has data from its first seconds.
    return random.Random(87)  # noqa: S311


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


def simulate(base: str, mix: Mix, events: int | None, pause: float) -> None:
    """Play ``events`` rounds of ``mix`` against the shop at ``base``, or play on forever."""
    order_id = "unknown"
    for requests in itertools.islice(rounds(mix, seeded()), events):
        for request in requests:
            reply = send(request.method, base + request.path.format(order=order_id), request.body)
            if request.path == "/orders":
                order_id = reply["id"] if isinstance(reply, dict) else "unknown"
        time.sleep(pause)


def main() -> None:
    """Parse the command line and play the traffic; exit quietly once the shop is gone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="where the shop is served, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        help="play an incident rather than healthy traffic: "
        + "; ".join(f"{name}: {scenario.description}" for name, scenario in SCENARIOS.items()),
    )
    parser.add_argument(
        "--events", type=int, help="stop after this many rounds (default: run until interrupted)"
    )
    parser.add_argument("--pause", type=float, default=PAUSE, help="seconds between rounds")
    args = parser.parse_args()
    mix = SCENARIOS[args.scenario].mix if args.scenario else HEALTHY
    try:
        simulate(args.base_url.rstrip("/"), mix, args.events, args.pause)
    except OSError as error:
        sys.exit(f"simulate.py: stopped: {args.base_url} is unreachable ({error})")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
