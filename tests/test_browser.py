"""A real browser on the demo page: headless Chromium driven by selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).
Outside CI, a machine without them skips these tests and says why; under CI
they must run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .process_helpers import Command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver); CI installs them",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
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
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_page_shows_roster_messages_and_the_kick(
    browser: webdriver.Chrome, tmp_path: Path, backend: str
) -> None:
    server = Command(
        tmp_path, "serve", "--backend", backend, "serve", "--port", "0", "--admin", "root"
    )
    try:
        base = f"http://127.0.0.1:{server.port}"
        wait = WebDriverWait(browser, 10)
        browser.get(f"{base}/?user=ann&channels=lobby")
        wait.until(lambda d: "ann (you)" in d.find_element(By.ID, "roster").text)

        with connect(f"ws://127.0.0.1:{server.port}/ws/chat?user=bob&channels=lobby") as bob:
            bob.send(
                json.dumps(
                    {
                        "op": "broadcast",
                        "channel": "lobby",
                        "type": "chat",
                        "payload": {"from": "bob", "text": "hello from bob"},
                    }
                )
            )
            wait.until(lambda d: "bob: hello from bob" in d.find_element(By.ID, "log").text)
            wait.until(lambda d: "bob" in d.find_element(By.ID, "roster").text)

        with connect(f"ws://127.0.0.1:{server.port}/ws/chat?user=root") as root:
            root.send('{"op":"roster"}')
            while True:
                message = json.loads(root.recv(5))
                if message["type"] == "roster":
                    break
            [ann] = [m for m in message["payload"]["members"] if m["userId"] == "ann"]
            root.send(
                json.dumps({"op": "kick", "sessionId": ann["sessionId"], "reason": "bye ann"})
            )
            wait.until(
                lambda d: (
                    d.find_element(By.TAG_NAME, "body").get_attribute("data-close-code") == "1008"
                )
            )
            assert "closed: 1008 bye ann" in browser.find_element(By.ID, "log").text
    finally:
        server.stop()
