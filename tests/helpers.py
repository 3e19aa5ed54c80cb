"""Test helpers: drive machines, build and read frames, collect what was delivered."""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from typing import Any

from hypothesis import settings

from megapresence_core import (
    Action,
    ConnectionOpened,
    Deliver,
    Event,
    HubLinkConfig,
    Presence,
    PresenceConfig,
    RequestRefused,
    SessionJoined,
)
from megapresence_core.actions import (
    SendHubFrame,
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


def scaled(examples: int) -> settings:
    """``examples`` per 200 of the profile's: the CI count of a property whose examples
    cost much more than most (the long profile runs five times as many, dev fewer)."""
    profile = settings.default
    assert profile is not None  # conftest loaded one
    return settings(max_examples=max(1, examples * profile.max_examples // 200))


def drive(machine: Presence, *events: Event) -> list[Action]:
    """Feed ``events`` in order, checking invariants after each; return every action."""
    actions: list[Action] = []
    for event in events:
        actions += machine.handle(event)
        machine.check_invariants()
    return actions


def hub_frame(kind: str, **payload: Any) -> str:
    """A hub frame as the wire carries it, fields given in wire (camelCase) names."""
    return json.dumps({"type": kind, "payload": payload})


def sent_frames(actions: Iterable[object]) -> list[dict[str, Any]]:
    """The hub frames among ``actions``, decoded."""
    return [json.loads(a.data) for a in actions if isinstance(a, SendHubFrame)]


def deliveries(actions: Iterable[object]) -> dict[Hashable, list[dict[str, Any]]]:
    """conn -> the client frames written to it, decoded, in order."""
    out: dict[Hashable, list[dict[str, Any]]] = {}
    for action in actions:
        if isinstance(action, Deliver):
            message = json.loads(action.text)
            for conn in action.conns:
                out.setdefault(conn, []).append(message)
    return out


def registered_frame(hub_id: str = "hub-1", interval: float = 5.0) -> str:
    return encode(RegisteredFrame(hub_id=hub_id, heartbeat_interval=interval))


def hub_presence(bridge_id: str = "b1", channels: Iterable[str] = (), **config: Any) -> Presence:
    """A ``Presence`` whose hub link is registered, its start-up actions discarded."""
    link = HubLinkConfig(bridge_id=bridge_id, instance_id=f"{bridge_id}-i1", channels=channels)
    presence = Presence(PresenceConfig(hub_link=link, **config))
    drive(
        presence,
        HubLinkStarted(now=0.0),
        HubConnected(now=0.0),
        HubFrameReceived(data=registered_frame(), now=0.0),
    )
    return presence


def open_joined(
    presence: Presence,
    conn: Hashable,
    user: str,
    session: str,
    ns: str = "/ws",
    channels: Iterable[str] = (),
    metadata: dict[str, Any] | None = None,
    now: float = 0.0,
) -> list[Action]:
    return drive(
        presence,
        ConnectionOpened(conn=conn, ns=ns),
        SessionJoined(
            conn=conn,
            user_id=user,
            session_id=session,
            channels=channels,
            metadata=metadata,
            now=now,
        ),
    )


def presence_messages(actions: Iterable[object], conn: Hashable) -> list[dict[str, Any]]:
    """The presence messages (snapshots, diffs, counts) written to ``conn``, decoded."""
    return [
        message
        for message in deliveries(actions).get(conn, [])
        if message["type"].startswith("presence.")
    ]


def refusals(actions: Iterable[object]) -> list[tuple[Hashable, str, str | None]]:
    """(conn, code, channel) of every ``RequestRefused`` among ``actions``."""
    return [(a.conn, a.code, a.channel) for a in actions if isinstance(a, RequestRefused)]
