"""The JavaScript client's rules, in headless Chromium against real servers.

The client is loaded from the server (``/megapresence.js``) into a page of its
origin and driven through ``execute_script``; every callback it makes is
recorded in ``window.events`` with the client's name, and the test reads them
back. The jitter's random source is injected (always 0.25), so each reported
reconnect delay is known exactly; nothing here asserts how long anything took.

The server is the demo app with two test commands (``tests/js_app.py``) under
uvicorn, or ``megapresence serve`` killed and restarted on its port.
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from megapresence_core.wire import PresenceDiff, PresenceMap, PresenceState

from .asgi_process import asgi_server
from .browser_helpers import skip_without_chromium
from .process_helpers import Command

skip_without_chromium()

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: What the tests install in the page: the module, a recorder, and two helpers.
HARNESS = """
const done = arguments[arguments.length - 1];
import("/megapresence.js").then((mp) => {
  window.mp = mp;
  window.events = [];
  window.clients = {};
  window.makeClient = (name, url, options = {}) => {
    const log = (...entry) => window.events.push([name, ...entry]);
    class Recording extends WebSocket {
      send(data) {
        let sent = data;
        try { sent = JSON.parse(data); } catch {}
        log("sent", sent);
        super.send(data);
      }
    }
    const client = new mp.PresenceClient(url, {
      random: () => 0.25, WebSocket: Recording,
      onState: (state) => log("state", state),
      onMessage: (message) => log("message", message),
      onError: (payload) => log("error", payload),
      ...options,
    });
    window.clients[name] = client;
    return client;
  };
  window.watch = (name, channel, presence) => {
    const log = (...entry) => window.events.push([name, ...entry]);
    return window.clients[name].subscribe(channel, {
      presence,
      onJoin: (key) => log("join", channel, key),
      onLeave: (key) => log("leave", channel, key),
      onUpdate: (key, member, before) => log("update", channel, key, member, before ?? null),
      onSync: (members, sub) =>
        log("sync", channel, [...members.keys()].sort(), sub.map.version),
      onCount: (count) => log("count", channel, count),
      onMessage: (message) => log("channel", channel, message),
      onRecover: (result) => log("recover", channel, result),
    });
  };
  done(true);
}, (error) => done(String(error)));
"""

Event = list[Any]


@pytest.fixture(scope="module")
def rules_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with asgi_server("uvicorn", "tests.js_app:app", tmp_path_factory.mktemp("rules")) as (
        port,
        _,
    ):
        yield port


class Page:
    """A page of the server's origin with the client loaded."""

    def __init__(self, driver: Any, port: int, path: str = "/") -> None:
        self.driver = driver
        self.port = port
        driver.get(f"http://127.0.0.1:{port}{path}")
        assert driver.execute_async_script(HARNESS) is True

    def run(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def events(self, name: str | None = None) -> list[Event]:
        found: list[Event] = self.run("return window.events")
        return [e[1:] for e in found if name is None or e[0] == name]

    def wait(self, name: str, check: Callable[[list[Event]], bool], what: str) -> list[Event]:
        """The events of client ``name`` once ``check`` holds for them."""
        try:
            WebDriverWait(self.driver, 30, poll_frequency=0.05).until(
                lambda _: check(self.events(name))
            )
        except Exception:
            raise AssertionError(f"{what}; events of {name}: {self.events(name)}") from None
        return self.events(name)

    def wait_for(self, name: str, event: Event | Callable[[Event], bool], after: int = 0) -> int:
        """The index of the first event of ``name`` from ``after`` on that is ``event`` (or
        that ``event`` accepts), once there is one."""
        matches = event if callable(event) else event.__eq__
        events = self.wait(
            name, lambda es: any(matches(e) for e in es[after:]), f"no {event} after {after}"
        )
        return next(i for i in range(after, len(events)) if matches(events[i]))


def synced(channel: str, keys: list[str]) -> Callable[[Event], bool]:
    """An ``onSync`` of ``channel`` whose map holds ``keys`` (at any version: a snapshot
    taken mid-window lacks the window's changes, and the diff after it adds them)."""
    return lambda event: event[:3] == ["sync", channel, sorted(keys)]


def states(events: list[Event]) -> list[tuple[Any, ...]]:
    """The connection states reported, with the fields that matter."""
    found = []
    for kind, *rest in events:
        if kind == "state":
            s = rest[0]
            found.append(
                (s["state"], s.get("code"), s.get("attempt"), s.get("delay"))
                if s["state"] == "reconnecting"
                else (s["state"], s.get("code"))
            )
    return found


def server_says(message: dict[str, Any]) -> str:
    """A JavaScript string literal: the test command that has the server send ``message``."""
    return json.dumps("test:send " + json.dumps(message))


def gap_diff(channel: str) -> str:
    """The test command that has the server send a diff of ``channel`` (view users) that
    cannot follow any map: the client must ask for a ``sync``."""
    return server_says(
        {"type": "presence.diff", "channel": channel, "view": "users", "version": 10**6}
        | {"joins": {}, "leaves": {}, "updates": {}}
    )


def admin_kick(port: int, session_id: str, *, requeue: bool) -> None:
    with connect(f"ws://127.0.0.1:{port}/ws/chat?user=root&channels=ops") as root:
        kick = {"op": "kick", "sessionId": session_id, "reason": "test kick", "requeue": requeue}
        root.send(json.dumps(kick))
        root.recv(10)  # the welcome: the kick was read before the close


# ----------------------------------------------------------------- reconnects


def test_close_codes_back_off_reconnect_promptly_or_stop(browser: Any, rules_port: int) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('ann', '/ws/chat?user=ann&session=ann-rules&channels=codes');"
        "watch('ann', 'codes', 'users'); clients.ann.connect();"
    )
    page.wait_for("ann", synced("codes", ["ann"]))

    def close_and_come_back(cause: Callable[[], None]) -> list[Event]:
        before = len(page.events("ann"))
        cause()
        return page.wait(
            "ann",
            lambda es: any(map(synced("codes", ["ann"]), es[before:])),
            "no resubscribed snapshot after the reconnect",
        )[before:]

    seen = []
    for code in (1013, 1001, 1011):
        after = close_and_come_back(
            lambda code=code: page.run(f"clients.ann.socket.send('test:close {code}')")
        )
        seen.append(after)
    seen.append(close_and_come_back(lambda: admin_kick(rules_port, "ann-rules", requeue=True)))

    # Back off (from 2-4 s: 2.5 s with the draw 0.25) on 1013; promptly (from 0.5-1 s:
    # 0.625 s) on 1001 and anything else; now (within 250 ms: 62.5 ms) on 4503, the
    # drain's close; each open resets the attempts.
    delays = {1013: 2500, 1001: 625, 1011: 625, 4503: 62.5}
    for events, code in zip(seen, delays, strict=True):
        assert states(events) == [
            ("reconnecting", code, 1, delays[code]),
            ("connecting", None),
            ("open", None),
        ]
        # After each open the client subscribed again (from its stream position), and the
        # snapshot came.
        subscribe = {"op": "subscribe", "channel": "codes", "presence": "users"}
        resubscribed = next(
            i
            for i, e in enumerate(events)
            if e[0] == "sent"
            and isinstance(e[1], dict)
            and e[1] == {**subscribe, "since": e[1].get("since")}
        )
        assert events[resubscribed][1]["since"]["offset"] == 0  # nothing was published
        assert resubscribed < next(i for i, e in enumerate(events) if synced("codes", ["ann"])(e))

    # A normal close (the server's 1000) stops: reconnect only if the user wants to.
    before = len(page.events("ann"))
    page.run("clients.ann.socket.send('test:close 1000')")
    events = page.wait("ann", lambda es: ("closed", 1000) in states(es[before:]), "no 1000")
    assert states(events[before:]) == [("closed", 1000)]
    before = len(page.run("clients.ann.connect(); return window.events"))
    page.wait_for("ann", synced("codes", ["ann"]), after=before)

    before = len(page.events("ann"))
    admin_kick(rules_port, "ann-rules", requeue=False)
    events = page.wait("ann", lambda es: ("closed", 1008) in states(es[before:]), "no 1008")
    assert states(events[before:]) == [("closed", 1008)]  # stopped: no attempt, no timer
    assert page.run("return [clients.ann.state, clients.ann._timer]") == ["closed", None]
    with connect(f"ws://127.0.0.1:{rules_port}/ws/chat?user=root&channels=ops") as root:
        root.recv(10)
        root.send('{"op":"roster"}')
        while (roster := json.loads(root.recv(10)))["type"] != "roster":
            pass
        assert "ann" not in [m["userId"] for m in roster["payload"]["members"]]


def test_failed_attempts_double_the_delay_up_to_the_cap(browser: Any, rules_port: int) -> None:
    page = Page(browser, rules_port)
    # Nothing listens on the path's port 9 (discard): every attempt fails with 1006.
    page.run(
        "makeClient('lost', 'ws://127.0.0.1:9/ws', {baseDelay: 20, maxDelay: 100});"
        "clients.lost.connect();"
    )
    events = page.wait(
        "lost",
        lambda es: sum(s[0] == "reconnecting" for s in states(es)) >= 6,
        "fewer than six attempts",
    )
    reported = [s for s in states(events) if s[0] == "reconnecting"][:6]
    # Equal jitter with the draw 0.25: 0.625 of 20, 40, 80, then the 100 ms cap.
    assert reported == [
        ("reconnecting", 1006, attempt, delay)
        for attempt, delay in enumerate([12.5, 25, 50, 62.5, 62.5, 62.5], start=1)
    ]
    page.run("clients.lost.close()")
    assert page.run("return clients.lost.state") == "closed"


def test_the_browser_s_online_event_cuts_a_prompt_wait_short(browser: Any, rules_port: int) -> None:
    page = Page(browser, rules_port)
    # A first delay of 30-60 s: only the online event can bring it back within the test.
    page.run(
        "makeClient('net', '/ws/chat?user=net&session=net-1&channels=net',"
        " {baseDelay: 60000, maxDelay: 60000});"
        "watch('net', 'net', 'users'); clients.net.connect();"
    )
    page.wait_for("net", synced("net", ["net"]))
    # 1006 cannot be sent: uvicorn drops the connection instead, as a lost network would.
    page.run("clients.net.socket.send('test:close 1006')")
    page.wait_for(
        "net",
        [
            "state",
            {
                "state": "reconnecting",
                "attempt": 1,
                "delay": 37500,
                "code": 1006,
                "reason": "",
            },
        ],
    )
    page.run("window.dispatchEvent(new Event('online'))")
    page.wait(
        "net",
        lambda es: (
            states(es)[-3:]
            == [("reconnecting", 1006, 1, 37500), ("connecting", None), ("open", None)]
        ),
        "the online event did not reconnect",
    )
    page.run("clients.net.close()")


def test_a_version_gap_makes_the_client_ask_for_one_sync(browser: Any, rules_port: int) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('cat', '/ws/chat?user=cat&session=cat-gap&channels=gap');"
        "watch('cat', 'gap', 'users'); clients.cat.connect();"
    )
    first = page.wait_for("cat", synced("gap", ["cat"]))
    # Two diffs that cannot follow version 0, back to back: one sync, one fresh snapshot.
    gap = gap_diff("gap")
    page.run(f"clients.cat.socket.send({gap}); clients.cat.socket.send({gap})")
    resynced = page.wait_for("cat", synced("gap", ["cat"]), after=first + 1)
    sent = [e for e in page.events("cat")[first:resynced] if e[0] == "sent"]
    assert sent == [
        ["sent", json.loads(gap)],
        ["sent", json.loads(gap)],
        ["sent", {"op": "sync", "channel": "gap"}],
    ]
    assert page.run("return clients.cat.subscriptions.get('gap').map.inSync") is True
    # And the diffs that follow apply again.
    page.run(
        "makeClient('dan', '/ws/chat?user=dan&session=dan-gap&channels=gap');clients.dan.connect();"
    )
    page.wait_for("cat", ["join", "gap", "dan"], after=resynced)
    page.run("clients.dan.close(); clients.cat.close()")


def test_a_sync_refused_with_rate_limited_is_asked_again_after_a_backoff(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('eli', '/ws/chat?user=eli&session=eli-rate&channels=rate');"
        "watch('eli', 'rate', 'users'); clients.eli.connect();"
    )
    first = page.wait_for("eli", synced("rate", ["eli"]))
    # A diff that cannot follow, then more commands than the connection's burst (200): the
    # sync the diff makes the client send comes after them, and is refused.
    gap = gap_diff("rate")
    page.run(
        f"const socket = clients.eli.socket; socket.send({gap});"
        "for (let i = 0; i < 300; i++) socket.send(JSON.stringify({op: 'ping'}));"
    )
    resynced = page.wait_for("eli", synced("rate", ["eli"]), after=first + 1)
    events = page.events("eli")[first:resynced]
    syncs = [i for i, e in enumerate(events) if e == ["sent", {"op": "sync", "channel": "rate"}]]
    assert len(syncs) == 2, events[-20:]
    refused = [e for e in events[syncs[0] : syncs[1]] if e[0] == "error"]
    assert refused, "no refusal between the two syncs"
    assert {e[1]["code"] for e in refused} == {"rate_limited"}
    assert page.run("return clients.eli.subscriptions.get('rate').map.inSync") is True
    page.run("clients.eli.close()")


def test_a_subscribe_refused_by_the_command_rate_is_sent_again_after_a_backoff(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('gil', '/ws/chat?user=gil&session=gil-rate&channels=lobby');"
        "clients.gil.connect();"
    )
    page.wait("gil", lambda es: ("open", None) in states(es), "never opened")
    # More commands than the connection's burst (200), then a subscribe: refused with a
    # rate_limited that names no channel, then sent again after 0.625 s (0.25 of 0.5-1 s).
    page.run(
        "for (let i = 0; i < 300; i++) clients.gil.send({op: 'ping'});"
        "watch('gil', 'later', 'users');"
    )
    done = page.wait_for("gil", synced("later", []))
    events = page.events("gil")[:done]
    subscribes = [
        i for i, e in enumerate(events) if e[0] == "sent" and e[1].get("channel") == "later"
    ]
    assert len(subscribes) == 2, events[-10:]
    refused = [e[1] for e in events[subscribes[0] : subscribes[1]] if e[0] == "error"]
    assert refused
    assert {(e["code"], e.get("channel")) for e in refused} == {("rate_limited", None)}
    assert page.run("return clients.gil.subscriptions.get('later').state") == "subscribed"
    page.run("clients.gil.close()")


@pytest.mark.parametrize("code", ["rate_limited", "busy", "channel_full"])
def test_a_resubscribe_refused_for_now_is_sent_again_with_its_since(
    browser: Any, rules_port: int, code: str
) -> None:
    # busy and channel_full name their channel; the command rate's rate_limited names
    # none, and any unanswered subscribe may be the one it refused.
    page = Page(browser, rules_port)
    page.run(
        "makeClient('hoy', '/ws/chat?user=hoy&session=hoy-1&channels=lobby',"
        " {positionCheck: 100}); watch('hoy', 'busy', 'none'); clients.hoy.connect();"
    )
    page.wait_for("hoy", lambda e: e[0] == "sent" and op_of(e[1]) == "position")  # subscribed
    position = page.run("return clients.hoy.subscriptions.get('busy').position")
    error: dict[str, Any] = {"code": code, "message": "later"}
    if code != "rate_limited":
        error["channel"] = "busy"
    start = len(page.events("hoy"))
    page.run(  # as if its resubscribe (after a reconnect, say) were still unanswered
        "clients.hoy.subscriptions.get('busy').state = 'pending';"
        f"clients.hoy.socket.send({server_says({'type': 'error', 'payload': error})});"
    )
    again = page.wait_for("hoy", lambda e: e[0] == "sent" and op_of(e[1]) == "subscribe", start)
    assert page.events("hoy")[again][1]["since"] == position
    told = page.wait_for("hoy", lambda e: e[0] == "recover", again)
    assert page.events("hoy")[told][2]["recovered"] is True
    assert page.run("return clients.hoy.subscriptions.get('busy').state") == "subscribed"
    page.run("clients.hoy.close()")


def test_an_error_naming_a_channel_refuses_its_pending_subscribe_only_if_it_answers_one(
    browser: Any, rules_port: int
) -> None:
    # An error names its command's channel, not its command: a publish's not_subscribed
    # that arrives while the channel's subscribe is unanswered is not that subscribe's.
    page = Page(browser, rules_port)
    page.run(
        "makeClient('fay', '/ws/chat?user=fay&session=fay-pend&channels=lobby');"
        "watch('fay', 'lobby', 'none'); clients.fay.connect();"
    )
    page.wait("fay", lambda es: ("open", None) in states(es), "never opened")
    error = {"code": "not_subscribed", "message": "subscribe to the channel first"}
    said = server_says({"type": "error", "payload": error | {"channel": "pend"}})
    page.run(f"clients.fay.socket.send({said}); watch('fay', 'pend', 'users');")
    page.wait_for("fay", synced("pend", []))
    assert page.run("return clients.fay.subscriptions.get('pend').state") == "subscribed"
    # One that answers a subscribe does refuse it.
    said = server_says({"type": "error", "payload": {"code": "forbidden", "channel": "shut"}})
    page.run(f"clients.fay.socket.send({said}); watch('fay', 'shut', 'users');")
    page.wait(
        "fay", lambda es: ["error", {"code": "forbidden", "channel": "shut"}] in es, "no error"
    )
    assert page.run("return clients.fay.subscriptions.has('shut')") is False
    page.run("clients.fay.close()")


def test_a_snapshot_s_missing_member_leaves_only_if_the_next_diff_does_not_bring_it_back(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('kim', '/ws/chat?user=kim&session=kim-1&channels=held');"
        "watch('kim', 'held', 'users'); clients.kim.connect();"
    )
    start = page.wait_for("kim", synced("held", ["kim"]))
    a, b, c = ({"userId": u, "sessions": []} for u in "abc")
    b2 = {"userId": "b", "sessions": [{"sessionId": "b-2", "metadata": None}]}
    view = {"type": "presence.state", "channel": "held", "view": "users"}
    diff = {"type": "presence.diff", "channel": "held", "view": "users"}
    steps = [
        view | {"version": 0, "members": {"a": a, "b": b, "c": c}},
        # A reconnect's snapshot, taken mid-window: b and c are missing from it ...
        view | {"version": 0, "members": {"a": a}},
        # ... and the window's diff brings b back (changed) but not c.
        diff | {"version": 1, "joins": {"b": b2}, "leaves": {}, "updates": {}},
    ]
    for step in steps:
        page.run(f"clients.kim.socket.send({server_says(step)})")
    page.wait_for("kim", synced("held", ["a", "b"]), after=start + 1)
    changes = [
        e[:3] for e in page.events("kim")[start + 1 :] if e[0] in ("join", "leave", "update")
    ]
    assert changes == [
        ["join", "held", "a"],
        ["join", "held", "b"],
        ["join", "held", "c"],
        ["leave", "held", "kim"],  # lacking from the first crafted snapshot and not back
        ["update", "held", "b"],  # back with another session: an update, no leave
        ["leave", "held", "c"],  # not back: it left after all
    ]
    page.run("clients.kim.close()")


def test_watchers_see_joins_updates_leaves_counts_and_messages(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('eve', '/ws/chat?user=eve&session=eve-1&channels=room');"
        "watch('eve', 'room', 'users'); clients.eve.connect();"
    )
    page.wait_for("eve", synced("room", ["eve"]))
    page.run(
        "makeClient('fay', '/ws/chat?user=fay&session=fay-1&channels=room');"
        "watch('fay', 'room', 'sessions'); watch('fay', 'counted', 'count');"
        "clients.fay.connect();"
    )
    page.wait_for("eve", ["join", "room", "fay"])
    page.wait_for("fay", synced("room", ["eve-1", "fay-1"]))
    page.wait_for("fay", ["count", "counted", {"sessions": 1, "users": 1}])

    page.run("clients.fay.setMetadata({status: 'away'})")
    member = {"userId": "fay", "sessions": [{"sessionId": "fay-1", "metadata": {"status": "away"}}]}
    before = {
        "userId": "fay",
        "sessions": [{"sessionId": "fay-1", "metadata": {"status": "online", "admin": False}}],
    }
    page.wait_for("eve", ["update", "room", "fay", member, before])

    page.run("watch('eve', 'counted', 'none')")  # present only: counted, told nothing
    page.wait_for("fay", ["count", "counted", {"sessions": 2, "users": 2}])

    page.run("clients.fay.publish('room', 'chat', {text: 'hi'})")
    message = {
        "type": "chat",
        "channel": "room",
        "from": {"userId": "fay", "sessionId": "fay-1"},
        "payload": {"text": "hi"},
    }
    position = {"offset": int, "epoch": str}  # its place in the channel's stream

    def is_the_message(event: Event) -> bool:
        if event[:2] != ["channel", "room"]:
            return False
        got = dict(event[2])
        kinds = {key: type(got.pop(key, None)) for key in position}
        return got == message and kinds == position

    page.wait_for("eve", is_the_message)

    found = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([clients.eve.direct('nobody', 'direct', 'x'),"
        " clients.eve.direct('fay', 'direct', 'y')]).then(done, (e) => done(String(e)));"
    )
    assert found == [False, True]

    page.run("clients.fay.unsubscribe('room')")
    page.wait_for("eve", ["leave", "room", "fay"])  # at once: an unsubscribe has no grace
    page.run("clients.eve.close(); clients.fay.close()")


def test_a_reconnect_within_the_grace_resubscribes_without_false_leaves(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    for name in ("gus", "hal"):
        page.run(
            f"makeClient('{name}', '/ws/chat?user={name}&session={name}-1&channels=grace');"
            f"watch('{name}', 'grace', 'users'); clients.{name}.connect();"
        )
    both = page.wait_for("hal", synced("grace", ["gus", "hal"]))
    start = len(page.events("gus"))
    admin_kick(rules_port, "gus-1", requeue=True)  # 4503: the session is kept for the grace
    page.wait(
        "gus",
        lambda es: any(map(synced("grace", ["gus", "hal"]), es[start:])),
        "gus did not get a fresh snapshot after reconnecting",
    )
    gus = page.events("gus")[start:]
    assert not [e for e in gus if e[0] in ("join", "leave", "update")]  # nothing changed
    assert ("reconnecting", 4503, 1, 62.5) in states(gus)  # now: 0.25 of 250 ms
    hal = page.events("hal")[both + 1 :]
    assert not [e for e in hal if e[0] in ("join", "leave")]  # no false offline for hal
    page.run("clients.gus.close(); clients.hal.close()")


def test_metadata_and_unsubscribes_outlive_a_reconnect(browser: Any, rules_port: int) -> None:
    # A restored session takes the new identity's metadata and channels: the client sends
    # its own metadata again, and an unsubscribe made while it was away.
    page = Page(browser, rules_port)
    page.run(
        "makeClient('max', '/ws/chat?user=max&session=max-1&channels=meta,gone');"
        "watch('max', 'meta', 'users'); clients.max.connect();"
    )
    page.wait_for("max", synced("meta", ["max"]))
    page.run("clients.max.setMetadata({status: 'away'})")
    page.wait_for("max", lambda e: e[:3] == ["update", "meta", "max"])
    start = len(page.events("max"))
    page.run("clients.max.socket.send('test:close 1011')")
    page.wait_for("max", lambda e: e[0] == "state" and e[1]["state"] == "reconnecting", start)
    page.run("clients.max.unsubscribe('gone')")
    reopened = page.wait_for("max", ["state", {"state": "open"}], start)
    page.wait_for("max", synced("meta", ["max"]), reopened)
    sent = [e[1] for e in page.events("max")[reopened:] if e[0] == "sent"]
    assert sent[:2] == [
        {"op": "metadata", "metadata": {"status": "away"}},
        {"op": "unsubscribe", "channel": "gone"},
    ]
    status = "return clients.max.subscriptions.get('meta').members.get('max').sessions[0]"
    page.wait("max", lambda _: page.run(status + ".metadata.status") == "away", "not away")
    assert page.run("return clients.max._left.size") == 0  # the server confirmed it
    with connect(f"ws://127.0.0.1:{rules_port}/ws/chat?user=root&channels=ops") as root:
        root.recv(10)
        root.send('{"op":"roster"}')
        while (roster := json.loads(root.recv(10)))["type"] != "roster":
            pass
        assert "max-1" not in roster["payload"]["channels"].get("gone", [])
        assert "max-1" in roster["payload"]["channels"]["meta"]
    page.run("clients.max.close()")


def test_a_client_whose_session_another_tab_took_stops_and_says_so(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    url = "/ws/chat?user=ivy&session=ivy-tab&channels=tabs"
    for name in ("first", "second"):
        page.run(
            f"makeClient('{name}', '{url}', {{onDetached: (m) => window.events.push("
            f"['{name}', 'detached', m])}}); watch('{name}', 'tabs', 'users');"
            f"clients.{name}.connect();"
        )
        page.wait_for(name, synced("tabs", ["ivy"]))
    detached = {"type": "session.detached", "sessionId": "ivy-tab", "reason": "replaced"}
    page.wait_for("first", ["detached", detached])
    events = page.wait("first", lambda es: ("closed", 1000) in states(es), "no close")
    # It stopped: no reconnect (which would take the session back from the second tab).
    assert [s for s in states(events) if s[0] != "connecting"][-2:] == [
        ("open", None),
        ("closed", 1000),
    ]
    assert page.run("return [clients.first.state, clients.first._timer]") == ["closed", None]
    assert page.run("return clients.second.state") == "open"
    page.run("clients.second.close()")


def test_a_reconnect_recovers_the_channel_messages_missed_meanwhile(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    for name in ("ida", "jon"):
        page.run(  # a "now" of 2.5 s (0.25 of 10 s): the publishes below are missed
            f"makeClient('{name}', '/ws/chat?user={name}&session={name}-1&channels=news',"
            " {nowJitter: 10000});"
            f"watch('{name}', 'news', 'count'); clients.{name}.connect();"
        )
    page.wait_for("ida", ["count", "news", {"sessions": 2, "users": 2}])
    page.run("clients.jon.publish('news', 'n', 1)")
    page.wait_for("ida", lambda e: e[:2] == ["channel", "news"] and e[2]["payload"] == 1)
    admin_kick(rules_port, "ida-1", requeue=True)  # 4503: back in 2.5 s, within the grace
    page.run("for (const n of [2, 3, 4]) clients.jon.publish('news', 'n', n)")
    recovered = page.wait_for("ida", lambda e: e[0] == "recover")
    page.run("clients.jon.publish('news', 'n', 5)")
    ida = page.wait(
        "ida",
        lambda es: any(e[:2] == ["channel", "news"] and e[2]["payload"] == 5 for e in es),
        "no 5",
    )
    result = ida[recovered][2]
    assert (result["recovered"], result["reason"]) == (True, None)
    got = [(e[2]["payload"], e[2]["offset"]) for e in ida if e[:2] == ["channel", "news"]]
    assert [n for n, _ in got] == [1, 2, 3, 4, 5]  # each exactly once, in order
    assert [o - got[0][1] for _, o in got] == [0, 1, 2, 3, 4]  # consecutive offsets
    sent = [e[1] for e in ida if e[0] == "sent" and e[1].get("op") == "subscribe"]
    assert "since" not in sent[0]
    assert sent[-1]["since"]["offset"] >= got[0][1]
    page.run("clients.ida.close(); clients.jon.close()")


def op_of(sent: Any) -> Any:
    """The ``op`` of a command the client sent (None for a test's plain-text one)."""
    return sent.get("op") if isinstance(sent, dict) else None


def test_a_position_check_out_of_step_resubscribes_with_since(
    browser: Any, rules_port: int
) -> None:
    page = Page(browser, rules_port)
    page.run(
        "makeClient('kai', '/ws/chat?user=kai&session=kai-1&channels=news', "
        "{positionCheck: 100}); watch('kai', 'news', 'none'); clients.kai.connect();"
    )
    page.wait_for("kai", lambda e: e[0] == "sent" and op_of(e[1]) == "position")  # subscribed
    page.run("clients.kai.publish('news', 'n', 1)")
    got = page.wait_for("kai", lambda e: e[:2] == ["channel", "news"] and e[2]["payload"] == 1)
    at = page.events("kai")[got][2]["offset"]
    checked = page.wait_for("kai", lambda e: e[0] == "sent" and op_of(e[1]) == "position", got)
    position = page.events("kai")[checked][1]
    assert (position["channel"], position["offset"]) == ("news", at)
    held = position["epoch"]
    # A stream.missed whose position it holds already (a reset crossed it): nothing to do.
    caught_up = {"type": "stream.missed", "channel": "news", "offset": at, "epoch": held}
    page.run(f"clients.kai.socket.send({server_says(caught_up)})")
    missed = {"type": "stream.missed", "channel": "news", "offset": 7, "epoch": "other.1"}
    start = len(page.events("kai"))
    page.run(f"clients.kai.socket.send({server_says(missed)})")
    told = page.wait_for("kai", lambda e: e[0] == "recover", start)
    kai = page.events("kai")
    resubscribes = [e[1] for e in kai if e[0] == "sent" and op_of(e[1]) == "subscribe"]
    assert resubscribes[-1]["since"] == {"offset": at, "epoch": held}
    assert len(resubscribes) == 2  # the caught-up one asked nothing
    # The server's stream is where the client is: recovered, nothing missing.
    assert (kai[told][2]["recovered"], kai[told][2]["offset"]) == (True, at)

    def says(message: dict[str, Any]) -> str:
        return f"clients.kai.socket.send({server_says(message)});"

    def channel(offset: int, payload: str) -> dict[str, Any]:
        return {"type": "n", "channel": "news", "offset": offset, "epoch": held, "payload": payload}

    # A resubscribe refused for now (busy) holds what comes until its answer: the
    # recovery that answers covers them (here the server's stream is at the position, so
    # the two held ones, sent by the test, are dropped as the recovery's), and no retry
    # follows an answer.
    refused = {"type": "error", "payload": {"code": "busy", "message": "later"}}
    refused["payload"]["channel"] = "news"
    start = len(page.events("kai"))
    page.run(
        says(missed) + says(refused) + says(channel(at + 1, "next")) + says(channel(at, "dup"))
    )
    page.wait_for("kai", lambda e: e[0] == "recover", start)
    page.run(says(channel(at + 2, "last")))
    page.wait_for("kai", lambda e: e[:2] == ["channel", "news"] and e[2]["payload"] == "last")
    kai = page.events("kai")[start:]
    got = [e[2]["payload"] for e in kai if e[:2] == ["channel", "news"]]
    assert got == ["last"]
    assert page.run("return clients.kai.subscriptions.get('news')._retryTimer") is None
    # While a subscribe is unanswered (its answer brings the position), nothing is asked.
    start = len(page.events("kai"))
    pending = "clients.kai.subscriptions.get('news').state = 'pending';"
    page.run(pending + says(missed) + says(channel(at + 3, "after")))
    page.wait_for("kai", lambda e: e[:2] == ["channel", "news"] and e[2]["payload"] == "after")
    sent = [e[1] for e in page.events("kai")[start:] if e[0] == "sent"]
    assert [op_of(command) for command in sent] == [None, None]  # the two test commands
    page.run("clients.kai.close()")


def test_a_restarted_serve_is_reconnected_to_after_1001_and_1006(
    browser: Any, tmp_path: Path
) -> None:
    server = Command(tmp_path, "serve", "serve", "--port", "0")
    port = server.port
    try:
        page = Page(browser, port)
        page.run(
            "makeClient('ivy', '/ws/chat?user=ivy&session=ivy-1&channels=lobby');"
            "watch('ivy', 'lobby', 'users'); clients.ivy.connect();"
        )
        page.wait_for("ivy", synced("lobby", ["ivy"]))
        # SIGTERM on a server alone: 1001 (its sessions have nowhere to move, so no
        # 4503), reconnected to as promptly as after a crash (1006).
        for sig, code, delay in ((signal.SIGTERM, 1001, 625), (signal.SIGKILL, 1006, 625)):
            start = len(page.events("ivy"))
            retry = ("reconnecting", code, 1, delay)
            server.stop(sig)
            page.wait("ivy", lambda es, s=start, r=retry: r in states(es[s:]), "no retry")
            server = Command(tmp_path, "serve", "serve", "--port", str(port))
            page.wait(
                "ivy",
                lambda es, s=start: any(map(synced("lobby", ["ivy"]), es[s:])),
                "no snapshot from the restarted server",
            )
            assert states(page.events("ivy")[start:])[0] == retry
            assert states(page.events("ivy"))[-1] == ("open", None)
            # A new process is a new stream: the app is told nothing was recovered.
            told = page.wait_for("ivy", lambda e: e[0] == "recover", start)
            result = page.events("ivy")[told][2]
            assert (result["recovered"], result["reason"], result["offset"]) == (False, "epoch", 0)
    finally:
        server.stop()


# ------------------------------------------------- agreement with PresenceMap


def sequences(seed: int, count: int) -> list[list[dict[str, Any]]]:
    """Message sequences for one map: snapshots, diffs that follow and fit, and ones
    that do not (a skipped version, a leave of another value, an update of an absent
    key, a join of a present one)."""
    rng = random.Random(seed)
    keys = ["a", "b", "c", "d"]
    found = []
    for n in range(count):
        view = "users" if n % 2 else "sessions"
        members: dict[str, Any] = {}
        version = 0
        sequence: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 14)):
            if not sequence or rng.random() < 0.15:
                version = rng.randint(0, 5)
                members = {k: {"v": rng.randint(0, 2)} for k in keys if rng.random() < 0.5}
                sequence.append(
                    {
                        "type": "presence.state",
                        "channel": "c",
                        "view": view,
                        "version": version,
                        "members": dict(members),
                    }
                )
                continue
            joins, leaves, updates = {}, {}, {}
            for key in keys:
                roll = rng.random()
                if key in members and roll < 0.25:
                    right = rng.random() < 0.85
                    leaves[key] = members[key] if right else {"v": 9}
                elif key not in members and roll < 0.02:
                    leaves[key] = None  # a leave of a member it lacks, said to be null
                elif key in members and roll < 0.5:
                    updates[key] = {"v": rng.randint(0, 2)}
                elif roll < 0.25 or (roll < 0.3 and key in members):
                    joins[key] = {"v": rng.randint(0, 2)}
                elif roll < 0.32:
                    updates[key] = {"v": 1}
            version += 1 if rng.random() < 0.85 else rng.choice([0, 2, -1])
            for key in leaves:
                members.pop(key, None)
            members.update(updates)
            members.update(joins)
            sequence.append(
                {
                    "type": "presence.diff",
                    "channel": "c",
                    "view": view,
                    "version": max(version, 0),
                    "joins": joins,
                    "leaves": leaves,
                    "updates": updates,
                }
            )
        found.append(sequence)
    return found


APPLY_ALL = """
const [sequences] = arguments;
return sequences.map((sequence) => {
  const map = new mp.PresenceMap("c", sequence[0].view);
  return sequence.map((message) => [
    map.apply(message), Object.fromEntries(map.members), map.version, map.inSync,
  ]);
});
"""


def python_steps(sequence: list[dict[str, Any]]) -> list[list[Any]]:
    presence_map = PresenceMap("c", sequence[0]["view"])
    steps = []
    for message in sequence:
        fields = {k: v for k, v in message.items() if k != "type"}
        typed = (
            PresenceState(**fields)
            if message["type"] == "presence.state"
            else PresenceDiff(**fields)
        )
        ok = presence_map.apply(typed)
        steps.append([ok, dict(presence_map.members), presence_map.version, presence_map.in_sync])
    return steps


def test_the_js_map_agrees_with_presence_map(browser: Any, rules_port: int) -> None:
    page = Page(browser, rules_port)
    cases = sequences(seed=11, count=400)
    results = page.driver.execute_script(APPLY_ALL, cases)
    expected = [python_steps(sequence) for sequence in cases]
    # Both outcomes are well represented, so the agreement means something.
    outcomes = [step[0] for steps in expected for step in steps]
    assert outcomes.count(True) > 500
    assert outcomes.count(False) > 300
    for sequence, got, want in zip(cases, results, expected, strict=True):
        assert got == want, json.dumps(sequence)
