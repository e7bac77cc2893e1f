"""Tests for _veza_business_metrics_pytestplugin, the fixtures that pytest loads."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import veza_business_metrics as business

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from veza_business_metrics.testing import MetricsDelta

pytest_plugins = ["pytester"]


def test_fixtures_watch_the_default_instance(
    business_metrics: business.BusinessMetrics, business_metrics_delta: MetricsDelta
) -> None:
    """Without an override, the fixtures watch the default instance from the test's start."""
    assert business_metrics is business.DEFAULT_METRICS
    business.record_order_failed()
    business_metrics_delta.assert_changes(orders={"failed": 1})


def test_plugin_fixture_works_on_default_and_isolated_instances(
    pytester: pytest.Pytester,
) -> None:
    """The entry-point plugin gives the fixture, on the default or an overridden instance."""
    pytester.makepyfile(
        test_default=textwrap.dedent("""
            import veza_business_metrics as business

            def test_login(business_metrics_delta):
                business.record_login_success()
                assert business_metrics_delta.logins["success"] == 1
                business_metrics_delta.assert_changes(logins={"success": 1})

            def test_starts_from_zero(business_metrics_delta):
                business_metrics_delta.assert_changes()
        """),
        test_isolated=textwrap.dedent("""
            import pytest
            from prometheus_client import CollectorRegistry
            from veza_business_metrics import BusinessMetrics

            @pytest.fixture
            def business_metrics():
                return BusinessMetrics(CollectorRegistry())

            def test_revenue(business_metrics, business_metrics_delta):
                business_metrics.record_revenue(1999, "eur")
                assert business_metrics_delta.revenue_cents["EUR"] == 1999

            def test_mismatch_fails(business_metrics, business_metrics_delta):
                business_metrics.record_order_failed()
                business_metrics_delta.assert_changes(orders={"failed": 2})
        """),
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(['*veza_business_orders_total{status="failed"}*2*1'])
    # The failure shows the test's own line and the table, not the library's frames.
    result.stdout.fnmatch_lines(['>*assert_changes(orders={"failed": 2})'])
    result.stdout.no_fnmatch_line("*def assert_changes*")
    result.stdout.no_fnmatch_line("*testing.py*")


def test_plugin_imports_nothing_until_a_fixture_is_used(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a missing multiprocess directory, only the tests that use a fixture fail."""
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    pytester.makepyfile(
        test_plain=textwrap.dedent("""
            import sys

            def test_nothing_imported():
                assert "veza_business_metrics" not in sys.modules
                assert "prometheus_client" not in sys.modules

            def test_uses_the_fixture(business_metrics_delta):
                pass
        """),
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [f"*MultiprocessError: PROMETHEUS_MULTIPROC_DIR is '{missing}', which is not a directory*"]
    )
