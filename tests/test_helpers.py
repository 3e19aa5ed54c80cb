"""The helpers are tested too: a broken helper would make other tests pass vacuously."""

import pytest

from megapresence_core import (
    CloseConnection,
    ConnectionOpened,
    Deliver,
)
from megapresence_core.actions import (
    SendHubFrame,
)
from megapresence_core.lifecycle import (
    HubLinkState,
)

from .helpers import deliveries, drive, hub_frame, hub_presence, open_joined, sent_frames


def test_deliveries_fans_out_per_connection_in_order() -> None:
    actions = [
        Deliver(conns=(1, 2), text='{"type":"a"}'),
        CloseConnection(conn=1, code=1000, reason=""),
        Deliver(conns=(2,), text='{"type":"b"}'),
    ]
    assert deliveries(actions) == {1: [{"type": "a"}], 2: [{"type": "a"}, {"type": "b"}]}


def test_sent_frames_decodes_only_hub_frames() -> None:
    actions = [SendHubFrame(data=hub_frame("LEAVE", sessionId="s")), Deliver(conns=(1,), text="{}")]
    assert sent_frames(actions) == [{"type": "LEAVE", "payload": {"sessionId": "s"}}]


def test_hub_presence_is_registered_and_open_joined_maps_the_session() -> None:
    presence = hub_presence()
    assert presence.hub_link_state is HubLinkState.REGISTERED
    actions = open_joined(presence, "c1", "ann", "s1", channels=["room"])
    assert sent_frames(actions) == [
        {
            "type": "JOIN",
            "payload": {"userId": "ann", "sessionId": "s1", "channels": ["room"], "claim": 1},
        }
    ]
    assert [m.session_id for m in presence.roster("/ws")] == ["s1"]


def test_drive_checks_invariants_after_each_event() -> None:
    presence = hub_presence()
    drive(presence, ConnectionOpened(conn="x", ns="/ws"))
    presence._local.by_ns.clear()  # corrupt on purpose
    with pytest.raises(AssertionError, match="ns index"):
        drive(presence, ConnectionOpened(conn="y", ns="/other"))
