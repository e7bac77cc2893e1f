"""Serve /metrics on 127.0.0.1 with a few business events already recorded.

Run it with ``python examples/quickstart.py [--port N]`` where the package is installed.
For a shop with traffic, ``python3 scripts/dev.py demo`` serves examples/fastapi_app.py.
"""

from __future__ import annotations

import argparse
import threading

from prometheus_client import start_http_server

import veza_business_metrics as business


def record_sample_events() -> None:
    """Record what a few minutes of a small shop would produce."""
    for _ in range(3):
        business.record_login_success()
    business.record_login_failure_credentials()
    business.record_login(business.LoginOutcome.FAILURE_2FA)
    business.record_order_created()
    business.record_order_created()
    business.record_revenue(1999, "EUR")
    business.record_order_completed()
    business.record_order_event(business.OrderStatus.REFUNDED)
    business.record_refund(500, "eur")
    business.record_account_deletion()


def main() -> None:
    """Record the sample events, then serve /metrics until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    record_sample_events()
    server, thread = start_http_server(args.port, addr="127.0.0.1")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    print(f"Serving {url}", flush=True)
    print(f"Try: curl -s {url} | grep veza_business", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
        thread.join()


if __name__ == "__main__":
    main()
