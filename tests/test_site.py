"""The built documentation site, as a reader sees it in a real browser: headless Chromium.

The site is built here with Sphinx, as the docs session builds it, so that the check
does not depend on the order of the sessions. Chromium comes from Debian's ``chromium``.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tempfile
from typing import TYPE_CHECKING, Any

import pytest

from helpers import ROOT, require_tool

if TYPE_CHECKING:
    from pathlib import Path

WIDTH = 1280
pytestmark = pytest.mark.once
# Appended to a page: once it has loaded, it writes what each table of the article needs
# and has, in pixels, into the DOM that --dump-dom prints.
PROBE = """
<script>
window.addEventListener("load", () => {
  const tables = [...document.querySelectorAll("article table")].map((table) => {
    const box = table.closest(".table-wrapper") || table.parentElement;
    return {
      header: [...table.rows[0].cells].map((cell) => cell.textContent.trim()),
      needs: table.scrollWidth,
      has: box.clientWidth,
      scrolls: box.scrollWidth > box.clientWidth,
      right: table.getBoundingClientRect().right,
    };
  });
  const viewport = document.documentElement.clientWidth;
  const out = document.createElement("pre");
  out.id = "veza-layout";
  out.textContent = JSON.stringify({viewport, tables});
  document.body.appendChild(out);
});
</script>
"""
# A table that cannot fit, to show that the probe sees an overflow when there is one.
CONTROL = f"<table><tr><th>control</th></tr><tr><td><code>{'x' * 300}</code></td></tr></table>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the documentation site as the docs session does, and give its directory."""
    sphinx = require_tool("sphinx-build")
    output = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sphinx, "-E", "-W", "--keep-going", "-n", "-q", "docs", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return output


def chromium(*arguments: str) -> str:
    """Run headless Chromium with a fresh profile and ``arguments``; return its stdout."""
    binary = require_tool("chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *arguments,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


def layout(page: Path, extra: str = "") -> dict[str, Any]:
    """Return the viewport width and each table's widths of ``page`` at WIDTH pixels."""
    probe = page.with_name(f"_probe_{page.name}")
    probe.write_text(page.read_text().replace("</article>", f"{extra}</article>{PROBE}", 1))
    dom = chromium(
        f"--window-size={WIDTH},900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    )
    match = re.search(r'<pre id="veza-layout">(.*?)</pre>', dom)
    assert match is not None, dom[-2000:]
    measured: dict[str, Any] = json.loads(match[1].replace("&quot;", '"').replace("&amp;", "&"))
    return measured


def overflowing(measured: dict[str, Any]) -> list[list[str]]:
    """Return the header of each table that needs a sideways scrollbar or leaves the page."""
    return [
        table["header"]
        for table in measured["tables"]
        if table["scrolls"]
        or table["needs"] > table["has"]
        or table["right"] > measured["viewport"]
    ]


def test_the_probe_sees_a_table_that_does_not_fit(site: Path) -> None:
    """A table with a 300-character word, added to the landing page, is reported too wide."""
    assert overflowing(layout(site / "index.html", CONTROL)) == [["control"]]


@pytest.mark.parametrize("page", ["index.html", "reference.html"])
def test_the_series_table_fits_at_1280_pixels(site: Path, page: str) -> None:
    """The series table shows every column at 1280 px wide, without a sideways scrollbar."""
    measured = layout(site / page)
    headers = [table["header"] for table in measured["tables"]]
    assert ["series, by label", "allowed label values", "how many series"] in headers
    series = [table for table in measured["tables"] if "allowed label values" in table["header"]]
    assert overflowing({**measured, "tables": series}) == []
    if page == "index.html":
        assert overflowing(measured) == []


def test_a_screenshot_of_the_landing_page_is_1280_pixels_wide(site: Path, tmp_path: Path) -> None:
    """Chromium renders the landing page to a PNG of the window's width, to look at."""
    screenshot = tmp_path / "index.png"
    chromium(
        f"--window-size={WIDTH},2400", f"--screenshot={screenshot}", (site / "index.html").as_uri()
    )
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (WIDTH, 2400)
