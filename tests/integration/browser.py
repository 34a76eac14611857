"""Headless Chromium for the console's browser tests (benchmarks/chromium.py: Debian's
`chromium` driven through its `chromedriver` with Selenium), axe-core's accessibility check
injected from the axe-core-python wheel, and screenshots for docs/console.md when
FUNNEL_CONSOLE_SCREENSHOTS names a directory.

Without the browser the tests are skipped, unless FUNNEL_REQUIRE_BROWSER=1 (CI sets it, and
installs the packages), where its absence fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def start_chromium() -> Iterator[Any]:
    from benchmarks.chromium import browser_missing, chromium

    missing = browser_missing()
    if missing:
        if os.environ.get("FUNNEL_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    with chromium() as driver:
        yield driver


def axe_violations(driver: Any, impacts: tuple[str, ...] = ("serious", "critical")
                   ) -> list[dict[str, Any]]:
    """axe-core's violations of the page now in `driver`, of these impacts (WCAG 2.x A and
    AA rules, plus axe's best practices)."""
    import axe_core_python

    script = (Path(axe_core_python.__file__).parent / "axe.min.js").read_text()
    driver.execute_script(script)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: "
        "'critical', help: String(e), nodes: []}]));")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n.get("target") for n in v.get("nodes", [])][:5]}
            for v in result if v.get("impact") in impacts]


def screenshot(driver: Any, name: str) -> None:
    """docs/console.md's pictures, the whole page (not only the window): written when
    FUNNEL_CONSOLE_SCREENSHOTS names a folder."""
    import base64

    folder = os.environ.get("FUNNEL_CONSOLE_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"],
                 "height": min(size["height"], 2400), "scale": 1}})
    (Path(folder) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
