r"""The shop's background tasks on Celery's prefork pool, with Redis as broker and result store.

Start a worker and beat from this directory, each with its own command::

    PROMETHEUS_MULTIPROC_DIR=/tmp/shop-worker-metrics celery -A tasks worker
    celery -A tasks beat

The worker's main process serves the counts of all its pool processes on
``http://127.0.0.1:9540/metrics``. ``SHOP_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``), ``SHOP_METRICS_PORT`` (default 9540) and
``SHOP_ERASURE_SWEEP_SECONDS`` (default 3600) override the broker, the port and the
schedule of the erasure sweep. ``enqueue.py`` sends the tasks, as the web tier does.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from celery import Celery

# Importing the package writes this process's zero series in PROMETHEUS_MULTIPROC_DIR,
# so the directory must exist first. The web tier and beat may run without the variable.
if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(directory).mkdir(parents=True, exist_ok=True)

import veza_business_metrics as business
import veza_business_metrics.celery

REDIS_URL = os.environ.get("SHOP_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("shop", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    # A settlement must not be lost with the pool process that ran it: the message is
    # acknowledged once the task has returned, and a process that dies before then
    # hands it back to the broker for another process to run again. Counting is then
    # at-least-once: a process killed after its record_* calls, before its result was
    # stored, has counted the event, and the second run counts it again. See
    # docs/hosts/celery.md for the other choice, at-most-once.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # A reserved message stays unacknowledged until its task ends. Redis hands out again
    # those of a worker killed as a whole only after its visibility timeout (1 hour):
    # reserving one per pool process keeps that to the tasks that were running.
    worker_prefetch_multiplier=1,
    # The result store then tells each task's name and arguments, to audit the counts.
    result_extended=True,
    beat_schedule={
        "erasure-sweep": {
            "task": "shop.sweep_erasures",
            "schedule": float(os.environ.get("SHOP_ERASURE_SWEEP_SECONDS", "3600")),
        },
    },
)
veza_business_metrics.celery.setup(app, port=int(os.environ.get("SHOP_METRICS_PORT", "9540")))


# No task retries on its own: a bad amount or currency fails the same way every time.
@app.task(name="shop.settle_payment")
def settle_payment(order_id: str, amount_cents: int, currency: str) -> str:
    """Count an order whose payment the provider settled, and the revenue it brought."""
    # The settlement itself would come first, idempotent by order_id: the counts come
    # last, so that a task killed before them has counted nothing. record_revenue checks
    # both arguments before it counts: a bad one fails the task with nothing counted.
    business.record_revenue(amount_cents, currency)
    business.record_order_completed()
    return order_id


@app.task(name="shop.refund_payment")
def refund_payment(order_id: str, amount_cents: int, currency: str) -> str:
    """Count an order refunded, and the amount it gave back."""
    business.record_refund(amount_cents, currency)
    business.record_order_refunded()
    return order_id


@app.task(name="shop.erase_account")
def erase_account(user_id: str) -> str:
    """Count an account erased at its owner's request."""
    business.record_account_deletion()
    return user_id


@app.task(name="shop.sweep_erasures")
def sweep_erasures() -> list[str]:
    """Erase the accounts whose grace period has ended; beat runs it on a schedule."""
    erased = due_for_erasure()
    for _ in erased:
        business.record_account_deletion()
    return erased


def due_for_erasure() -> list[str]:
    """Return the users whose erasure is due: one made-up user a sweep in this example."""
    return [f"user-{uuid.uuid4().hex[:12]}"]
