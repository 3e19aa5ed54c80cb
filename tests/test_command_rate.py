"""The per-connection command rate (issue 17): a rule of the core, time in its events.

Each connection has a token bucket of ``Limits.command_burst`` commands that
refills at ``Limits.command_rate`` a second; a ``CommandReceived`` past it is
answered with a ``rate_limited`` refusal and the shim does not handle the
command. A snapshot a connection is sent (``sync``, ``subscribe``) or a ``roster``
answer takes one command more per ``SNAPSHOT_CHARS_PER_COMMAND`` of it, so large
answers come slower. On a real socket the flood is answered, and others are not slowed.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_anyio import HandshakeRequest, Identity, Refusal, handle_command
from megapresence_core import Limits, LocalUsageError, Presence, PresenceConfig
from megapresence_core.actions import Deliver, RequestRefused
from megapresence_core.config import SNAPSHOT_CHARS_PER_COMMAND
from megapresence_core.events import (
    CommandReceived,
    ConnectionOpened,
    PresenceSync,
    RosterRequested,
    SessionJoined,
    Subscribe,
)

from .helpers import drive
from .socket_helpers import Client, query_login, running_server


def machine(rate: float = 10.0, burst: int = 3) -> Presence:
    presence = Presence(PresenceConfig(limits=Limits(command_rate=rate, command_burst=burst)))
    drive(presence, ConnectionOpened(conn="c", ns="/ws"))
    return presence


def allowed(presence: Presence, now: float, conn: str = "c") -> bool:
    actions = drive(presence, CommandReceived(conn=conn, now=now))
    if actions:
        (refusal,) = actions
        assert isinstance(refusal, RequestRefused)
        assert (refusal.conn, refusal.code) == (conn, "rate_limited")
        assert json.loads(refusal.text)["payload"]["code"] == "rate_limited"
    return not actions


def test_a_burst_then_the_rate() -> None:
    presence = machine(rate=4.0, burst=3)
    assert [allowed(presence, 5.0) for _ in range(4)] == [True, True, True, False]
    assert not allowed(presence, 5.125)  # half a token back
    assert allowed(presence, 5.25)  # one
    assert not allowed(presence, 5.25)
    assert [allowed(presence, 100.0) for _ in range(4)] == [True, True, True, False]  # full again


def test_each_connection_has_its_own_bucket() -> None:
    presence = machine(rate=1.0, burst=1)
    drive(presence, ConnectionOpened(conn="d", ns="/ws"))
    assert allowed(presence, 1.0, "c")
    assert not allowed(presence, 1.0, "c")
    assert allowed(presence, 1.0, "d")


def test_a_clock_that_goes_back_refills_nothing() -> None:
    presence = machine(rate=10.0, burst=1)
    assert allowed(presence, 5.0)
    assert not allowed(presence, 4.0)


def test_an_unknown_connection_is_misuse() -> None:
    with pytest.raises(LocalUsageError):
        machine().handle(CommandReceived(conn="nobody", now=1.0))


@pytest.mark.parametrize("value", [0, -1, float("inf"), True])
def test_the_limits_are_validated(value: object) -> None:
    with pytest.raises(LocalUsageError):
        Limits(command_rate=value)  # type: ignore[arg-type]
    with pytest.raises(LocalUsageError):
        Limits(command_burst=value)  # type: ignore[arg-type]


@given(st.lists(st.floats(min_value=0, max_value=0.5), max_size=60))
def test_never_more_than_the_burst_plus_the_rate_over_time(gaps: list[float]) -> None:
    presence = machine(rate=10.0, burst=3)
    now, passed = 1.0, 0
    for gap in gaps:
        now += gap
        passed += allowed(presence, now)
    assert passed <= 3 + 10.0 * (now - 1.0) + 1e-9


def crowded(rate: float, burst: int, members: int = 20) -> Presence:
    """``machine`` whose connection "c" watches (mode sessions) a channel of ``members``
    sessions with 4 KB metadata each: a snapshot of several times 16 KiB."""
    presence = machine(rate=rate, burst=burst)
    drive(presence, SessionJoined(conn="c", user_id="c", session_id="c", now=0.0))
    for n in range(members):
        conn = f"m{n}"
        metadata = {"bio": "x" * 4000}
        drive(
            presence,
            ConnectionOpened(conn=conn, ns="/ws"),
            SessionJoined(conn=conn, user_id=conn, session_id=conn, metadata=metadata, now=0.0),
            Subscribe(conn=conn, channel="room", now=0.0),
        )
    drive(presence, Subscribe(conn="c", channel="room", mode="sessions", now=0.0))
    return presence


def synced(presence: Presence, now: float) -> int:
    """Send "c" a ``sync`` (as the shim does: a command, then the event); the
    snapshot's cost in commands beyond the first, or -1 when it was refused."""
    if not allowed(presence, now):
        return -1
    (snapshot,) = drive(presence, PresenceSync(conn="c", channel="room"))
    assert isinstance(snapshot, Deliver)
    assert json.loads(snapshot.text)["type"] == "presence.state"
    return len(snapshot.text) // SNAPSHOT_CHARS_PER_COMMAND


def test_a_sync_costs_one_command_more_per_16_kib_of_its_snapshot() -> None:
    presence = crowded(rate=1.0, burst=40)
    cost = synced(presence, 10.0)
    assert cost >= 4
    passed = 0
    while allowed(presence, 10.0):
        passed += 1
    assert passed == 40 - 1 - cost  # what the same connection could still send at once


def test_a_subscribe_with_a_snapshot_costs_it_and_one_without_does_not() -> None:
    presence = crowded(rate=1.0, burst=40)
    assert allowed(presence, 10.0)
    actions = drive(presence, Subscribe(conn="c", channel="room", mode="users", now=10.0))
    (state,) = [a for a in actions if isinstance(a, Deliver) and "presence.state" in a.text]
    cost = len(state.text) // SNAPSHOT_CHARS_PER_COMMAND
    assert cost >= 4
    for mode in ("count", "none"):  # small answers: the command's own token only
        assert allowed(presence, 10.0)
        drive(presence, Subscribe(conn="c", channel="room", mode=mode, now=10.0))
    passed = 0
    while allowed(presence, 10.0):
        passed += 1
    assert passed == 40 - 3 - cost


def test_a_roster_costs_one_command_more_per_16_kib_of_it() -> None:
    presence = crowded(rate=1.0, burst=40)
    assert allowed(presence, 10.0)
    (answer,) = drive(presence, RosterRequested(conn="c", ns="/ws"))
    assert isinstance(answer, Deliver)
    roster = answer.text
    assert len(json.loads(roster)["payload"]["members"]) == 21
    cost = len(roster) // SNAPSHOT_CHARS_PER_COMMAND
    assert cost >= 4
    passed = 0
    while allowed(presence, 10.0):
        passed += 1
    assert passed == 40 - 1 - cost


def test_a_roster_for_an_unknown_connection_is_a_usage_error() -> None:
    with pytest.raises(LocalUsageError, match="unknown connection"):
        drive(machine(), RosterRequested(conn="nobody", ns="/ws"))


def test_the_debt_of_a_snapshot_is_at_most_one_burst() -> None:
    presence = crowded(rate=4.0, burst=2)
    assert synced(presence, 10.0) > 2  # it costs more than a burst: still served once
    assert synced(presence, 10.0) == -1
    assert synced(presence, 10.5) == -1  # at -2 + 2 tokens, not yet one
    assert synced(presence, 10.75) > 2  # -2 + 3: the debt is paid


def test_the_rate_of_syncs_falls_with_the_size_of_their_snapshot() -> None:
    small, large = crowded(rate=20.0, burst=20, members=2), crowded(rate=20.0, burst=20)
    served = {}
    for name, presence in (("small", small), ("large", large)):
        costs = [synced(presence, 10.0 + tick / 100) for tick in range(1000)]  # 100/s, 10 s
        served[name] = sum(cost >= 0 for cost in costs)
        cost = max(costs)
        # The burst, then the rate: each served sync took 1 + cost of them.
        assert served[name] <= (20 + 20.0 * 10) / (1 + cost) + 1
    assert served["small"] >= 200  # 8 KB of 2 members: one command each
    assert served["large"] <= 60


@pytest.mark.anyio
async def test_a_flood_of_commands_is_answered_rate_limited() -> None:
    presence = PresenceConfig(leave_grace=0, limits=Limits(command_rate=5.0, command_burst=5))
    async with running_server(on_message=handle_command, presence=presence) as (_server, url):
        ann = await Client.connect(f"{url}/ws?user=ann")
        for _ in range(8):
            await ann.send(json.dumps({"op": "sync", "channel": "nowhere"}))
        codes = [(await ann.recv_json())["payload"]["code"] for _ in range(8)]
        assert codes == ["not_subscribed"] * 5 + ["rate_limited"] * 3
        await ann.close()


@pytest.mark.anyio
async def test_syncs_of_a_large_channel_are_rate_limited_sooner_on_a_socket() -> None:
    def authenticate(request: HandshakeRequest) -> Identity | Refusal | None:
        user = request.query.get("user")
        if user is not None and user.startswith("m"):  # 20 members of 4 KB each
            metadata = {"bio": "x" * 4000}
            return Identity(user_id=user, session_id=user, channels=("room",), metadata=metadata)
        return query_login(request)

    limits = Limits(command_rate=0.5, command_burst=20)
    presence = PresenceConfig(leave_grace=0, limits=limits)
    options = {"on_message": handle_command, "presence": presence, "authenticate": authenticate}
    async with running_server(**options) as (_server, url):
        members = [await Client.connect(f"{url}/ws?user=m{n}") for n in range(20)]
        ann = await Client.connect(f"{url}/ws?user=ann")
        await ann.send(json.dumps({"op": "subscribe", "channel": "room", "presence": "sessions"}))
        for _ in range(10):
            await ann.send(json.dumps({"op": "sync", "channel": "room"}))
        answers: list[str] = []
        while len(answers) < 11:  # the subscribe's snapshot, then one per sync
            message = await ann.recv_json()
            if message["type"] == "presence.state":
                answers.append(f"state of {len(json.dumps(message)) // 1024} KiB")
            elif message["type"] == "error":
                answers.append(message["payload"]["code"])
        # 20 commands at once, and each ~80 KiB snapshot costs 5 more: the subscribe's
        # and two or three syncs', not ten.
        states = [a for a in answers if a.startswith("state")]
        assert 3 <= len(states) <= 4, answers
        assert answers[len(states) :] == ["rate_limited"] * (11 - len(states)), answers
        for client in (ann, *members):
            await client.close()
