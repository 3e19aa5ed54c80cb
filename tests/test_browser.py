"""A real browser on the demo page: headless Chromium driven by selenium.

The page is served by ``megapresence serve`` (asyncio and trio) and, mounted in a
Starlette app, by uvicorn and Hypercorn (``asgi_apps.demo_app``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).
Outside CI, a machine without them skips these tests and says why; under CI
they must run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .asgi_process import SERVERS, asgi_server
from .browser_helpers import skip_without_chromium
from .process_helpers import Command
from .test_example_fastapi import log_in as example_log_in
from .test_example_fastapi import socket as example_socket

skip_without_chromium()

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@contextmanager
def demo_server(how: str, tmp_path: Path) -> Iterator[int]:
    """The demo on a port: ``megapresence serve`` on a backend, or mounted in an ASGI app."""
    if how in SERVERS:
        with asgi_server(how, "tests.asgi_apps:demo_app", tmp_path) as (port, _):
            yield port
        return
    server = Command(tmp_path, "serve", "--backend", how, "serve", "--port", "0", "--admin", "root")
    try:
        yield server.port
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["asyncio", "trio", *SERVERS])
def test_the_page_shows_roster_messages_and_the_kick(
    browser: webdriver.Chrome, tmp_path: Path, how: str
) -> None:
    with demo_server(how, tmp_path) as port:
        base = f"http://127.0.0.1:{port}"
        wait = WebDriverWait(browser, 10)
        browser.get(f"{base}/?user=ann&channels=lobby")
        wait.until(lambda d: "ann (you)" in d.find_element(By.ID, "roster").text)

        with connect(f"ws://127.0.0.1:{port}/ws/chat?user=bob&channels=lobby") as bob:
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

        with connect(f"ws://127.0.0.1:{port}/ws/chat?user=root") as root:
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


def test_the_fastapi_example_logs_in_with_its_form_and_chats(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    with asgi_server("uvicorn", "examples.fastapi_chat:app", tmp_path) as (port, _):
        wait = WebDriverWait(browser, 10)
        browser.get(f"http://127.0.0.1:{port}/")  # no cookie yet: to the login form
        wait.until(lambda d: d.current_url.endswith("/login"))
        browser.find_element(By.NAME, "user").send_keys("ann")
        browser.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: "ann (you)" in d.find_element(By.ID, "roster").text)
        with example_socket(port, example_log_in(port, "bob", "lobby")) as bob:
            wait.until(lambda d: "bob" in d.find_element(By.ID, "roster").text)
            payload = {"from": "bob", "channel": "lobby", "text": "hello ann"}
            bob.send(json.dumps({"op": "broadcast", "channel": "lobby", "payload": payload}))
            wait.until(lambda d: "#lobby bob: hello ann" in d.find_element(By.ID, "log").text)
            browser.find_element(By.ID, "text").send_keys("hi bob")
            browser.find_element(By.CSS_SELECTOR, "#say button").click()
            while True:
                message = json.loads(bob.recv(5))
                if message["type"] == "chat" and message["payload"]["from"] == "ann":
                    break
            assert message["payload"] == {"from": "ann", "channel": "lobby", "text": "hi bob"}
