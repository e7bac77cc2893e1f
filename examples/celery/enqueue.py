"""Send the shop's background tasks, as its web tier does after each payment webhook.

Run it from this directory: ``python enqueue.py [COUNT]`` sends COUNT settlements, COUNT
refunds and COUNT account erasures (default 10) to the broker of ``tasks.py``.
"""

from __future__ import annotations

import argparse
import uuid

from tasks import REDIS_URL, erase_account, refund_payment, settle_payment

CURRENCIES = ("EUR", "USD", "JPY")


def enqueue(count: int) -> None:
    """Send ``count`` settlements, refunds and erasures, interleaved."""
    for number in range(count):
        order_id = uuid.uuid4().hex
        amount_cents = 100 + number % 900
        currency = CURRENCIES[number % len(CURRENCIES)]
        settle_payment.delay(order_id, amount_cents, currency)
        refund_payment.delay(order_id, amount_cents // 2, currency)
        erase_account.delay(f"user-{order_id[:12]}")


def count_argument(text: str) -> int:
    """Return the count that ``text`` spells.

    Raises:
        argparse.ArgumentTypeError: If it is not a whole number, 0 or more.
    """
    if not text.isdecimal():
        msg = f"must be a whole number, 0 or more, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def main() -> None:
    """Parse the command line, then send the tasks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "count", nargs="?", type=count_argument, default=10, help="tasks of each kind"
    )
    count = parser.parse_args().count
    enqueue(count)
    print(f"Sent {count} settlements, {count} refunds and {count} erasures to {REDIS_URL}")


if __name__ == "__main__":
    main()
