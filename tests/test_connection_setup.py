"""Connection setup, kept lean: what an open socket keeps of its request, the one task
that keeps every handshake deadline, and wsproto's state per socket."""

from __future__ import annotations

import anyio
import pytest
from wsproto.events import CloseConnection

from megapresence_anyio import DEFAULT_SOCKET_LIMITS, Client, SocketLimits
from megapresence_anyio._http import _Pending, server_connection

from .socket_helpers import RawClient, http_status, running_server, wait_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("keep", [False, True])
async def test_an_open_socket_keeps_its_headers_only_when_asked(keep: bool) -> None:
    seen_in_on_open: list[str | None] = []
    opened: list[Client] = []

    def on_open(client: Client) -> None:
        seen_in_on_open.append(client.request.header("x-token"))
        opened.append(client)

    async with running_server(on_open=on_open, keep_headers=keep) as (server, _):
        assert server.port is not None
        async with await RawClient.connect(server.port, "/ws?user=u1", "X-Token: t1\r\n"):
            await wait_for(lambda: bool(opened))
            await anyio.sleep(0.05)  # on_open has returned
            (client,) = opened
            assert seen_in_on_open == ["t1"]  # on_open sees the whole request
            assert client.request.header("x-token") == ("t1" if keep else None)
            assert client.request.query == {"user": "u1"}  # path, query, address stay
            assert client.request.path == "/ws"
            assert client.request.remote is not None


async def test_one_task_answers_408_to_every_silent_socket_at_its_deadline() -> None:
    limits = SocketLimits(handshake_timeout=0.3)
    async with running_server(limits=limits) as (server, _):
        assert server.port is not None
        port = server.port
        statuses: list[bytes] = []

        async def silent() -> None:
            statuses.append(await http_status(port, b"GET /ws HTTP/1.1\r\n"))

        started = anyio.current_time()
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(silent)
        assert statuses == [b"HTTP/1.1 408 Request Timeout"] * 20
        assert anyio.current_time() - started >= 0.3
        await wait_for(lambda: server._admission.pending == 0)  # none left counted
        # A socket that sends its request in time is served as ever.
        async with await RawClient.connect(port, "/ws?user=u1"):
            pass


def test_wsproto_keeps_a_list_not_a_deque_and_still_reports_a_lost_peer() -> None:
    ws = server_connection(b"", DEFAULT_SOCKET_LIMITS.max_message_bytes)
    assert isinstance(ws._events, _Pending)
    ws.receive_data(None)
    assert [type(event) for event in ws.events()] == [CloseConnection]
    assert not ws._events
