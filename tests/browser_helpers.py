"""Headless Chromium driven by selenium, for the page and the JavaScript client.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).
Outside CI, a machine without them skips the browser tests and says why; under
CI they must run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def skip_without_chromium() -> None:
    """Skip the calling test module on a machine without Chromium, unless under CI."""
    if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install chromium "
            "chromium-driver); CI installs them",
            allow_module_level=True,
        )


def chromium(width: int = 1100, height: int = 760) -> Any:
    """A headless Chromium whose window is ``width`` x ``height``; quit it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)


def _quit_after() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser() -> Iterator[Any]:
    yield from _quit_after()


@pytest.fixture
def second_browser() -> Iterator[Any]:
    yield from _quit_after()
