"""A real browser on the demo page: headless Chromium driven by selenium.

The page is served by ``megapresence serve`` (asyncio and trio) and, mounted in a
Starlette app, by uvicorn and Hypercorn (``asgi_apps.demo_app``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).
Outside CI, a machine without them skips these tests and says why; under CI
they must run.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .asgi_process import CHAT_ENV, SERVERS, asgi_server
from .browser_helpers import skip_without_chromium
from .process_helpers import Command
from .test_example_fastapi import log_in as example_log_in
from .test_example_fastapi import socket as example_socket

skip_without_chromium()

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


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


def members(driver: webdriver.Chrome, channel: str) -> list[str]:
    """The member rows the page shows for ``channel``, as their text."""
    texts: list[str] = driver.execute_script(MEMBER_TEXTS, channel)
    return texts


#: Read in one go: the page re-renders a channel's rows on every change.
MEMBER_TEXTS = """
const rows = document.querySelectorAll(`section[data-channel="${arguments[0]}"] .member`);
return [...rows].map((row) =>
  [...row.querySelectorAll("span")].map((span) => span.textContent).join(" "));
"""


def log_text(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.ID, "log").text)


def state(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.ID, "state").get_attribute("data-state"))


@pytest.mark.parametrize("how", ["asyncio", "trio", *SERVERS])
def test_two_pages_watch_each_other_join_update_talk_leave_and_the_kick(
    browser: webdriver.Chrome, second_browser: webdriver.Chrome, tmp_path: Path, how: str
) -> None:
    with demo_server(how, tmp_path) as port:
        base = f"http://127.0.0.1:{port}"
        ann, bob = browser, second_browser
        wait_ann, wait_bob = WebDriverWait(ann, 15), WebDriverWait(bob, 15)
        ann.get(f"{base}/?user=ann&channels=lobby")
        wait_ann.until(lambda d: members(d, "lobby") == ["ann (you) online"])
        assert state(ann) == "open"
        bob.get(f"{base}/?user=bob&channels=lobby,dev")
        wait_ann.until(lambda d: members(d, "lobby") == ["ann (you) online", "bob online"])
        assert "bob joined #lobby" in log_text(ann)
        wait_bob.until(lambda d: members(d, "lobby") == ["ann online", "bob (you) online"])
        wait_bob.until(lambda d: members(d, "dev") == ["bob (you) online"])
        counts = ann.find_element(By.CSS_SELECTOR, 'section[data-channel="lobby"] .count')
        assert counts.text == "2 users, 2 sessions"

        # An update (metadata), seen as one, not as a leave and a join.
        Select(bob.find_element(By.ID, "status")).select_by_visible_text("away")
        bob.find_element(By.CSS_SELECTOR, "#meta button").click()
        wait_ann.until(lambda d: members(d, "lobby") == ["ann (you) online", "bob away"])
        assert "bob in #lobby is now away" in log_text(ann)
        assert "bob left" not in log_text(ann)

        # A message to a channel, signed by the server; one to #dev reaches only bob.
        bob.find_element(By.ID, "text").send_keys("hello lobby")
        bob.find_element(By.CSS_SELECTOR, "#say button").click()
        wait_ann.until(lambda d: "#lobby bob: hello lobby" in log_text(d))
        Select(bob.find_element(By.ID, "channel")).select_by_visible_text("dev")
        bob.find_element(By.ID, "text").send_keys("hello dev")
        bob.find_element(By.CSS_SELECTOR, "#say button").click()
        wait_bob.until(lambda d: "#dev bob: hello dev" in log_text(d))

        # A direct message, and one that finds nobody.
        ann.find_element(By.ID, "to").send_keys("bob")
        ann.find_element(By.ID, "dmtext").send_keys("psst")
        ann.find_element(By.CSS_SELECTOR, "#dm button").click()
        wait_bob.until(lambda d: "(direct) ann: psst" in log_text(d))
        ann.find_element(By.ID, "to").clear()
        ann.find_element(By.ID, "to").send_keys("zed")
        ann.find_element(By.ID, "dmtext").send_keys("anyone?")
        ann.find_element(By.CSS_SELECTOR, "#dm button").click()
        wait_ann.until(lambda d: "nobody called zed is online" in log_text(d))
        assert "#dev" not in log_text(ann)

        # Ann joins #dev from the page; bob leaves #lobby from his.
        ann.find_element(By.ID, "newchannel").send_keys("dev")
        ann.find_element(By.CSS_SELECTOR, "#join button").click()
        wait_bob.until(lambda d: members(d, "dev") == ["ann online", "bob (you) away"])
        bob.find_element(By.CSS_SELECTOR, 'section[data-channel="lobby"] h2 button').click()
        wait_ann.until(lambda d: members(d, "lobby") == ["ann (you) online"])
        assert "bob left #lobby" in log_text(ann)

        with connect(f"ws://127.0.0.1:{port}/ws/chat?user=root&channels=ops") as root:
            root.send('{"op":"roster"}')
            while True:
                message = json.loads(root.recv(5))
                if message["type"] == "roster":
                    break
            [session] = [m for m in message["payload"]["members"] if m["userId"] == "ann"]
            kick = {"op": "kick", "sessionId": session["sessionId"], "reason": "bye ann"}
            root.send(json.dumps(kick))
            wait_ann.until(
                lambda d: (
                    d.find_element(By.TAG_NAME, "body").get_attribute("data-close-code") == "1008"
                )
            )
            assert "closed: 1008 bye ann" in log_text(ann)
            assert state(ann) == "closed"  # kicked: it does not come back
            # Bob sees ann leave #dev at once: a kick skips the leave grace.
            wait_bob.until(lambda d: members(d, "dev") == ["bob (you) away"])


def test_the_page_fits_a_390_px_wide_phone(browser: webdriver.Chrome, tmp_path: Path) -> None:
    metrics = {"width": 390, "height": 760, "deviceScaleFactor": 2, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    with demo_server("asyncio", tmp_path) as port:
        browser.get(f"http://127.0.0.1:{port}/?user=ann&channels=lobby,dev")
        WebDriverWait(browser, 15).until(lambda d: members(d, "dev") == ["ann (you) online"])
        # Nothing scrolls sideways, and every control is on the screen.
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
        outside = browser.execute_script(
            "return [...document.querySelectorAll('input, button, select')]"
            ".filter((e) => { const r = e.getBoundingClientRect();"
            " return r.left < 0 || r.right > 390 || r.width === 0; })"
            ".map((e) => e.outerHTML)"
        )
        assert outside == []


def test_the_page_reconnects_by_itself_after_the_server_restarts(
    browser: webdriver.Chrome, second_browser: webdriver.Chrome, tmp_path: Path
) -> None:
    server = Command(tmp_path, "serve", "serve", "--port", "0")
    port = server.port
    ann, bob = browser, second_browser
    try:
        for driver, user in ((ann, "ann"), (bob, "bob")):
            driver.get(f"http://127.0.0.1:{port}/?user={user}&channels=lobby")
        for driver in (ann, bob):
            WebDriverWait(driver, 15).until(lambda d: len(members(d, "lobby")) == 2)
        for restarts, (sig, code) in enumerate(((signal.SIGTERM, 1001), (signal.SIGKILL, 1006)), 1):
            server.stop(sig)
            for driver in (ann, bob):
                WebDriverWait(driver, 15).until(
                    lambda d, code=code: f"connection lost ({code}" in log_text(d)
                )
            server = Command(tmp_path, "serve", "serve", "--port", str(port))
            for driver in (ann, bob):
                WebDriverWait(driver, 30).until(
                    lambda d: state(d) == "open" and len(members(d, "lobby")) == 2
                )
            with connect(f"ws://127.0.0.1:{port}/ws/chat?user=root&channels=ops") as root:
                root.send('{"op":"roster"}')
                while (roster := json.loads(root.recv(5)))["type"] != "roster":
                    pass
            users = sorted(m["userId"] for m in roster["payload"]["members"])
            assert users == ["ann", "bob", "root"]  # each page came back once
            log = log_text(ann).split("\n")
            assert log.count("connected") == 1 + restarts
            assert "ann left #lobby" not in log  # her own map came back without a false leave
        # A reload comes back as the same session, within the leave grace: no leave and join.
        before = log_text(ann).split("\n")
        bob.refresh()
        WebDriverWait(bob, 15).until(lambda d: state(d) == "open" and len(members(d, "lobby")) == 2)
        with connect(f"ws://127.0.0.1:{port}/ws/chat?user=root&channels=ops") as root:
            root.send('{"op":"roster"}')
            while (roster := json.loads(root.recv(5)))["type"] != "roster":
                pass
        bobs = [m for m in roster["payload"]["members"] if m["userId"] == "bob"]
        assert len(bobs) == 1  # not a second session next to a lingering first one
        assert [line for line in log_text(ann).split("\n")[len(before) :] if "bob" in line] == []
    finally:
        server.stop()


def test_the_fastapi_example_logs_in_with_its_form_and_chats(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    with asgi_server("uvicorn", "examples.fastapi_chat:app", tmp_path, **CHAT_ENV) as (port, _):
        wait = WebDriverWait(browser, 15)
        browser.get(f"http://127.0.0.1:{port}/")  # no cookie yet: to the login form
        wait.until(lambda d: d.current_url.endswith("/login"))
        browser.find_element(By.NAME, "user").send_keys("ann")
        browser.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: "ann (you)" in d.find_element(By.ID, "rosters").text)
        with example_socket(port, example_log_in(port, "bob", "lobby")) as bob:
            wait.until(lambda d: "bob joined #lobby" in d.find_element(By.ID, "log").text)
            assert "#lobby (2)" in browser.find_element(By.ID, "rosters").text
            publish = {
                "op": "publish",
                "channel": "lobby",
                "type": "chat",
                "payload": {"text": "hello ann"},
            }
            bob.send(json.dumps(publish))
            wait.until(lambda d: "#lobby bob: hello ann" in d.find_element(By.ID, "log").text)
            browser.find_element(By.ID, "text").send_keys("hi bob")
            browser.find_element(By.CSS_SELECTOR, "#say button").click()
            while True:
                message = json.loads(bob.recv(5))
                if message["type"] == "chat" and message["from"]["userId"] == "ann":
                    break
            assert (message["channel"], message["payload"]) == ("lobby", {"text": "hi bob"})
            browser.find_element(By.ID, "to").send_keys("zed")
            browser.find_element(By.ID, "dmtext").send_keys("hello?")
            browser.find_element(By.CSS_SELECTOR, "#dm button").click()
            wait.until(lambda d: "zed is not online" in d.find_element(By.ID, "log").text)
        wait.until(lambda d: "bob left #lobby" in d.find_element(By.ID, "log").text)
