"""The bridge's hub link: register, heartbeat, detect silence, time out, stop when refused."""

from __future__ import annotations

import json

import pytest

from megapresence_core import (
    ConnectionOpened,
    Deliver,
    HubLinkConfig,
    Log,
    LogLevel,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Subscribe,
    Tick,
)
from megapresence_core.actions import (
    CloseHubLink,
    ConnectHub,
    SendHubFrame,
)
from megapresence_core.events import (
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)
from megapresence_core.lifecycle import (
    HubLinkState,
)

from .helpers import drive, hub_frame, registered_frame, sent_frames


def new_presence(**config: object) -> Presence:
    link = HubLinkConfig(bridge_id="b1", instance_id="i1", channels=["lobby"], **config)
    return Presence(PresenceConfig(hub_link=link))


def registered(interval: float = 10.0, **config: object) -> Presence:
    presence = new_presence(**config)
    drive(
        presence,
        HubLinkStarted(now=0),
        HubConnected(now=0),
        HubFrameReceived(data=registered_frame(interval=interval), now=0),
    )
    return presence


def test_start_asks_the_shim_to_connect_then_registers() -> None:
    presence = new_presence(capabilities=["broadcast"])
    assert drive(presence, HubLinkStarted(now=0)) == [ConnectHub()]
    assert presence.hub_link_state is HubLinkState.CONNECTING
    actions = drive(presence, HubConnected(now=0.2))
    assert sent_frames(actions) == [
        {
            "type": "REGISTER",
            "payload": {
                "bridgeId": "b1",
                "instanceId": "i1",
                "capabilities": ["broadcast"],
                "protocol": 2,
                "channels": ["lobby"],
            },
        }
    ]
    assert presence.hub_link_state is HubLinkState.REGISTERING
    actions = drive(presence, HubFrameReceived(data=registered_frame("h-9"), now=0.3))
    assert presence.hub_link_state is HubLinkState.REGISTERED
    assert [(a.event, a.fields) for a in actions if isinstance(a, Log)] == [
        (
            "hub.link.registered",
            {
                "hub_id": "h-9",
                "new_incarnation": True,
                "frames_per_second": 2000.0,
                "frame_burst": 4000.0,
            },
        )
    ]


def test_a_new_hub_incarnation_is_reported_and_a_same_one_is_not() -> None:
    presence = registered()
    events = [HubLost(now=1, code=1006), Tick(now=100), HubConnected(now=100)]
    drive(presence, *events)
    actions = drive(presence, HubFrameReceived(data=registered_frame("hub-1"), now=100))
    assert [a.fields["new_incarnation"] for a in actions if isinstance(a, Log)] == [False]


def test_heartbeat_is_sent_when_due_using_the_hubs_interval() -> None:
    presence = registered(interval=10.0, heartbeat_interval=99.0)
    assert drive(presence, Tick(now=9.9)) == []
    assert presence.next_deadline() == 10.0
    assert sent_frames(drive(presence, Tick(now=10.0))) == [{"type": "HEARTBEAT", "payload": {}}]
    assert drive(presence, Tick(now=15)) == []
    assert presence.next_deadline() == 20.0


def test_any_frame_from_the_hub_keeps_the_link_alive() -> None:
    presence = registered(interval=10.0)
    for now in (10, 20, 29):
        drive(presence, HubFrameReceived(data=hub_frame("HEARTBEAT"), now=now), Tick(now=now))
    assert presence.hub_link_state is HubLinkState.REGISTERED
    assert presence.next_deadline() == 30.0  # next heartbeat to send


def test_a_silent_hub_is_declared_dead_closed_and_retried() -> None:
    presence = registered(interval=10.0, dead_after_intervals=3)
    drive(presence, Tick(now=10), Tick(now=20))
    actions = drive(presence, Tick(now=30))
    assert [type(a) for a in actions] == [Log, CloseHubLink]
    assert actions[0].event == "hub.link.dead"  # type: ignore[union-attr]
    assert presence.hub_link_state is HubLinkState.CLOSING
    # Frames that still arrive on a link being torn down mean nothing.
    assert (
        drive(
            presence,
            HubFrameReceived(data=hub_frame("DIRECT", userId="u", message={"type": "t"}), now=31),
        )
        == []
    )
    actions = drive(presence, HubLost(now=31, code=1000))
    assert presence.hub_link_state is HubLinkState.BACKING_OFF
    [lost] = actions
    assert isinstance(lost, Log)
    assert lost.event == "hub.link.lost"
    assert presence.next_deadline() == pytest.approx(31 + lost.fields["retry_in"])  # type: ignore[operator]


def test_connect_and_register_are_bounded_by_the_connect_timeout() -> None:
    presence = new_presence(connect_timeout=5.0)
    drive(presence, HubLinkStarted(now=0))
    assert presence.next_deadline() == 5.0
    assert drive(presence, Tick(now=4.9)) == []
    actions = drive(presence, Tick(now=5.0))
    assert [a.event for a in actions if isinstance(a, Log)] == ["hub.link.timeout"]
    assert presence.hub_link_state is HubLinkState.CLOSING
    presence = new_presence(connect_timeout=5.0)
    drive(presence, HubLinkStarted(now=0), HubConnected(now=1))
    drive(presence, Tick(now=5.0))
    assert presence.hub_link_state is HubLinkState.CLOSING


def test_the_reconnect_happens_on_the_first_tick_after_the_delay() -> None:
    presence = registered()
    [lost] = drive(presence, HubLost(now=50, code=4503, reason="hub draining"))
    assert isinstance(lost, Log)
    delay = lost.fields["retry_in"]
    assert isinstance(delay, float)
    assert delay > 0
    # The delay is a timer, not an action: next_deadline() is when to reconnect.
    assert presence.next_deadline() == pytest.approx(50 + delay)
    assert drive(presence, Tick(now=50 + delay / 2)) == []
    assert drive(presence, Tick(now=50 + delay)) == [ConnectHub()]
    assert presence.hub_link_state is HubLinkState.CONNECTING


@pytest.mark.parametrize("code", [4503, 1008, 1011, 1001])
def test_after_any_close_the_link_backs_off_and_registers_again(code: int) -> None:
    presence = registered()
    [lost] = drive(presence, HubLost(now=1, code=code, reason="policy"))
    assert presence.hub_link_state is HubLinkState.BACKING_OFF
    assert lost.fields["state"] == "backing_off"
    assert presence.next_deadline() is not None
    drive(presence, Tick(now=100), HubConnected(now=100))
    drive(presence, HubFrameReceived(data=registered_frame(), now=100))
    assert presence.hub_link_state is HubLinkState.REGISTERED


@pytest.mark.parametrize("status", [403, 500, 503])
def test_an_upgrade_refused_with_another_status_is_retried(status: int) -> None:
    presence = new_presence()
    drive(presence, HubLinkStarted(now=0), HubLost(now=0, status=status))
    assert presence.hub_link_state is HubLinkState.BACKING_OFF


def test_only_a_bad_token_refuses_the_link_for_good_and_says_why() -> None:
    presence = new_presence()
    drive(presence, HubLinkStarted(now=0))
    reason = "hub refused the upgrade: HTTP 401"
    actions = drive(presence, HubLost(now=1, reason=reason, status=401))
    assert presence.hub_link_state is HubLinkState.REFUSED
    assert actions == [
        Log(
            level=LogLevel.ERROR,
            event="hub.link.refused",
            fields={
                "code": None,
                "reason": reason,
                "state": "refused",
            },
        )
    ]
    assert presence.next_deadline() is None
    drive(presence, ShutdownRequested())
    assert presence.hub_link_state is HubLinkState.CLOSED


def test_registering_ignores_other_frames_with_a_warning() -> None:
    presence = new_presence()
    drive(presence, HubLinkStarted(now=0), HubConnected(now=0))
    actions = drive(
        presence,
        HubFrameReceived(data=hub_frame("ERROR", code="unsupported_protocol", message="v9"), now=0),
        HubFrameReceived(data=hub_frame("HEARTBEAT"), now=0),
        HubFrameReceived(data="garbage", now=0),
    )
    assert [a.event for a in actions if isinstance(a, Log)] == [
        "hub.error",
        "hub.frame.before_registered",
        "hub.frame.invalid",
    ]
    assert presence.hub_link_state is HubLinkState.REGISTERING


@pytest.mark.parametrize(
    ("setup", "expected_actions", "state"),
    [
        ([], [], HubLinkState.CLOSED),
        ([HubLinkStarted(now=0)], [CloseHubLink], HubLinkState.DRAINING),
        ([HubLinkStarted(now=0), HubLost(now=0)], [], HubLinkState.CLOSED),
    ],
)
def test_shutdown_closes_an_open_link_and_stops_timers(
    setup: list[object], expected_actions: list[type], state: HubLinkState
) -> None:
    presence = new_presence()
    drive(presence, *setup)  # type: ignore[arg-type]
    actions = drive(presence, ShutdownRequested())
    assert [type(a) for a in actions if not hasattr(a, "conn")] == expected_actions
    assert presence.hub_link_state is state
    assert presence.next_deadline() is None


def test_a_draining_link_ends_closed_and_ignores_late_frames() -> None:
    presence = registered()
    [close] = drive(presence, ShutdownRequested())
    assert close == CloseHubLink(code=1001, reason="bridge shutting down")
    assert drive(presence, HubFrameReceived(data=hub_frame("HEARTBEAT"), now=1)) == []
    actions = drive(presence, HubLost(now=1, code=1001))
    assert [a.event for a in actions if isinstance(a, Log)] == ["hub.link.closed"]
    assert presence.hub_link_state is HubLinkState.CLOSED


def test_register_frame_carries_the_protocol_version() -> None:
    presence = new_presence()
    drive(presence, HubLinkStarted(now=0))
    [frame] = [a for a in drive(presence, HubConnected(now=0)) if isinstance(a, SendHubFrame)]
    assert json.loads(frame.data)["payload"]["protocol"] == 2


def test_an_outage_warns_once_then_retries_quietly() -> None:
    presence = registered()
    levels = []
    now = 1.0
    for _ in range(4):
        actions = drive(presence, HubLost(now=now, code=1006 if not levels else None))
        levels += [a.level for a in actions if isinstance(a, Log)]
        now += 100
        drive(presence, Tick(now=now))
    assert levels == [LogLevel.WARNING, LogLevel.DEBUG, LogLevel.DEBUG, LogLevel.DEBUG]
    drive(presence, HubConnected(now=now), HubFrameReceived(data=registered_frame(), now=now))
    actions = drive(presence, HubLost(now=now, code=1006))
    assert [a.level for a in actions if isinstance(a, Log)] == [LogLevel.WARNING]


@pytest.mark.parametrize("interval", ["1e999", "0", "86400"])
def test_a_registered_frame_with_an_unusable_heartbeat_interval_is_refused(interval: str) -> None:
    presence = new_presence(connect_timeout=5.0)
    drive(presence, HubLinkStarted(now=0), HubConnected(now=0))
    data = '{"type":"REGISTERED","payload":{"hubId":"h","heartbeatInterval":NUM}}'.replace(
        "NUM", interval
    )
    actions = drive(presence, HubFrameReceived(data=data, now=1))
    assert [(a.event, a.fields["code"]) for a in actions if isinstance(a, Log)] == [
        ("hub.frame.invalid", "bad_json" if interval == "1e999" else "bad_frame")
    ]
    # Liveness is not switched off: the attempt still times out and is retried.
    assert presence.hub_link_state is HubLinkState.REGISTERING
    assert presence.next_deadline() == 5.0
    drive(presence, Tick(now=5.0))
    assert presence.hub_link_state is HubLinkState.CLOSING


def test_a_frame_from_the_hub_with_a_server_s_message_type_is_refused() -> None:
    presence = registered()
    drive(presence, ConnectionOpened(conn="c", ns="/ws"))
    drive(presence, SessionJoined(conn="c", user_id="u", session_id="s", now=0))
    drive(presence, Subscribe(conn="c", channel="lobby", now=0))
    message = {"type": "presence.state", "payload": "unsigned"}
    for kind, fields in (
        ("PUBLISH", {"channel": "lobby"}),
        ("BROADCAST", {"ns": "/ws", "channel": "lobby"}),
    ):
        actions = drive(
            presence, HubFrameReceived(data=hub_frame(kind, **fields, message=message), now=1)
        )
        assert not [a for a in actions if isinstance(a, Deliver)]
        assert [(a.event, a.fields["code"]) for a in actions if isinstance(a, Log)] == [
            ("hub.frame.invalid", "bad_frame")
        ]
