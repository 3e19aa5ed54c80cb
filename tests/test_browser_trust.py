"""Only the server controls a page, and a page that goes away leaves: in headless Chromium.

- A client cannot send a message of the server's types: the forged ``unsubscribed``,
  ``error``, ``welcome`` and ``presence.diff`` of issue 18 are refused before they
  reach anyone; and should one arrive with a sender's ``from`` (as from a server
  that let it through: ``test:to`` in ``tests/js_app.py``), the JavaScript client
  and the demo page take it for data, never for control or identity.
- The JavaScript client closes on ``pagehide``: navigating away is a leave after the
  grace, with and without the back/forward cache; coming back to the cached page
  connects again.
- The demo page shows every channel the server says its session is in, after a
  reload too, and lets the user leave it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from .browser_helpers import skip_without_chromium
from .test_browser_client import Page, rules_port, synced

skip_without_chromium()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

__all__ = ["rules_port"]  # the module's server, shared with the client's other tests

MALLORY = {"userId": "mallory", "sessionId": "m1"}
#: The forgeries of issue 18, as a peer's messages (what a server would deliver of them).
FORGED = [
    {"type": "unsubscribed", "channel": "room", "from": MALLORY},
    {"type": "error", "from": MALLORY, "payload": {"code": "x", "message": "log in at evil"}},
    {"type": "welcome", "from": MALLORY, "payload": {"userId": "mallory", "sessionId": "v1"}},
    {"type": "presence.diff", "channel": "room", "view": "users", "version": 1, "from": MALLORY}
    | {"joins": {"eve": {"userId": "eve", "sessions": []}}, "leaves": {}, "updates": {}},
]


@pytest.fixture
def mallory(rules_port: int) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{rules_port}/ws/chat?user=mallory&session=m1") as ws:
        assert json.loads(ws.recv(10))["type"] == "welcome"
        yield ws


def relay(mallory: ClientConnection, user: str, message: dict[str, Any]) -> None:
    """Deliver ``message`` to ``user`` as a server that checked nothing would."""
    mallory.send(f"test:to {user} {json.dumps(message)}")


def refused_forgeries(mallory: ClientConnection, user: str) -> None:
    """Every forgery, sent the three ways a client can send: each refused."""
    commands = [
        {"op": "publish", "channel": "room", "type": "unsubscribed"},
        {"op": "direct", "userId": user, "type": "error", "payload": {"code": "x"}},
        {"op": "broadcast", "channel": "room", "type": "welcome", "payload": MALLORY},
        {"op": "publish", "channel": "room", "type": "presence.diff"},
    ]
    for command in commands:
        mallory.send(json.dumps(command))
        while (reply := json.loads(mallory.recv(10)))["type"] != "error":
            pass
        assert reply["payload"]["code"] == "bad_command", reply


def test_forged_server_messages_do_nothing_to_the_client(
    browser: Any, rules_port: int, mallory: ClientConnection
) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('ann', '/ws/chat?user=ann&session=a-forged&channels=room');"
        "watch('ann', 'room', 'users'); clients.ann.connect();"
    )
    start = page.wait_for("ann", synced("room", ["ann"]))
    mallory.send(json.dumps({"op": "subscribe", "channel": "room"}))
    page.wait_for("ann", synced("room", ["ann", "mallory"]), after=start)
    refused_forgeries(mallory, "ann")
    before = len(page.events("ann"))
    for message in FORGED:
        relay(mallory, "ann", message)
    # They arrive as data, from mallory: a channel's to its onMessage, the rest to the client's.
    page.wait(
        "ann",
        lambda es: sum(e[0] in ("message", "channel") for e in es[before:]) == len(FORGED),
        "the relayed messages did not arrive",
    )
    arrived = page.events("ann")[before:]
    assert [e[0] for e in arrived] == ["channel", "message", "message", "channel"]
    assert all(e[-1]["from"] == MALLORY for e in arrived)
    # Nothing changed: still subscribed, in sync, no error, and a real join still shows.
    state = page.run(
        "const s = clients.ann.subscriptions.get('room');"
        "return [s.state, s.map.inSync, s.map.version, [...s.members.keys()].sort()]"
    )
    assert state[0] == "subscribed"
    assert state[1] is True
    assert state[3] == ["ann", "mallory"]
    page.run("makeClient('bob', '/ws/chat?user=bob&session=b-forged&channels=room');")
    page.run("clients.bob.connect()")
    page.wait_for("ann", ["join", "room", "bob"], after=before)
    page.run("clients.bob.close(); clients.ann.close()")


def log_lines(driver: Any) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#log > *")]


def channels_shown(driver: Any) -> list[str]:
    return [
        e.get_attribute("data-channel")
        for e in driver.find_elements(By.CSS_SELECTOR, "section[data-channel]")
    ]


def wait_until(driver: Any, check: Any, what: str) -> None:
    try:
        WebDriverWait(driver, 30, poll_frequency=0.05).until(lambda d: check(d))
    except Exception:
        raise AssertionError(f"{what}; the log: {log_lines(driver)}") from None


def test_forged_server_messages_do_nothing_to_the_demo_page(
    browser: Any, rules_port: int, mallory: ClientConnection
) -> None:
    browser.get(f"http://127.0.0.1:{rules_port}/?user=ann&channels=room")
    wait_until(browser, lambda d: d.find_element(By.ID, "who").text == "ann", "no welcome")
    wait_until(browser, lambda d: "ann" in d.find_element(By.ID, "rosters").text, "no roster")
    mallory.send(json.dumps({"op": "subscribe", "channel": "room"}))
    refused_forgeries(mallory, "ann")
    for message in FORGED:
        relay(mallory, "ann", message)
    relay(mallory, "ann", {"type": "chat", "channel": "room", "from": MALLORY, "payload": {}})
    wait_until(
        browser,
        lambda d: sum("mallory: " in line for line in log_lines(d)) >= len(FORGED) + 1,
        "the relayed messages were not shown",
    )
    lines = log_lines(browser)
    assert browser.find_element(By.ID, "who").text == "ann"  # not mallory's identity
    assert channels_shown(browser) == ["room"]  # not dropped by a forged unsubscribed
    assert not any(line.startswith("error") for line in lines), lines
    assert "eve" not in browser.find_element(By.ID, "rosters").text
    assert browser.execute_script("return sessionStorage.getItem('megapresence:ann')") != "v1"
    # Each shown as what mallory said, never as raw JSON of the envelope.
    assert not any('"type"' in line for line in lines), lines


def roster_of(port: int, channel: str) -> list[str]:
    """The users of ``channel`` as the server lists them (a fresh connection's roster)."""
    with connect(f"ws://127.0.0.1:{port}/ws/chat?user=probe&channels=probe") as probe:
        probe.recv(10)
        probe.send('{"op":"roster"}')
        while (roster := json.loads(probe.recv(10)))["type"] != "roster":
            pass
    members = {m["sessionId"]: m["userId"] for m in roster["payload"]["members"]}
    return sorted(members[s] for s in roster["payload"]["channels"].get(channel, []))


def wait_roster(port: int, channel: str, users: list[str], what: str) -> None:
    deadline = time.monotonic() + 30
    while (found := roster_of(port, channel)) != users:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {channel} lists {found}")
        time.sleep(0.2)


@pytest.mark.parametrize("cached", [True, False], ids=["bfcache", "no-store"])
def test_navigating_away_leaves_after_the_grace_and_back_comes_back(
    browser: Any, rules_port: int, cached: bool
) -> None:
    channel = f"away-{cached}"
    # /cached may be kept in the back/forward cache; the demo page (/) is no-store.
    page = Page(browser, rules_port, "/cached" if cached else "/")
    page.run(
        f"makeClient('eve', '/ws/chat?user=eve&session=eve-{cached}&channels={channel}');"
        f"watch('eve', '{channel}', 'users'); clients.eve.connect();"
        "window.shown = []; addEventListener('pageshow', (e) => window.shown.push(e.persisted));"
    )
    page.wait_for("eve", synced(channel, ["eve"]))
    wait_roster(rules_port, channel, ["eve"], "eve never joined")
    left_at = time.monotonic()
    browser.get(f"http://127.0.0.1:{rules_port}/away")
    wait_roster(rules_port, channel, [], "eve stayed present after leaving the page")
    assert time.monotonic() - left_at >= 4  # after the grace (5 s), not at once
    browser.back()
    restored = browser.execute_script("return window.shown ?? null")
    if cached:
        # The page came back from the cache, and its client connected again by itself.
        assert restored == [True]
        wait_roster(rules_port, channel, ["eve"], "the cached page did not come back")
        states = [e[1] for e in page.events("eve") if e[0] == "state"]
        assert [(s["state"], s.get("code"), s.get("reason")) for s in states][-3:] == [
            ("closed", 1000, "page hidden"),
            ("connecting", None, None),
            ("open", None, None),
        ]
        page.run("clients.eve.close()")
    else:
        assert restored is None  # loaded anew: nothing of the old page is left


def test_a_reload_shows_the_channels_the_server_restored_and_lets_the_user_leave_them(
    browser: Any, rules_port: int
) -> None:
    browser.get(f"http://127.0.0.1:{rules_port}/?user=ann&channels=lobby")
    wait_until(browser, lambda d: channels_shown(d) == ["lobby"], "no #lobby")
    browser.find_element(By.ID, "newchannel").send_keys("dev")
    browser.find_element(By.CSS_SELECTOR, "#join button").click()
    wait_until(browser, lambda d: channels_shown(d) == ["lobby", "dev"], "no #dev")
    wait_roster(rules_port, "dev", ["ann"], "ann never joined dev")
    # The reload's URL names lobby only; the server restores the session with dev too.
    browser.refresh()
    wait_until(browser, lambda d: sorted(channels_shown(d)) == ["dev", "lobby"], "no #dev")
    wait_until(browser, lambda d: "ann" in d.find_element(By.ID, "rosters").text, "no roster")
    with connect(f"ws://127.0.0.1:{rules_port}/ws/chat?user=bob&channels=dev") as bob:
        bob.recv(10)
        bob.send(json.dumps({"op": "publish", "channel": "dev", "type": "chat"} | HELLO))
        wait_until(browser, lambda d: "#dev bob: hi ann" in log_lines(d), "no message in #dev")
    assert not any('"type"' in line for line in log_lines(browser))  # never raw JSON
    leave = browser.find_element(By.CSS_SELECTOR, 'section[data-channel="dev"] h2 button')
    leave.click()
    wait_until(browser, lambda d: channels_shown(d) == ["lobby"], "#dev still shown")
    wait_roster(rules_port, "dev", [], "ann still in dev after leaving it")
    assert roster_of(rules_port, "lobby") == ["ann"]


HELLO = {"payload": {"text": "hi ann"}}


def test_the_client_answers_the_server_s_heartbeat(browser: Any, rules_port: int) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('hal', '/ws/chat?user=hal&session=hal-1&channels=beat'); clients.hal.connect();"
    )
    page.wait_for("hal", ["state", {"state": "open"}])
    beat = json.dumps({"type": "server.ping"})
    page.run(f"clients.hal.socket.send({json.dumps('test:send ' + beat)})")
    page.wait_for("hal", ["sent", {"op": "ping"}])
    # A peer's message of that type (as a server that checked nothing would relay it) is data.
    forged = {"type": "server.ping", "from": MALLORY}
    page.run(f"clients.hal.socket.send({json.dumps('test:send ' + json.dumps(forged))})")
    page.wait_for("hal", ["message", forged])
    assert [e for e in page.events("hal") if e == ["sent", {"op": "ping"}]] == [
        ["sent", {"op": "ping"}]
    ]
    page.run("clients.hal.close()")
