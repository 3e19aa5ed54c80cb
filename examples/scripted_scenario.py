"""Play a scripted scenario through the sans-IO core and print what it asks the shim to do.

Nothing here opens a socket: each line is an event fed to ``Presence.handle``,
followed by the actions it returned. It shows the rules in order: clients
connecting and joining, a hub link registering (and the resync it triggers),
a broadcast that skips one session, a direct message, a watcher of a channel
and its coalesced diff, a message published to a channel, a duplicate session,
a kick arriving from the hub (no leave grace: its session leaves at once), and
an orderly shutdown.
"""

from __future__ import annotations

import json

from megapresence_core import (
    BroadcastRequested,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    Event,
    HubLinkConfig,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    PublishRequested,
    SessionJoined,
    ShutdownRequested,
    StoreConfig,
    Subscribe,
    Tick,
)
from megapresence_core.events import (
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
)
from megapresence_core.wire import (
    RegisteredFrame,
    encode,
)


def scenario() -> list[tuple[str, Event]]:
    registered = encode(RegisteredFrame(hub_id="demo-hub", heartbeat_interval=15.0))
    kick = json.dumps(
        {"type": "DISCONNECT", "payload": {"sessionId": "s-bob", "reason": "flooding"}}
    )
    return [
        ("ann opens /ws/chat", ConnectionOpened(conn="ann-1", ns="/ws/chat")),
        (
            "ann authenticates",
            SessionJoined(
                conn="ann-1",
                user_id="ann",
                session_id="s-ann",
                channels=["lobby"],
                metadata={"status": "online"},
                now=0.0,
            ),
        ),
        ("bob opens and joins", ConnectionOpened(conn="bob-1", ns="/ws/chat")),
        (
            "",
            SessionJoined(
                conn="bob-1", user_id="bob", session_id="s-bob", channels=["lobby"], now=0.0
            ),
        ),
        ("an anonymous viewer opens", ConnectionOpened(conn="viewer", ns="/ws/chat")),
        ("the hub link starts", HubLinkStarted(now=0.0)),
        ("its transport opens", HubConnected(now=0.1)),
        ("the hub says REGISTERED: resync", HubFrameReceived(data=registered, now=0.2)),
        (
            "ann broadcasts, not to herself",
            BroadcastRequested(
                ns="/ws/chat",
                channel="lobby",
                message={"type": "chat", "payload": {"text": "hi!"}},
                except_session_ids=["s-ann"],
            ),
        ),
        ("a direct message to bob", DirectRequested(user_id="bob", message={"type": "ping"})),
        (
            "bob watches lobby, per user: subscribed, then a snapshot",
            Subscribe(conn="bob-1", channel="lobby", mode="users", now=0.3),
        ),
        (
            "ann goes away: one update, at the end of the 50 ms window",
            MetadataUpdated(session_id="s-ann", metadata={"status": "away"}, now=0.3),
        ),
        ("the window is over", Tick(now=0.35)),
        (
            "bob publishes to lobby: its subscribers get it, stamped with bob",
            PublishRequested(
                channel="lobby", message={"type": "chat", "payload": "hi"}, conn="bob-1"
            ),
        ),
        ("ann's session joins again elsewhere", ConnectionOpened(conn="ann-2", ns="/ws/chat")),
        (
            "",
            SessionJoined(
                conn="ann-2", user_id="ann", session_id="s-ann", channels=["lobby"], now=0.5
            ),
        ),
        ("the old tab closes (no LEAVE)", ConnectionClosed(conn="ann-1", now=0.6)),
        ("the hub kicks bob", HubFrameReceived(data=kick, now=1.0)),
        ("bob's socket closes: a kick leaves at once", ConnectionClosed(conn="bob-1", now=1.1)),
        ("time passes", Tick(now=15.2)),
        ("the server stops", ShutdownRequested()),
    ]


def main() -> None:
    presence = Presence(
        PresenceConfig(
            hub_link=HubLinkConfig(bridge_id="demo", instance_id="demo-1", channels=["lobby"]),
            store=StoreConfig(),
        )
    )
    for title, event in scenario():
        if title:
            print(f"\n# {title}")
        print(f"-> {event!r}")
        for action in presence.handle(event):
            print(f"   <- {action!r}")
        presence.check_invariants()
    print("\nroster after shutdown:", presence.roster("/ws/chat"))


if __name__ == "__main__":
    main()
