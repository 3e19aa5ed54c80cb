"""Numbers in request headers are parsed with a bound (issue 17, item 9).

Python refuses to convert a string of more than 4,300 digits to an int; a header
holding one must cost its request the extension or the port, never a 500 and a
traceback.
"""

from __future__ import annotations

import logging

import pytest

from megapresence_anyio import SocketLimits
from megapresence_anyio._deflate import negotiate
from megapresence_anyio._forwarded import forwarded_for
from megapresence_anyio._http import HandshakeRequest

from .socket_helpers import RawClient, running_server, wait_for

HUGE = "9" * 5000


def test_a_huge_window_size_declines_the_offer() -> None:
    assert negotiate([f"permessage-deflate; server_max_window_bits={HUGE}"]) is None
    assert negotiate([f"permessage-deflate; client_max_window_bits={HUGE}"]) is None
    assert negotiate(["permessage-deflate; server_max_window_bits=010"]) is None


@pytest.mark.parametrize("port", [HUGE, "65536", "١٢"])
def test_a_forwarded_port_that_is_no_port_is_ignored(port: str) -> None:
    request = HandshakeRequest(
        method="GET", path="/ws", headers=(("x-forwarded-for", f"203.0.113.7:{port}"),)
    )
    trusted = frozenset(SocketLimits(trusted_proxies=["127.0.0.1"]).trusted_proxies)
    assert forwarded_for(request, ("127.0.0.1", 5000), trusted) == ("203.0.113.7", 0)


def no_error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.anyio
async def test_huge_numbers_in_headers_cost_the_number_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = SocketLimits(permessage_deflate=True, trusted_proxies=["127.0.0.1"])
    async with running_server(limits=limits) as (server, _url):
        port = server.port
        assert port is not None
        offer = f"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits={HUGE}\r\n"
        async with await RawClient.connect(port, "/ws?user=ann", offer) as ann:
            assert b"sec-websocket-extensions" not in ann.head.lower()  # declined, not a 500
            forwarded = f"X-Forwarded-For: 203.0.113.7:{HUGE}\r\n"
            async with await RawClient.connect(port, "/ws?user=bob", forwarded):
                await wait_for(lambda: len(server.clients) == 2)
                remotes = {c.user_id: c.request.remote for c in server.clients}
                assert remotes["bob"] == ("203.0.113.7", 0)
    assert no_error_lines(caplog) == []
