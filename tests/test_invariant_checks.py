"""The invariant checks used by the property tests and fuzzers notice every corruption.

A check that cannot fail would make every test built on it vacuous.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from megapresence_core import (
    Hub,
    HubConfig,
    LocalUsageError,
    Member,
    Presence,
    PresenceConfig,
    Tick,
)
from megapresence_core._local import ConnectionRecord, LocalIndexes
from megapresence_core._timers import Timers
from megapresence_core.events import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
)
from megapresence_core.hub import Bridge, HubSession, HubSessions
from megapresence_core.lifecycle import BridgeState, ConnectionState
from megapresence_core.wire import (
    ABSENT,
)

from .helpers import hub_frame, open_joined


def populated_indexes() -> LocalIndexes:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1")
    open_joined(presence, 2, "ann", "s2")
    return presence._local


def _detach_state_only(indexes: LocalIndexes) -> None:
    indexes.records[1].lifecycle._state = ConnectionState.DETACHED


def _wrong_key(indexes: LocalIndexes) -> None:
    indexes.records[3] = indexes.records.pop(1)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_detach_state_only, "disagrees with its state"),
        (_wrong_key, "disagrees with its state or key"),
        (
            lambda ix: (
                ix.by_ns["/ghost"].update({9: None})
                if "/ghost" in ix.by_ns
                else ix.by_ns.setdefault("/ghost", {})
            ),
            "ns index",
        ),
        (lambda ix: ix.by_user.setdefault("ann", {}).pop(2), "user index"),
        (lambda ix: ix.by_session.pop("s1"), "session index"),
    ],
)
def test_index_check_notices(corrupt: Callable[[LocalIndexes], object], match: str) -> None:
    indexes = populated_indexes()
    indexes.check()
    corrupt(indexes)
    with pytest.raises(AssertionError, match=match):
        indexes.check()


def populated_hub_presence() -> HubSessions:
    presence = HubSessions()
    presence.put(HubSession("s1", "ann", "A", ("x", "y"), None))
    presence.put(HubSession("s2", "bob", "B", ("x",), {"m": 1}))
    return presence


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda p: p.sessions.__setitem__("zz", p.sessions["s1"]), "is filed under"),
        (lambda p: p.by_bridge["A"].pop("s1"), "bridge index"),
        (lambda p: p.channel_bridges["x"].__setitem__("A", 2), "channel index"),
        (lambda p: p.user_bridges.pop("bob"), "user index"),
    ],
)
def test_hub_presence_check_notices(corrupt: Callable[[HubSessions], object], match: str) -> None:
    presence = populated_hub_presence()
    presence.check()
    corrupt(presence)
    with pytest.raises(AssertionError, match=match):
        presence.check()


def test_hub_presence_counts_members_per_bridge_and_channel() -> None:
    presence = populated_hub_presence()
    presence.put(HubSession("s3", "cid", "A", ("x",), None))
    assert presence.channel_bridges["x"] == {"A": 2, "B": 1}
    presence.remove("s3")
    assert presence.channel_bridges["x"] == {"A": 1, "B": 1}
    presence.check()


def registered_hub() -> Hub:
    hub = Hub(HubConfig(hub_id="h", tokens=["t"]))
    hub.handle(BridgeConnecting(bridge="A", authorization="Bearer t", now=0))
    data = hub_frame("REGISTER", bridgeId="a", instanceId="i", protocol=1)
    hub.handle(BridgeFrameReceived(bridge="A", data=data, now=0))
    data = hub_frame("JOIN", userId="u", sessionId="s", channels=["c"])
    hub.handle(BridgeFrameReceived(bridge="A", data=data, now=0))
    return hub


def test_hub_check_notices_sessions_of_an_unregistered_bridge() -> None:
    hub = registered_hub()
    hub.check_invariants()
    hub._bridges["A"].lifecycle._state = BridgeState.CLOSING
    with pytest.raises(AssertionError, match="not registered"):
        hub.check_invariants()


def test_hub_check_notices_a_wrong_bridge_id_mapping() -> None:
    hub = registered_hub()
    hub._by_bridge_id["other"] = Bridge("B", 0, 1, Timers())
    with pytest.raises(AssertionError, match="maps to"):
        hub.check_invariants()


def test_hub_ticks_skip_bridges_with_nothing_due() -> None:
    hub = registered_hub()
    hub.handle(BridgeConnecting(bridge="B", authorization="Bearer t", now=0))
    assert hub.handle(Tick(now=1)) == []  # A not due, B still within its register timeout
    hub.handle(BridgeFrameReceived(bridge="B", data="bad", now=1))
    hub.handle(BridgeFrameReceived(bridge="B", data=hub_frame("HEARTBEAT"), now=1))
    assert hub.bridge_state("B") is BridgeState.CLOSING
    assert hub.handle(Tick(now=2)) == []  # a closing bridge has no timers
    assert hub.next_deadline() == 15  # A's next heartbeat only
    hub.handle(BridgeClosed(bridge="B", now=2))


@pytest.mark.parametrize(
    "build",
    [
        lambda: BridgeConnecting(bridge=None, authorization=None, now=0),
        lambda: BridgeFrameReceived(bridge="A", data="", now=float("nan")),
    ],
)
def test_hub_events_validate_when_built(build: Callable[[], object]) -> None:
    with pytest.raises(LocalUsageError):
        build()


def test_small_reprs_and_conversions() -> None:
    record = ConnectionRecord("c", "/ws", Timers())
    assert repr(record) == "<ConnectionRecord 'c' opened ns='/ws'>"
    record.user_id, record.session_id = "u", "s"
    assert repr(record) == "<ConnectionRecord 'c' opened ns='/ws' u/s>"
    assert repr(HubSession("s", "u", "A", (), None)) == "<HubSession 's' of 'u' on 'A'>"
    assert repr(ABSENT) == "ABSENT"
    assert Member(session_id="s", user_id="u").to_json() == {"sessionId": "s", "userId": "u"}
    assert Member(session_id="s", user_id="u", metadata={"a": 1}).to_json() == {
        "sessionId": "s",
        "userId": "u",
        "metadata": {"a": 1},
    }
    config = PresenceConfig()
    assert Presence(config).config is config
