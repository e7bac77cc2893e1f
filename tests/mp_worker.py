"""A worker process for the multiprocess tests: it records what it is told on stdin.

It prints its pid, then waits for ``open`` before it creates any metric, so that a test
can prepare the files this pid will open. Each line is a command, answered with ``ok``:

- ``open``: create the metrics, which opens this pid's files;
- ``record N``: N successful logins, N euros (100 cents each), and N requests on the
  host application's own counter and histogram (each observed at 0.25 s);
- ``exit``: exit normally.

``PROMETHEUS_MULTIPROC_DIR`` must be set in its environment.
"""

from __future__ import annotations

import os
import sys


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
        command, _, argument = line.strip().partition(" ")
        if command == "record":
            for _ in range(int(argument)):
                business.record_login_success()
                business.record_revenue(100, "EUR")
                requests.labels("shop").inc()
                latency.observe(0.25)
        print("ok", flush=True)
        if command == "exit":
            return


if __name__ == "__main__":
    main()
