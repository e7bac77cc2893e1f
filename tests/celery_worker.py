"""The Celery example's app, with hooks that let a test kill a task's process mid-run.

A task whose first argument is ``stop-<point>`` stops at that point of its first run
until the test kills its process (30 s at the most):

- ``stop-before-record``: before the task starts;
- ``stop-after-record``: in ``refund_payment``, right after its last ``record_*`` call,
  before the task returns and its result is stored;
- ``stop-after-result``: once the task returned and its result is stored.

Each run of such a task leaves a file named ``<first argument>.<pid>`` in the directory
``CELERY_TEST_MARKERS``. ``CELERY_TEST_ACKS`` set to ``early`` or
``late-without-reject`` replaces the example's acknowledgement settings before the worker
binds its tasks.

Start it with ``celery -A celery_worker worker``, both this directory and
``examples/celery`` on ``PYTHONPATH``, and the metrics directory created.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import current_task, signals

import veza_business_metrics as business
from tasks import app

__all__ = ["app"]

# The main process waits this long for a result that a killed process may have sent
# before it declares the task lost (10 s by default); it changes no outcome, only when.
app.conf.worker_lost_wait = 1.0

ACKS = os.environ.get("CELERY_TEST_ACKS")
if ACKS == "early":
    app.conf.task_acks_late = False
elif ACKS == "late-without-reject":
    app.conf.task_reject_on_worker_lost = False


def _stop(point: str, args: object) -> None:
    if not isinstance(args, list | tuple) or not args or args[0] != f"stop-{point}":
        return
    markers = Path(os.environ["CELERY_TEST_MARKERS"])
    first_run = not any(markers.glob(f"{args[0]}.*"))
    (markers / f"{args[0]}.{os.getpid()}").touch()
    if first_run:
        time.sleep(30)


@signals.task_prerun.connect
def _before_task(args: object = None, **_: object) -> None:
    _stop("before-record", args)


@signals.task_postrun.connect
def _after_result(args: object = None, **_: object) -> None:
    _stop("after-result", args)


_record_order_refunded = business.record_order_refunded


def _record_order_refunded_then_stop() -> None:
    _record_order_refunded()
    _stop("after-record", current_task.request.args)


business.record_order_refunded = _record_order_refunded_then_stop
