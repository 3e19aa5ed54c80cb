"""Fuzz the ``Hub`` machine with bridges connecting, sending frames and leaving.

Invariants, after every event: only ``LocalUsageError`` escapes (the shim's
misuse, such as a frame from an unknown bridge), the hub's presence passes its
invariant check, no frame is ever sent back to the bridge it came from except
that bridge's own REGISTERED, ERROR or MEMBERS, no version 2 frame ever reaches a
version 1 bridge, and a replay gives the same actions.
"""

from __future__ import annotations

import json
import sys

from _reader import ByteReader
from fuzz_presence import CHANNELS, SESSIONS, USERS, _hub_frame

from megapresence_core import (
    Hub,
    HubConfig,
    LocalUsageError,
    ShutdownRequested,
    Tick,
)
from megapresence_core.actions import (
    SendBridgeFrame,
)
from megapresence_core.events import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    HubEvent,
)

#: Frames a hub never sends to a version 1 bridge.
V2_ONLY = frozenset({"SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH", "MEMBERS"})


def read_events(reader: ByteReader) -> list[HubEvent]:
    now = 0.0
    events: list[HubEvent] = []
    while not reader.exhausted and len(events) < 200:
        op = reader.below(8)
        bridge = reader.below(4)
        if op == 0:
            auth = reader.pick(("Bearer t", "Bearer x", None, "bearer t"))
            events.append(BridgeConnecting(bridge=bridge, authorization=auth, now=now))
        elif op == 1:
            data = json.dumps(
                {
                    "type": "REGISTER",
                    "payload": {
                        "bridgeId": reader.pick(("b1", "b2")),
                        "instanceId": reader.pick(("i1", "i2")),
                        "protocol": reader.pick((1, 2, 2, 3)),
                        "channels": [reader.pick(CHANNELS) for _ in range(reader.below(3))],
                    },
                }
            )
            events.append(BridgeFrameReceived(bridge=bridge, data=data, now=now))
        elif op == 2:
            data = json.dumps(
                {
                    "type": "JOIN",
                    "payload": {
                        "userId": reader.pick(USERS),
                        "sessionId": reader.pick(SESSIONS),
                        "channels": [reader.pick(CHANNELS) for _ in range(reader.below(4))],
                    },
                }
            )
            events.append(BridgeFrameReceived(bridge=bridge, data=data, now=now))
        elif op == 3:
            events.append(BridgeFrameReceived(bridge=bridge, data=_hub_frame(reader), now=now))
        elif op == 4:
            events.append(BridgeClosed(bridge=bridge, now=now))
        elif op == 5:
            now += reader.below(40)
            events.append(Tick(now=now))
        elif op == 6:
            kind = reader.pick(("SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH"))
            payload = {
                "sessionId": reader.pick(SESSIONS),
                "userId": reader.pick(USERS),
                "channel": reader.pick(CHANNELS),
                "message": {"type": "t"},
            }
            data = json.dumps({"type": kind, "payload": payload})
            events.append(BridgeFrameReceived(bridge=bridge, data=data, now=now))
        else:
            events.append(ShutdownRequested())
    return events


def run(events: list[HubEvent]) -> list[str]:
    hub = Hub(
        HubConfig(
            hub_id="h",
            tokens=["t"],
            max_channels_per_session=2,
            max_sessions_per_bridge=3,
            max_interest_channels=2,
            heartbeat_interval=5,
        )
    )
    transcript = []
    for event in events:
        try:
            actions = hub.handle(event)
        except LocalUsageError:
            transcript.append(f"refused {type(event).__name__}")
            continue
        hub.check_invariants()
        for action in actions:
            if not isinstance(action, SendBridgeFrame):
                continue
            kind = json.loads(action.data)["type"]
            origin = event.bridge if isinstance(event, BridgeFrameReceived) else None
            if origin in action.bridges and kind not in ("REGISTERED", "ERROR", "MEMBERS"):
                raise AssertionError(f"{kind} echoed to its origin")
            if kind in V2_ONLY and any(hub._bridges[b].protocol < 2 for b in action.bridges):
                raise AssertionError(f"{kind} sent to a version 1 bridge")
        transcript.append(repr(actions))
    return transcript


def test_one_input(data: bytes) -> None:
    events = read_events(ByteReader(data))
    if run(events) != run(events):
        raise AssertionError("the same events gave different actions")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
