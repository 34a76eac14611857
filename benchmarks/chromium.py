"""Headless Chromium through Selenium, as the console's browser tests and `funnel bench
console` start it: Debian's `chromium` and its `chromedriver` (never Selenium Manager, which
would download a browser), and flags that keep Chromium off the network."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("FUNNEL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FUNNEL_CHROMEDRIVER", "/usr/bin/chromedriver")
# Chromium's own connections (updates, sync, field trials) are refused on a closed network;
# these flags keep it from trying
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en-US")


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} is not installed (Debian packages chromium and chromium-driver)"
    return None


@contextmanager
def chromium(*, cache: bool = True) -> Iterator[Any]:
    """A Selenium driver on headless Chromium with a fresh profile, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = browser_missing()
    if missing:
        raise RuntimeError(missing)
    profile = tempfile.mkdtemp(prefix="funnel-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    if not cache:
        opts.add_argument("--disk-cache-size=1")
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
