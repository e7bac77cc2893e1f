"""A worker process for the multiprocess tests: it records what it is told on stdin.

It prints its pid, then waits for ``open`` before it creates any metric, so that a test
can prepare the files this pid will open. Each line is a command, answered with ``ok``:

- ``open``: create the metrics, which opens this pid's files;
- ``record N``: N successful logins, N euros (100 cents each), and N requests on the
  host application's own counter and histogram (each observed at 0.25 s);
- ``traced I N``: the same as ``record N``, inside a sampled span whose ids are those of
  ``I`` (``span_ids``), with trace exemplars enabled;
- ``spin I``: for up to a minute, revenue of I cents inside the span of ``I``, then of I + 1 in the
  span of I + 1, and so on, answering once the first is written: for tests that kill a
  writer at any point;
- ``exit``: exit normally.

``PROMETHEUS_MULTIPROC_DIR`` must be set in its environment.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

# A spinning writer waits to be killed, but not for ever.
SPIN_SECONDS = 60
SPIN_COUNT = 10_000_000


def span_ids(number: int) -> tuple[int, int]:
    """Return the trace id and span id of the span numbered ``number``, both from it."""
    return number << 64 | number, number


@contextlib.contextmanager
def in_span(number: int) -> Iterator[None]:
    """Run the block in a sampled span whose ids are those of ``number``, exemplars on."""
    from opentelemetry import trace  # noqa: PLC0415

    import veza_business_metrics as business  # noqa: PLC0415

    business.enable_trace_exemplars()
    trace_id, span_id = span_ids(number)
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    context = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
    with trace.use_span(trace.NonRecordingSpan(context)):
        yield


def main() -> None:
    """Print the pid, then run commands from stdin until told to exit."""
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    from prometheus_client import Counter, Histogram  # noqa: PLC0415

    import veza_business_metrics as business  # noqa: PLC0415

    requests = Counter("host_requests_total", "Requests served by the host app.", ["route"])
    latency = Histogram("host_latency_seconds", "Host app latency.", buckets=(0.1, 0.5, 1.0))
    print("ok", flush=True)
    for line in sys.stdin:
        command, *arguments = line.split()
        if command in {"record", "traced"}:
            count = int(arguments[-1])
            with in_span(int(arguments[0])) if command == "traced" else contextlib.nullcontext():
                for _ in range(count):
                    business.record_login_success()
                    business.record_revenue(100, "EUR")
                    requests.labels("shop").inc()
                    latency.observe(0.25)
        elif command == "spin":
            first = int(arguments[0])
            deadline = time.monotonic() + SPIN_SECONDS
            for number in range(first, first + SPIN_COUNT):
                with in_span(number):
                    business.record_revenue(number, "EUR")
                if number == first:
                    print("ok", flush=True)
                elif time.monotonic() > deadline:
                    break
        print("ok", flush=True)
        if command == "exit":
            return


if __name__ == "__main__":
    main()
