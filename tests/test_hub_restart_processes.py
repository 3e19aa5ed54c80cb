"""A hub restarted six times under a few hundred sessions: watchers see nothing.

A hub (kill -9 or SIGTERM), server A (asyncio) with 300 sessions in ten channels, and
on server B (trio) a watcher of the ten channels in the users view and one counting
them. Whichever server registers with the new, empty hub first, B's watchers must hear
no leave and no join: the sessions never left. (Before the bridges kept the members the
hub stopped vouching for, the one that registered first was told by the empty hub that
the others' members were gone and told its watchers, then the resync brought them back.)
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from .process_helpers import Command, eventually
from .test_hub_flow_processes import hub_and_servers, kept_alive, open_sessions, ready
from .test_processes import hub_sessions, recv_type

SESSIONS = 300
CHANNELS = [f"g{n}" for n in range(10)]


def watch(ws: ClientConnection, presence: str) -> None:
    """Subscribe to every channel in ``presence`` mode and read each first answer."""
    for channel in CHANNELS:
        ws.send(json.dumps({"op": "subscribe", "channel": channel, "presence": presence}))
    kind = "presence.count" if presence == "count" else "presence.state"
    for _ in CHANNELS:
        recv_type(ws, kind, timeout=15)


def presence_heard(ws: ClientConnection, seconds: float = 0.5) -> list[dict[str, Any]]:
    """The presence messages the watcher was sent since it last asked, and over the next
    ``seconds``."""
    heard = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(ws.recv(left))
        except TimeoutError:
            break
        if message["type"].startswith("presence."):
            heard.append(message)
    return heard


def test_hub_restarts_show_the_other_servers_watchers_nothing(tmp_path: Path) -> None:
    with hub_and_servers(tmp_path, "asyncio", "A") as (hub, a):
        b = Command(
            tmp_path,
            "B",
            *("--backend", "trio", "serve", "--port", "0", "--bridge-id", "B"),
            *("--hub", f"ws://127.0.0.1:{hub.port}/"),
        )
        try:
            sockets = open_sessions(a.port, SESSIONS)
            with (
                kept_alive(sockets),
                connect(f"ws://127.0.0.1:{b.port}/ws/chat?user=w") as users,
                connect(f"ws://127.0.0.1:{b.port}/ws/chat?user=c") as counts,
            ):
                watch(users, "users")
                watch(counts, "count")
                total = SESSIONS + 2
                eventually(lambda: len(hub_sessions(hub.port)) == total, timeout=60)
                presence_heard(users)
                presence_heard(counts)
                port = hub.port
                for restart, sig in enumerate([signal.SIGKILL, signal.SIGTERM] * 3):
                    hub.stop(sig)
                    hub = Command(tmp_path, f"hub{restart}", "hub", "--port", str(port))
                    eventually(lambda: ready(a) and ready(b), timeout=30, what="both registered")
                    eventually(lambda: len(hub_sessions(port)) == total, timeout=30)
                    # Past the leave grace (5 s) of the first registration: a member
                    # nothing confirmed would have left by now.
                    heard = presence_heard(users, seconds=6) + presence_heard(counts)
                    assert heard == [], (restart, sig, heard[:2])
                hub.stop(signal.SIGKILL)
        finally:
            b.stop(signal.SIGKILL)
