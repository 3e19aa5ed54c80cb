"""Every lifecycle, generated from its table: every pair is a row or our error; no row is dead.

First the tables themselves: every (state, input) pair of every table either
has a row or ``fire`` raises ``LocalUsageError``, changing nothing. Then the
real machines: for every row of every table, a ``Presence`` or a ``Hub`` is
driven by real events into the row's state, the event that means the row's
input is sent, and the row must be the transition that happened. So a row the
machines never use fails here, and so does a machine that decides by state
outside the table.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_core import (
    ClusterConfig,
    ConnectionClosed,
    ConnectionOpened,
    Hub,
    HubConfig,
    HubLinkConfig,
    KickRequested,
    LocalUsageError,
    Member,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Tick,
)
from megapresence_core._timers import Timers
from megapresence_core.events import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)
from megapresence_core.lifecycle import (
    BRIDGE,
    CLUSTER_LINK,
    CONNECTION,
    HUB,
    HUB_LINK,
    LIFECYCLES,
    PRESENCE,
    BridgeInput,
    ClusterLinkInput,
    ConnectionInput,
    ConnectionState,
    HubInput,
    HubLinkInput,
    Lifecycle,
    Machine,
    PresenceInput,
    Timer,
)
from megapresence_core.wire import ClusterAdd, ClusterResync, encode

from .helpers import hub_frame, registered_frame

ALL_PAIRS = [
    (spec, state, event)
    for spec in LIFECYCLES
    for state, event in itertools.product(spec.states, spec.inputs)
]


def _pair_id(pair: tuple[Lifecycle[Any, Any, Any], Any, Any]) -> str:
    spec, state, event = pair
    return f"{spec.what}:{state.value}:{event.value}"


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_pair_id)
def test_every_pair_is_a_row_or_our_error(pair: tuple[Lifecycle[Any, Any, Any], Any, Any]) -> None:
    spec, state, event = pair
    machine: Machine[Any, Any, Any] = Machine(spec)
    machine._state = state  # placed directly: the pair is what is under test
    row = spec.rows.get((state, event))
    if row is None:
        with pytest.raises(LocalUsageError, match=f"^{spec.what}: "):
            machine.fire(event)
        assert machine.state is state
    else:
        assert machine.fire(event) == row.effect
        assert machine.state is row.target


@given(st.sampled_from(ALL_PAIRS))
def test_check_agrees_with_fire_and_changes_nothing(
    pair: tuple[Lifecycle[Any, Any, Any], Any, Any],
) -> None:
    spec, state, event = pair
    machine: Machine[Any, Any, Any] = Machine(spec)
    machine._state = state
    if (state, event) in spec.rows:
        assert machine.check(event) == spec.rows[(state, event)].effect
    else:
        with pytest.raises(LocalUsageError):
            machine.check(event)
    assert machine.state is state


def test_every_effect_is_named_by_a_row_and_none_is_a_string() -> None:
    """An effect no row names is dead; the owners compare members, never names."""
    for spec in LIFECYCLES:
        named = {row.effect for row in spec.rows.values()} - {None}
        assert named == set(spec.effects), spec.what
        assert all(isinstance(effect, enum.Enum) for effect in named), spec.what


def test_refusals_explain_the_common_mistakes() -> None:
    machine: Machine[Any, Any, Any] = Machine(CONNECTION)
    machine._state = ConnectionState.JOINED
    with pytest.raises(LocalUsageError, match="already joined a session"):
        machine.fire(ConnectionInput.JOIN)
    for spec in LIFECYCLES:
        assert not set(spec.refusals) & set(spec.rows), spec.what


def test_terminal_states_have_no_way_out() -> None:
    for spec, terminal in ((CONNECTION, "closed"), (BRIDGE, "gone")):
        assert not [pair for pair in spec.rows if pair[0].value == terminal]


def test_entering_a_state_cancels_the_timers_it_does_not_allow() -> None:
    timers = Timers()
    machine: Machine[Any, Any, Any] = Machine(HUB_LINK, timers)
    machine.fire(HubLinkInput.START)
    for kind in HUB_LINK.timer_kinds:
        timers.arm(kind, 10.0)
    machine.fire(HubLinkInput.LOST)  # into BACKING_OFF, which allows RETRY only
    assert [timers.pop_due(10.0), timers.pop_due(10.0)] == [(Timer.RETRY, None), None]


# --------------------------------------------------- every row, on real machines


@attrs.frozen
class Driver:
    """How to put a real machine into each state of one table and send it each input."""

    spec: Lifecycle[Any, Any, Any]
    make: Callable[[], Any]
    state_of: Callable[[Any], Any]
    setups: dict[Any, list[Any]]
    triggers: dict[Any, list[Any]]


def _open_join(conn: int, user: str = "u", session: str = "s") -> list[Any]:
    return [
        ConnectionOpened(conn=conn, ns="/ws"),
        SessionJoined(conn=conn, user_id=user, session_id=session, now=0.0),
    ]


SHUTDOWN = ShutdownRequested()
LINK = HubLinkConfig(bridge_id="b", instance_id="i")
START, CONNECTED = HubLinkStarted(now=0), HubConnected(now=0)
REGISTERED = HubFrameReceived(data=registered_frame(interval=10), now=0)
LATE = Tick(now=5000)
CLUSTER = ClusterConfig(app="t", instance_id="me", epoch=1)
FROM_B = ClusterAdd(sender="B", epoch=1, ns="/ws", member=Member(session_id="r", user_id="v"))
RESYNC = ClusterResync(sender="C", epoch=1, target="*")
AUTH = "Bearer t"
REGISTER = hub_frame("REGISTER", bridgeId="b", instanceId="i", protocol=1)


def _frame(data: str) -> BridgeFrameReceived:
    return BridgeFrameReceived(bridge="X", data=data, now=1)


_C, _P, _L, _K, _B, _H = (
    ConnectionInput,
    PresenceInput,
    HubLinkInput,
    ClusterLinkInput,
    BridgeInput,
    HubInput,
)
_S = {spec.what: {s.value: s for s in spec.states} for spec in LIFECYCLES}


def _connection_state(presence: Presence) -> Any:
    """Connection 1's state, or once it closed, the state of its lingering session."""
    state = presence.connection_state(1)
    return state if state is not ConnectionState.CLOSED else presence.session_state("s")


#: Another instance says it holds session "s" now: the session returned there.
ELSEWHERE = ClusterMessageReceived(
    data=encode(
        ClusterAdd(sender="B", epoch=1, ns="/ws", member=Member(session_id="s", user_id="u"))
    ),
    now=1,
)

DRIVERS = [
    Driver(
        CONNECTION,
        lambda: Presence(PresenceConfig(cluster=CLUSTER)),
        _connection_state,
        {
            _S["connection"]["opened"]: [ConnectionOpened(conn=1, ns="/ws")],
            _S["connection"]["joined"]: _open_join(1),
            _S["connection"]["kicked"]: [*_open_join(1), KickRequested(session_id="s")],
            _S["connection"]["detached"]: _open_join(1) + _open_join(2),
            _S["connection"]["closing"]: [ConnectionOpened(conn=1, ns="/ws"), SHUTDOWN],
            _S["connection"]["lingering"]: [*_open_join(1), ConnectionClosed(conn=1, now=0.0)],
        },
        {
            _C.JOIN: [SessionJoined(conn=1, user_id="u", session_id="s", now=0.0)],
            _C.DETACH: _open_join(2),
            _C.KICK: [KickRequested(session_id="s")],
            _C.SHUTDOWN: [SHUTDOWN],
            _C.CLOSE: [ConnectionClosed(conn=1, now=0.0)],
            _C.RETURN: _open_join(2),
            _C.SUPERSEDE: [ELSEWHERE],
            _C.EXPIRE: [LATE],
        },
    ),
    Driver(
        PRESENCE,
        Presence,
        lambda p: p.state,
        {_S["presence"]["running"]: [], _S["presence"]["shut_down"]: [SHUTDOWN]},
        {
            _P.OPEN: [ConnectionOpened(conn=9, ns="/ws")],
            _P.EVENT: [KickRequested(session_id="nobody")],
            _P.WIND_DOWN: [Tick(now=1)],
            _P.SHUTDOWN: [SHUTDOWN],
        },
    ),
    Driver(
        HUB_LINK,
        lambda: Presence(PresenceConfig(hub_link=LINK)),
        lambda p: p.hub_link_state,
        {
            _S["hub link"]["idle"]: [],
            _S["hub link"]["connecting"]: [START],
            _S["hub link"]["registering"]: [START, CONNECTED],
            _S["hub link"]["registered"]: [START, CONNECTED, REGISTERED],
            _S["hub link"]["closing"]: [START, CONNECTED, REGISTERED, Tick(now=1000)],
            _S["hub link"]["backing_off"]: [START, HubLost(now=0, code=1006)],
            _S["hub link"]["draining"]: [START, CONNECTED, REGISTERED, SHUTDOWN],
            _S["hub link"]["refused"]: [START, HubLost(now=0, status=401)],
            _S["hub link"]["closed"]: [SHUTDOWN],
        },
        {
            _L.START: [HubLinkStarted(now=5000)],
            _L.CONNECTED: [HubConnected(now=5000)],
            _L.REGISTERED: [HubFrameReceived(data=registered_frame(), now=5000)],
            _L.ERROR: [HubFrameReceived(data=hub_frame("ERROR", code="x"), now=5000)],
            _L.UNEXPECTED: [HubFrameReceived(data=REGISTER, now=5000)],
            _L.FRAME: [HubFrameReceived(data=hub_frame("HEARTBEAT"), now=5000)],
            _L.INVALID: [HubFrameReceived(data="garbage", now=5000)],
            _L.SEND: _open_join(1),
            _L.TIMEOUT: [LATE],
            _L.LOST: [HubLost(now=5000, code=1006)],
            _L.REFUSED: [HubLost(now=5000, status=401)],
            _L.RETRY_DUE: [LATE],
            _L.SHUTDOWN: [SHUTDOWN],
        },
    ),
    Driver(
        CLUSTER_LINK,
        lambda: Presence(PresenceConfig(cluster=CLUSTER)),
        lambda p: p.cluster_link_state,
        {
            _S["cluster link"]["disconnected"]: [],
            _S["cluster link"]["connected"]: [ClusterConnected(now=0)],
            _S["cluster link"]["stopped"]: [ClusterConnected(now=0), SHUTDOWN],
        },
        {
            _K.CONNECTED: [ClusterConnected(now=1)],
            _K.LOST: [ClusterLost(now=1)],
            _K.PUBLISH: [ClusterMessageReceived(data=encode(RESYNC), now=1)],
            _K.HEARD: [ClusterMessageReceived(data=encode(FROM_B), now=1)],
            _K.STOP: [SHUTDOWN],
        },
    ),
    Driver(
        BRIDGE,
        lambda: Hub(HubConfig(hub_id="h", tokens=["t"])),
        lambda h: h.bridge_state("X"),
        {
            _S["bridge"]["awaiting_register"]: [
                BridgeConnecting(bridge="X", authorization=AUTH, now=0)
            ],
            _S["bridge"]["registered"]: [
                BridgeConnecting(bridge="X", authorization=AUTH, now=0),
                _frame(REGISTER),
            ],
            _S["bridge"]["closing"]: [
                BridgeConnecting(bridge="X", authorization=AUTH, now=0),
                _frame(REGISTER),
                _frame(REGISTER),  # REGISTER twice is fatal
            ],
        },
        {
            _B.ARRIVAL: [_frame(hub_frame("HEARTBEAT"))],
            _B.REGISTER: [_frame(REGISTER)],
            _B.BAD_REGISTER: [
                _frame(hub_frame("REGISTER", bridgeId="b", instanceId="i", protocol=3))
            ],
            _B.FRAME: [_frame(hub_frame("HEARTBEAT"))],
            _B.CLOSE: [LATE],  # the register timeout, or a silent bridge
            _B.DRAIN: [SHUTDOWN],
            _B.CLOSED: [BridgeClosed(bridge="X", now=2)],
        },
    ),
    Driver(
        HUB,
        lambda: Hub(HubConfig(hub_id="h", tokens=["t"])),
        lambda h: h.state,
        {_S["hub"]["accepting"]: [], _S["hub"]["draining"]: [SHUTDOWN]},
        {
            _H.CONNECT: [BridgeConnecting(bridge="Y", authorization=AUTH, now=0)],
            _H.SHUTDOWN: [SHUTDOWN],
        },
    ),
]


def rows() -> Iterator[tuple[Driver, Any, Any]]:
    for driver in DRIVERS:
        for state, event in driver.spec.rows:
            yield driver, state, event


def test_every_table_has_a_driver_for_each_of_its_states_and_inputs() -> None:
    assert {driver.spec for driver in DRIVERS} == set(LIFECYCLES)
    for driver in DRIVERS:
        assert {state for state, _ in driver.spec.rows} <= set(driver.setups), driver.spec.what
        assert {event for _, event in driver.spec.rows} <= set(driver.triggers)


@pytest.mark.parametrize(
    ("driver", "state", "event"),
    list(rows()),
    ids=[f"{d.spec.what}:{s.value}:{e.value}" for d, s, e in rows()],
)
def test_every_row_is_live_on_the_real_machine(
    driver: Driver, state: Any, event: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = driver.make()
    for setup in driver.setups[state]:
        machine.handle(setup)
    assert driver.state_of(machine) is state
    fired: list[tuple[Any, Any, Any, Any]] = []
    real_fire = Machine.fire

    def recording_fire(self: Machine[Any, Any, Any], event: Any) -> Any:
        before = self.state
        effect = real_fire(self, event)
        fired.append((self._spec, before, event, self.state))
        return effect

    monkeypatch.setattr(Machine, "fire", recording_fire)
    for trigger in driver.triggers[event]:
        machine.handle(trigger)
    target = driver.spec.rows[(state, event)].target
    assert (driver.spec, state, event, target) in fired
    machine.check_invariants()
