"""Every (state, input) pair of every lifecycle table: a transition or the documented error.

First the tables themselves through ``advance``; then the machines, driven into
each state by real events, must agree with their table for every event kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_core import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    ConnectionClosed,
    ConnectionOpened,
    ConnState,
    Event,
    Hub,
    HubConfig,
    HubConnected,
    HubFrameReceived,
    HubLinkConfig,
    HubLinkStarted,
    HubLost,
    LinkState,
    LocalUsageError,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Tick,
)
from megapresence_core._lifecycle import (
    BRIDGE_TRANSITIONS,
    CONN_REFUSALS,
    CONN_TRANSITIONS,
    LINK_TRANSITIONS,
    BridgeInput,
    BridgeState,
    ConnInput,
    LinkInput,
    advance,
)

from .helpers import hub_frame, registered_frame

TABLES: list[tuple[Any, type[Any], type[Any]]] = [
    (CONN_TRANSITIONS, ConnState, ConnInput),
    (LINK_TRANSITIONS, LinkState, LinkInput),
    (BRIDGE_TRANSITIONS, BridgeState, BridgeInput),
]
ALL_PAIRS = [
    (table, state, event)
    for table, states, inputs in TABLES
    for state, event in itertools.product(states, inputs)
]


@given(st.sampled_from(ALL_PAIRS))
def test_every_pair_transitions_or_raises(pair: tuple[Any, Any, Any]) -> None:
    table, state, event = pair
    if (state, event) in table:
        assert advance(table, state, event, what="thing") is table[(state, event)]
    else:
        with pytest.raises(LocalUsageError, match="thing: "):
            advance(table, state, event, what="thing")


def test_hypothesis_walk_reaches_every_pair() -> None:
    # The sampled walk above is backed by this exhaustive one, so no pair is
    # left to chance.
    for table, state, event in ALL_PAIRS:
        if (state, event) in table:
            advance(table, state, event, what="thing")
        else:
            with pytest.raises(LocalUsageError):
                advance(table, state, event, what="thing")


def test_refusals_explain_the_common_mistakes() -> None:
    with pytest.raises(LocalUsageError, match="already joined a session"):
        advance(
            CONN_TRANSITIONS,
            ConnState.JOINED,
            ConnInput.JOIN,
            what="connection",
            refusals=CONN_REFUSALS,
        )
    for pair in CONN_REFUSALS:
        assert pair not in CONN_TRANSITIONS


def test_terminal_states_have_no_way_out() -> None:
    assert not [pair for pair in CONN_TRANSITIONS if pair[0] is ConnState.CLOSED]
    assert not [pair for pair in BRIDGE_TRANSITIONS if pair[0] is BridgeState.GONE]
    assert {
        target for (state, _), target in LINK_TRANSITIONS.items() if state is LinkState.CLOSED
    } == {LinkState.CLOSED}


# ------------------------------------------------------- connection, via Presence

CONN_SETUPS: dict[ConnState, list[Event]] = {
    ConnState.OPENED: [ConnectionOpened(conn=1, ns="/ws")],
    ConnState.JOINED: [
        ConnectionOpened(conn=1, ns="/ws"),
        SessionJoined(conn=1, user_id="u", session_id="s"),
    ],
    ConnState.DETACHED: [
        ConnectionOpened(conn=1, ns="/ws"),
        SessionJoined(conn=1, user_id="u", session_id="s"),
        ConnectionOpened(conn=2, ns="/ws"),
        SessionJoined(conn=2, user_id="u", session_id="s"),
    ],
    ConnState.CLOSED: [ConnectionOpened(conn=1, ns="/ws"), ConnectionClosed(conn=1)],
}
CONN_EVENTS: dict[ConnInput, Event] = {
    ConnInput.JOIN: SessionJoined(conn=1, user_id="v", session_id="t"),
    ConnInput.CLOSE: ConnectionClosed(conn=1),
}


@pytest.mark.parametrize(
    ("state", "event_input"), list(itertools.product(CONN_SETUPS, CONN_EVENTS))
)
def test_presence_agrees_with_the_connection_table(
    state: ConnState, event_input: ConnInput
) -> None:
    presence = Presence()
    for event in CONN_SETUPS[state]:
        presence.handle(event)
    assert presence.connection_state(1) is state
    target = CONN_TRANSITIONS.get((state, event_input))
    if target is None:
        with pytest.raises(LocalUsageError):
            presence.handle(CONN_EVENTS[event_input])
        assert presence.connection_state(1) is state
    else:
        presence.handle(CONN_EVENTS[event_input])
        assert presence.connection_state(1) is target


# -------------------------------------------------------- hub link, via Presence

START, CONNECTED = HubLinkStarted(now=0), HubConnected(now=0)
REGISTERED = HubFrameReceived(data=registered_frame(interval=10), now=0)

LINK_SETUPS: dict[LinkState, list[Event]] = {
    LinkState.IDLE: [],
    LinkState.CONNECTING: [START],
    LinkState.REGISTERING: [START, CONNECTED],
    LinkState.REGISTERED: [START, CONNECTED, REGISTERED],
    LinkState.CLOSING: [START, CONNECTED, REGISTERED, Tick(now=1000)],
    LinkState.BACKING_OFF: [START, HubLost(now=0, code=1006)],
    LinkState.DRAINING: [START, CONNECTED, REGISTERED, ShutdownRequested()],
    LinkState.CLOSED: [START, CONNECTED, REGISTERED, HubLost(now=0, code=1008)],
}


def _tick_input(state: LinkState) -> LinkInput | None:
    if state in (LinkState.CONNECTING, LinkState.REGISTERING, LinkState.REGISTERED):
        return LinkInput.TIMEOUT
    return LinkInput.RETRY_DUE if state is LinkState.BACKING_OFF else None


LINK_EVENTS: dict[str, tuple[Event, Callable[[LinkState], LinkInput | None]]] = {
    "start": (HubLinkStarted(now=5000), lambda s: LinkInput.START),
    "connected": (HubConnected(now=5000), lambda s: LinkInput.CONNECTED),
    "registered": (
        HubFrameReceived(data=registered_frame(), now=5000),
        lambda s: LinkInput.REGISTERED if s is LinkState.REGISTERING else LinkInput.FRAME,
    ),
    "frame": (HubFrameReceived(data=hub_frame("HEARTBEAT"), now=5000), lambda s: LinkInput.FRAME),
    "late tick": (Tick(now=5000), _tick_input),
    "lost": (HubLost(now=5000, code=1006), lambda s: LinkInput.LOST),
    "refused": (HubLost(now=5000, code=1008), lambda s: LinkInput.REFUSED),
    "shutdown": (ShutdownRequested(), lambda s: LinkInput.SHUTDOWN),
}


@pytest.mark.parametrize(("state", "name"), list(itertools.product(LINK_SETUPS, LINK_EVENTS)))
def test_presence_agrees_with_the_link_table(state: LinkState, name: str) -> None:
    presence = Presence(PresenceConfig(hub=HubLinkConfig(bridge_id="b", instance_id="i")))
    for event in LINK_SETUPS[state]:
        presence.handle(event)
    assert presence.hub_link_state is state
    event, to_input = LINK_EVENTS[name]
    link_input = to_input(state)
    target = state if link_input is None else LINK_TRANSITIONS.get((state, link_input))
    if target is None:
        with pytest.raises(LocalUsageError):
            presence.handle(event)
        assert presence.hub_link_state is state
    else:
        presence.handle(event)
        assert presence.hub_link_state is target


# ------------------------------------------------------------- bridges, via Hub

AUTH = "Bearer t"
REGISTER = hub_frame("REGISTER", bridgeId="b", instanceId="i", protocol=1)


def _hub_event(name: str) -> Any:
    return {
        "connecting": BridgeConnecting(bridge="X", authorization=AUTH, now=1),
        "register": BridgeFrameReceived(bridge="X", data=REGISTER, now=1),
        "frame": BridgeFrameReceived(bridge="X", data=hub_frame("HEARTBEAT"), now=1),
        "closed": BridgeClosed(bridge="X", now=1),
        "late tick": Tick(now=1000),
        "shutdown": ShutdownRequested(),
    }[name]


BRIDGE_SETUPS: dict[BridgeState, list[str]] = {
    BridgeState.AWAITING_REGISTER: ["connecting"],
    BridgeState.REGISTERED: ["connecting", "register"],
    BridgeState.CLOSING: ["connecting", "register", "register"],  # REGISTER twice is fatal
    BridgeState.GONE: ["connecting", "closed"],
}
_A, _R, _C, _G = (
    BridgeState.AWAITING_REGISTER,
    BridgeState.REGISTERED,
    BridgeState.CLOSING,
    BridgeState.GONE,
)
RAISES = None
#: (state, event) -> the state after it, or RAISES for misuse by the shim. Bad
#: input from the bridge itself never raises: it closes that bridge instead.
HUB_EXPECTED: dict[tuple[BridgeState, str], BridgeState | None] = {
    (_A, "connecting"): RAISES,
    (_A, "register"): _R,
    (_A, "frame"): _C,
    (_A, "closed"): _G,
    (_A, "late tick"): _C,
    (_A, "shutdown"): _C,
    (_R, "connecting"): RAISES,
    (_R, "register"): _C,
    (_R, "frame"): _R,
    (_R, "closed"): _G,
    (_R, "late tick"): _C,
    (_R, "shutdown"): _C,
    (_C, "connecting"): RAISES,
    (_C, "register"): _C,
    (_C, "frame"): _C,
    (_C, "closed"): _G,
    (_C, "late tick"): _C,
    (_C, "shutdown"): _C,
    (_G, "connecting"): _A,
    (_G, "register"): RAISES,
    (_G, "frame"): RAISES,
    (_G, "closed"): RAISES,
    (_G, "late tick"): _G,
    (_G, "shutdown"): _G,
}


@given(st.sampled_from(sorted(HUB_EXPECTED, key=lambda pair: (pair[0].value, pair[1]))))
def test_hub_agrees_with_its_expected_table(pair: tuple[BridgeState, str]) -> None:
    state, name = pair
    hub = Hub(HubConfig(hub_id="h", tokens=["t"]))
    for step in BRIDGE_SETUPS[state]:
        hub.handle(_hub_event(step))
    assert hub.bridge_state("X") is state
    expected = HUB_EXPECTED[pair]
    if expected is RAISES:
        with pytest.raises(LocalUsageError):
            hub.handle(_hub_event(name))
        assert hub.bridge_state("X") is state
    else:
        hub.handle(_hub_event(name))
        assert hub.bridge_state("X") is expected
    hub.check_invariants()


def test_the_hub_expectations_cover_every_state_and_event() -> None:
    assert {state for state, _ in HUB_EXPECTED} == set(BridgeState)
    assert len(HUB_EXPECTED) == len(BridgeState) * 6
