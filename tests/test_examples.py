"""Tests for the runnable host apps in examples/."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_serves_the_recorded_events() -> None:
    """The quickstart prints its URL and curl line, then serves the events it recorded."""
    with subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "quickstart.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            serving = process.stdout.readline().split()
            curl = process.stdout.readline()
            assert serving[0] == "Serving"
            url = serving[1]
            assert url.startswith("http://127.0.0.1:")
            assert url.endswith("/metrics")
            assert f"curl -s {url}" in curl
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
                text = response.read().decode()
        finally:
            process.terminate()
            process.wait(timeout=10)
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("veza_business_") and sample.name.endswith("_total")
    }
    assert values[("veza_business_logins_total", (("outcome", "success"),))] == 3
    assert values[("veza_business_logins_total", (("outcome", "failure_locked"),))] == 0
    assert values[("veza_business_orders_total", (("status", "created"),))] == 2
    assert values[("veza_business_revenue_cents_total", (("currency", "EUR"),))] == 1999
    assert values[("veza_business_revenue_cents_total", (("currency", "EUR-refund"),))] == 500
    assert values[("veza_business_account_deletions_total", ())] == 1
