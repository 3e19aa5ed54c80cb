"""The per-connection command rate (issue 17): a rule of the core, time in its events.

Each connection has a token bucket of ``Limits.command_burst`` commands that
refills at ``Limits.command_rate`` a second; a ``CommandReceived`` past it is
answered with a ``rate_limited`` refusal and the shim does not handle the
command. On a real socket the flood is answered, and others are not slowed.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_anyio import handle_command
from megapresence_core import Limits, LocalUsageError, Presence, PresenceConfig
from megapresence_core.actions import RequestRefused
from megapresence_core.events import CommandReceived, ConnectionOpened

from .helpers import drive
from .socket_helpers import Client, running_server


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
