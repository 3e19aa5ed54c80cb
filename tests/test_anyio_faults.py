"""Fault injection: a hook, an identity or a peer that fails costs its own socket only.

Each case runs on asyncio and trio against a real server: the failing socket
gets the documented HTTP status (before the upgrade) or close code (after it),
one log line names the peer, and a bystander connected before keeps working,
as does a client connecting after.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from websockets.exceptions import InvalidStatus

from megapresence_anyio import HandshakeRequest, Identity, PresenceServer
from megapresence_core import LocalUsageError
from megapresence_core.errors import over_limit

from .socket_helpers import Client, http_status, query_login, running_server, wait_for

pytestmark = pytest.mark.anyio


def cursed(user: str, exc: Exception) -> Callable[[Any], None]:
    """A hook that raises ``exc`` for ``user``'s socket only."""

    def hook(client: Any, *rest: object) -> None:
        if client.user_id == user:
            raise exc

    return hook


@asynccontextmanager
async def with_bystander(**options: Any) -> AsyncIterator[tuple[PresenceServer, str, Client]]:
    async with running_server(**options) as (server, url):
        bystander = await Client.connect(f"{url}/ws?user=bob&channels=lobby")
        await wait_for(lambda: len(server.roster("/ws")) == 1)
        yield server, url, bystander
        # The bystander was not touched, and the server still takes new sockets.
        server.broadcast("/ws", "lobby", {"type": "still-here"})
        assert (await bystander.recv_json())["type"] == "still-here"
        late = await Client.connect(f"{url}/ws?user=late")
        await late.close()
        await bystander.close()


def logged_about(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """Log lines of megapresence that name the peer (its address) and hold ``words``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "megapresence"
        and "peer 127.0.0.1:" in record.getMessage()
        and all(word in record.getMessage() for word in words)
    ]


async def upgrade_status(url: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await Client.connect(url)
    return refused.value.response.status_code


async def test_authenticate_raising_is_500_for_that_request_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def authenticate(request: HandshakeRequest) -> Identity | None:
        if request.query.get("user") == "crash":
            raise RuntimeError("auth backend bug")
        return query_login(request)  # type: ignore[return-value]

    async with with_bystander(authenticate=authenticate) as (_, url, _):
        assert await upgrade_status(f"{url}/ws?user=crash") == 500
    [line] = logged_about(caplog, "HTTP 500", "auth backend bug")
    assert "/ws" in line


async def test_async_authenticate_raising_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async def authenticate(request: HandshakeRequest) -> Identity | None:
        await anyio.sleep(0)
        if request.query.get("user") == "crash":
            raise KeyError("session store down")
        return query_login(request)  # type: ignore[return-value]

    async with with_bystander(authenticate=authenticate) as (_, url, _):
        assert await upgrade_status(f"{url}/ws?user=crash") == 500
    assert logged_about(caplog, "HTTP 500", "session store down")


async def test_authenticate_returning_nonsense_is_500(caplog: pytest.LogCaptureFixture) -> None:
    def authenticate(request: HandshakeRequest) -> Any:
        return "ann" if request.query.get("user") == "ann" else query_login(request)

    async with with_bystander(authenticate=authenticate) as (_, url, _):
        assert await upgrade_status(f"{url}/ws?user=ann") == 500
    assert logged_about(caplog, "HTTP 500", "an Identity, a Refusal or None")


async def test_authenticate_that_hangs_gets_503_at_the_handshake_timeout() -> None:
    from megapresence_anyio import SocketLimits

    async def authenticate(request: HandshakeRequest) -> Identity | None:
        if request.query.get("user") == "slow":
            await anyio.sleep_forever()
        return query_login(request)  # type: ignore[return-value]

    limits = SocketLimits(handshake_timeout=0.3)
    async with with_bystander(authenticate=authenticate, limits=limits) as (_, url, _):
        assert await upgrade_status(f"{url}/ws?user=slow") == 503


@pytest.mark.parametrize(
    ("identity", "limit", "status"),
    [
        (
            Identity(user_id="ann", session_id="a", channels=[f"c{i}" for i in range(65)]),
            "max_channels_per_session",
            400,  # over a limit: the request asked for too much
        ),
        (
            Identity(user_id="ann", session_id="a", metadata={"bio": "x" * 4097}),
            "max_metadata_bytes",
            400,
        ),
        (Identity(user_id="", session_id="a"), "user_id", 500),  # authenticate's own bug
        (Identity(user_id="ann", session_id="a", metadata={"f": float("nan")}), "metadata", 500),
        # A peer's value (a token's claim) that no frame could carry: never a 101.
        (Identity(user_id="\ud800", session_id="a"), "user_id holds a lone surrogate", 400),
        (Identity(user_id="ann", session_id="a\udfff"), "session_id holds a lone", 400),
        (Identity(user_id="ann", session_id="a", channels=["\udc80"]), "channels holds", 400),
    ],
    ids=[
        "65-channels",
        "metadata-over-4KiB",
        "empty-user",
        "nan-metadata",
        "surrogate-user",
        "surrogate-session",
        "surrogate-channel",
    ],
)
async def test_an_identity_the_core_refuses_gets_the_errors_status_before_the_upgrade(
    identity: Identity, limit: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(request: HandshakeRequest) -> Identity | None:
        return identity if request.query.get("user") == "over" else query_login(request)  # type: ignore[return-value]

    async with with_bystander(authenticate=authenticate) as (server, url, _):
        assert await upgrade_status(f"{url}/ws?user=over") == status
        assert {c.user_id for c in server.clients} == {"bob"}  # nothing half-open is left
    assert logged_about(caplog, f"HTTP {status}", limit)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RuntimeError("open hook bug"), 1011),
        (LocalUsageError("kick: unknown id"), 1011),  # misuse: the server's own fault
        (over_limit("over a limit"), 1008),  # a refusal: the error's hint
    ],
    ids=["bug-1011", "misuse-1011", "core-refusal-1008"],
)
async def test_on_open_raising_closes_that_socket(
    exc: Exception, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with with_bystander(on_open=cursed("ann", exc)) as (server, url, _):
        ann = await Client.connect(f"{url}/ws?user=ann")
        assert (await ann.closed())[0] == code
        await wait_for(lambda: "ann" not in {c.user_id for c in server.clients})
    [line] = logged_about(caplog, f"closed with {code}", str(exc))
    assert "user='ann'" in line


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RuntimeError("message hook bug"), 1011),
        (LocalUsageError("kick: unknown id"), 1011),
        (over_limit("over a limit"), 1008),
    ],
    ids=["bug-1011", "misuse-1011", "core-refusal-1008"],
)
async def test_on_message_raising_closes_that_socket(
    exc: Exception, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with with_bystander(on_message=cursed("ann", exc)) as (_, url, bystander):
        ann = await Client.connect(f"{url}/ws?user=ann")
        await ann.send("hello")
        assert await ann.closed() == (code, "internal error" if code == 1011 else "refused")
        await bystander.send("hello too")  # the same hook, another user: no harm
    assert logged_about(caplog, f"closed with {code}", "user='ann'")


async def test_a_broadcast_over_the_core_limit_from_a_hook_is_1009_for_its_sender() -> None:
    def relay(client: Any, text: str) -> None:
        client._server.broadcast("/ws", "lobby", {"type": "m", "payload": text})

    async with with_bystander(on_message=relay) as (_, url, bystander):
        ann = await Client.connect(f"{url}/ws?user=ann")
        await ann.send("x" * 65_534)  # with {"type","payload"}: over Limits.max_message_bytes
        assert (await ann.closed())[0] == 1009  # the core's hint: message too big
        assert await bystander.silent()  # the core refused it before any delivery


async def test_on_close_raising_is_logged_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with with_bystander(on_close=cursed("ann", RuntimeError("close hook bug"))) as (
        server,
        url,
        _,
    ):
        ann = await Client.connect(f"{url}/ws?user=ann")
        await wait_for(lambda: len(server.clients) == 2)
        await ann.close()
        await wait_for(lambda: len(server.clients) == 1)
    assert logged_about(caplog, "on_close hook failed", "close hook bug")


async def test_an_unroutable_target_is_400_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with with_bystander() as (server, _, _):
        assert server.port is not None
        with caplog.at_level(logging.INFO, logger="megapresence"):
            status = await http_status(server.port, b"GET //[x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 400 Bad Request"
    assert logged_about(caplog, "HTTP 400", "//[x")


async def test_a_close_for_the_peers_doing_is_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with with_bystander() as (_, url, _):
        with caplog.at_level(logging.INFO, logger="megapresence"):
            big = await Client.connect(f"{url}/ws?user=big")
            await big.send("x" * (64 * 1024 + 1))
            assert (await big.closed())[0] == 1009
            await wait_for(lambda: bool(logged_about(caplog, "closed with 1009")))
    [line] = logged_about(caplog, "closed with 1009")
    assert "user='big'" in line
    assert "message over 65536 bytes" in line


@pytest.mark.parametrize("channels", ["lobby", b"lobby"])
def test_identity_channels_given_as_one_string_are_misuse(channels: object) -> None:
    """A string is iterable: it would have become one channel per character."""
    with pytest.raises(
        LocalUsageError, match=r"channels must be a list of channel names.*write \["
    ):
        Identity(user_id="u", session_id="s", channels=channels)  # type: ignore[arg-type]
    assert Identity(user_id="u", session_id="s", channels={"lobby"}).channels == ("lobby",)


async def test_an_over_long_user_id_is_refused_with_a_bounded_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a peer chose (here a 15,000-character ``?user=``) is logged cut short: a
    flood of such requests cannot add a line of that size to the log each."""
    caplog.set_level(logging.INFO, logger="megapresence")
    async with with_bystander() as (_, url, _):
        for _ in range(3):
            assert await upgrade_status(f"{url}/ws/{'p' * 240}?user={'u' * 15000}") == 400
    lines = logged_about(caplog, "HTTP 400", "user_id is 15000 bytes")
    assert len(lines) == 3
    for line in lines:
        assert len(line) < 1000, len(line)
        assert "'uuuu" in line
        assert "...[14802 more characters]" in line  # the repr's quotes count: 15,002
        assert "...[44 more characters]" in line  # the path (an ns within its limit)
