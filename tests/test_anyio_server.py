"""PresenceServer over real sockets, on asyncio and trio, with ``websockets`` as the client."""

from __future__ import annotations

import contextlib
import struct

import anyio
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from megapresence_anyio import PresenceServer, SocketLimits
from megapresence_core import Limits, Member, PresenceConfig

from .hostile import Hostile, answer, masked, upgrade
from .socket_helpers import (
    Client,
    RawClient,
    http_status,
    query_login,
    running_server,
    upgrade_answer,
    wait_for,
)

pytestmark = pytest.mark.anyio


async def test_join_broadcast_with_except_direct_and_roster() -> None:
    async with running_server() as (server, url):
        ann = await Client.connect(f"{url}/ws/chat?user=ann&channels=lobby")
        bob = await Client.connect(f"{url}/ws/chat?user=bob")
        anon = await Client.connect(f"{url}/ws/chat")
        other = await Client.connect(f"{url}/ws/other?user=cid")
        await wait_for(lambda: len(server.roster("/ws/chat")) == 2)
        assert server.roster("/ws/chat") == [
            Member(session_id="ann-s", user_id="ann"),
            Member(session_id="bob-s", user_id="bob"),
        ]

        server.broadcast(
            "/ws/chat",
            "lobby",
            {"type": "chat", "payload": {"t": "hi"}},
            except_session_ids=["bob-s"],
        )
        expected = {"type": "chat", "ns": "/ws/chat", "payload": {"t": "hi"}}
        assert await ann.recv_json() == expected
        assert await anon.recv_json() == expected  # unjoined connections get broadcasts
        assert await bob.silent()
        assert await other.silent()

        server.direct_to_user("bob", {"type": "dm", "payload": 1})
        assert await bob.recv_json() == {"type": "dm", "payload": 1}
        assert await ann.silent()

        server.update_metadata("ann-s", {"status": "away"})
        assert (await server.presence_list(["lobby"]))[0].metadata == {"status": "away"}

        await bob.close()
        await wait_for(lambda: [m.user_id for m in server.roster("/ws/chat")] == ["ann"])
        for client in (ann, anon, other):
            await client.close()
        await wait_for(lambda: not server.clients)


@pytest.mark.parametrize(("requeue", "code"), [(False, 1008), (True, 4503)])
async def test_kick_closes_with_its_code_and_reason(requeue: bool, code: int) -> None:
    async with running_server() as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann")
        await wait_for(lambda: bool(server.roster("/ws")))
        server.kick("ann-s", "가" * 50, requeue=requeue)  # 150 bytes: cut to 123
        got_code, reason = await ann.closed()
        assert got_code == code
        assert reason == "가" * 41
        await wait_for(lambda: not server.roster("/ws"))


async def test_a_drain_without_a_hub_or_cluster_closes_with_1001_and_returns_at_once() -> None:
    """No other server could take the sessions over: the clients are told the server
    goes (1001, reconnect with backoff), not 4503, and the drain does not wait."""
    async with running_server() as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann")
        await wait_for(lambda: bool(server.roster("/ws")))
        await server.drain(timeout=30)
        assert server.presence.drained  # it returned for that, not for its timeout
        assert await ann.closed() == (1001, "server shutting down")


async def test_a_drain_timeout_bounds_the_shutdown_after_it_past_an_unanswered_close() -> None:
    """A client that never answers the close frame holds its socket for ``close_timeout``
    (5 s) at most; after a drain of 0.5 s the shutdown waits for it no longer than the
    drain's timeout: the socket is aborted then."""
    with anyio.fail_after(15):
        async with running_server() as (server, _):
            assert server.port is not None
            deaf = await RawClient.connect(server.port, "/ws?user=deaf")
            await wait_for(lambda: bool(server.roster("/ws")))
            started = anyio.current_time()
            await server.drain(timeout=0.5)
        took = anyio.current_time() - started
        assert took < 2.5, took  # the close timeout would be 5 s
        async with deaf:
            assert await deaf.close_code() == 1001
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await deaf.stream.receive()  # aborted, not left open


async def test_a_bad_percent_escape_in_the_query_is_400_and_a_repeated_name_keeps_its_first() -> (
    None
):
    """docs/limits.md: a bad ``%`` escape in the request target is 400, in the query as
    in the path (``%zz`` reached ``authenticate`` as the user id ``%zz``)."""
    async with running_server() as (server, _):
        assert server.port is not None
        for query in ("user=%zz&session=p1", "user=a%", "user=a%4", "user=ann&x=%G1"):
            status = await upgrade_answer(server.port, path=f"/ws/chat?{query}")
            assert status == b"HTTP/1.1 400 Bad Request", query
            get = f"GET /?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            assert await http_status(server.port, get) == b"HTTP/1.1 400 Bad Request", query
        assert not server.roster("/ws/chat")
        async with await RawClient.connect(server.port, "/ws/chat?user=%41nn&user=bob&x=%25"):
            await wait_for(lambda: bool(server.roster("/ws/chat")))
            assert [m.user_id for m in server.roster("/ws/chat")] == ["Ann"]


@pytest.mark.parametrize("paths", [("/ws/",), None], ids=["under-ws", "any"])
async def test_a_path_with_a_dot_segment_is_no_websocket_path(
    paths: tuple[str, ...] | None,
) -> None:
    """``/ws/../x`` is ``/x`` once resolved (as a browser would before sending): not under
    ``/ws/``, and not one ns under two names."""
    async with running_server(paths=paths) as (server, _):
        assert server.port is not None
        for path in ("/ws/../x", "/ws/./chat", "/ws/%2E%2e/x", "/ws/.%2e", "/ws/chat/.."):
            status = await upgrade_answer(server.port, path=path)
            assert status == b"HTTP/1.1 404 Not Found", path
            assert not server.serves_path(path)  # the ASGI route asks this
        for path in ("/ws/..x", "/ws/x..", "/ws/.well"):  # a segment with more than dots
            assert (await upgrade_answer(server.port, path=path)).startswith(b"HTTP/1.1 101")


async def test_refused_and_unknown_paths_get_http_errors() -> None:
    async with running_server(paths=("/ws/",)) as (server, url):
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}/ws/chat?user=refused")
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as missing:
            await Client.connect(f"{url}/elsewhere")
        assert missing.value.response.status_code == 404
        port = server.port
        assert port is not None
        assert await http_status(port, b"GET /ws/x HTTP/1.1\r\nHost: x\r\n\r\n") == (
            b"HTTP/1.1 426 Upgrade Required"
        )
        assert await http_status(port, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n") == (
            b"HTTP/1.1 405 Method Not Allowed"
        )


async def test_pages_are_served_over_plain_http() -> None:
    pages = {"/": ("text/html", b"<h1>hi</h1>")}
    async with running_server(pages=pages) as (server, _):
        assert server.port is not None
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            with anyio.fail_after(5):
                while not data.endswith(b"<h1>hi</h1>"):
                    data += await stream.receive()
        assert data.startswith(b"HTTP/1.1 200 OK")


# --------------------------------------------------------------------- limits


async def test_oversized_message_is_closed_with_1009() -> None:
    async with running_server(limits=SocketLimits(max_message_bytes=1000)) as (_, url):
        client = await Client.connect(f"{url}/ws")
        await client.send("x" * 2000)
        assert (await client.closed())[0] == 1009


async def test_oversized_fragmented_message_is_closed_before_it_is_whole() -> None:
    async with running_server(limits=SocketLimits(max_message_bytes=1000)) as (_, url):
        client = await Client.connect(f"{url}/ws")
        with contextlib.suppress(ConnectionClosed):  # the close may cut the send short
            await client.send(["x" * 400] * 3)  # 1200 bytes in three fragments
        assert (await client.closed())[0] == 1009


@pytest.mark.parametrize(
    "frames",
    [
        # One frame announcing 1001 bytes, of which 10 are sent.
        masked(0x81, b"x" * 10, b"\xfe" + struct.pack("!H", 1001)),
        # A whole first fragment of 600, then a continuation announcing 600 more.
        masked(0x01, b"x" * 600, b"\xfe" + struct.pack("!H", 600))
        + masked(0x80, b"x" * 10, b"\xfe" + struct.pack("!H", 600)),
    ],
    ids=["one-frame", "fragments"],
)
async def test_a_message_is_closed_with_1009_when_its_headers_announce_too_much(
    frames: bytes,
) -> None:
    """Without waiting for the rest: the peer may never send it, or send a gigabyte."""
    async with running_server(limits=SocketLimits(max_message_bytes=1000)) as (server, _):
        assert server.port is not None
        case = Hostile("announced-over-limit", upgrade("/ws") + frames, 1009)
        assert await anyio.to_thread.run_sync(answer, server.port, case, 5) == 1009


async def test_too_many_fragments_is_closed_with_1008() -> None:
    async with running_server(limits=SocketLimits(max_fragments=4)) as (_, url):
        client = await Client.connect(f"{url}/ws")
        with contextlib.suppress(ConnectionClosed):
            await client.send(["a"] * 10)
        assert (await client.closed())[0] == 1008


async def test_invalid_utf8_is_closed_with_1007() -> None:
    async with running_server() as (_, url):
        client = await Client.connect(f"{url}/ws")
        await client.send(b"\xff\xfe", text=True)
        assert (await client.closed())[0] == 1007


async def test_binary_is_closed_with_1003() -> None:
    async with running_server() as (_, url):
        client = await Client.connect(f"{url}/ws")
        await client.send(b"\x00\x01")
        assert (await client.closed())[0] == 1003


async def test_protocol_error_is_closed_with_1002() -> None:
    async with running_server() as (server, _):
        assert server.port is not None
        async with await RawClient.connect(server.port) as raw:
            await raw.send_frame(0xC1, b"hi")  # RSV1 set with no extension negotiated
            with anyio.fail_after(5):
                assert await raw.close_code() == 1002


async def test_slow_consumer_is_closed_with_1013_and_others_keep_receiving() -> None:
    limits = SocketLimits(max_send_buffer=64 * 1024, close_timeout=30)
    async with running_server(limits=limits) as (server, url):
        slow = await Client.connect(f"{url}/ws?user=slow", max_queue=1)
        fast = await Client.connect(f"{url}/ws?user=fast")
        await wait_for(lambda: len(server.clients) == 2)
        [slow_side] = [c for c in server.clients if c.user_id == "slow"]
        payload = "x" * 32 * 1024
        sent = 0
        with anyio.fail_after(60):
            while slow_side.session.is_open:
                server.broadcast("/ws", "c", {"type": "t", "payload": payload})
                sent += 1
                message = await fast.recv_json()  # the fast client never falls behind
                assert message["payload"] == payload
        assert slow_side.session.close_code == 1013
        server.broadcast("/ws", "c", {"type": "after"})
        assert (await fast.recv_json())["type"] == "after"
        assert (await slow.closed(timeout=30))[0] == 1013
        assert sent > 2  # the kernel buffers filled before the limit was reached


async def test_one_frame_bigger_than_the_send_buffer_reaches_a_peer_that_reads() -> None:
    limits = SocketLimits(max_send_buffer=64 * 1024)
    big = Limits(max_message_bytes=8 * 1024 * 1024, max_hub_frame_bytes=9 * 1024 * 1024)
    async with running_server(limits=limits, presence=PresenceConfig(limits=big)) as (server, url):
        client = await Client.connect(f"{url}/ws", max_size=None)
        await wait_for(lambda: len(server.clients) == 1)
        payload = "x" * (4 * 1024 * 1024)  # more than the kernel takes at once, too
        for _ in range(2):
            server.broadcast("/ws", "c", {"type": "big", "payload": payload})
            assert (await client.recv_json(timeout=30))["payload"] == payload
        [side] = server.clients
        assert side.session.is_open
        await client.close()


async def test_a_slow_consumer_gets_its_1013_close_frame() -> None:
    limits = SocketLimits(max_send_buffer=64 * 1024, close_timeout=5)
    big = Limits(max_message_bytes=4 * 1024 * 1024, max_hub_frame_bytes=5 * 1024 * 1024)
    async with running_server(limits=limits, presence=PresenceConfig(limits=big)) as (server, _):
        assert server.port is not None
        async with await RawClient.connect(server.port) as raw:  # reads nothing for now
            await wait_for(lambda: len(server.clients) == 1)
            [side] = server.clients
            payload = "x" * (2 * 1024 * 1024)
            while side.session.is_open:
                server.broadcast("/ws", "c", {"type": "big", "payload": payload})
                await anyio.sleep(0)
            assert side.session.close_code == 1013
            with anyio.fail_after(30):  # generous: it reads megabytes first
                assert await raw.close_code() == 1013  # not a bare end of stream


async def test_keepalive_pings_a_quiet_peer_and_keeps_it_while_it_answers() -> None:
    # Huge intervals, so the server's own timer does not act; time is driven by hand.
    limits = SocketLimits(ping_interval=100, ping_timeout=100, close_timeout=100)
    async with running_server(limits=limits) as (server, url):
        client = await Client.connect(f"{url}/ws")  # websockets answers pings
        await wait_for(lambda: len(server.clients) == 1)
        [side] = server.clients
        session = side.session
        # Whole seconds, so t + 250 - (t + 150) is exactly 100 (not 99.99999999999818).
        t = session.last_heard = float(int(session.last_heard))
        session.keepalive(t + 99)
        assert session.ping_sent_at is None  # not quiet for long enough yet
        session.keepalive(t + 100)
        assert session.ping_sent_at == t + 100
        # The pong (the server's own tick, every 25 s here, may have noted it first).
        await wait_for(lambda: session.heard or session.ping_sent_at is None)
        session.keepalive(t + 150)
        assert session.ping_sent_at is None
        session.keepalive(t + 250)  # past the first ping's timeout: a new ping, no close
        assert session.is_open
        assert session.ping_sent_at == t + 250
        await client.close()


async def test_keepalive_closes_a_silent_peer_with_1011_then_drops_it() -> None:
    limits = SocketLimits(ping_interval=100, ping_timeout=100, close_timeout=100)
    async with running_server(limits=limits) as (server, _):
        assert server.port is not None
        async with await RawClient.connect(server.port) as raw:  # never answers a ping
            await wait_for(lambda: len(server.clients) == 1)
            [side] = server.clients
            session = side.session
            t = session.last_heard = float(int(session.last_heard))  # exact sums, as above
            session.keepalive(t + 100)
            with anyio.fail_after(5):
                assert (await raw.frame())[0] == 0x9  # the ping
            session.keepalive(t + 199)
            assert session.is_open
            session.keepalive(t + 200)
            assert session.close_code == 1011
            with anyio.fail_after(5):
                assert await raw.close_code() == 1011
            session.keepalive(t + 299)
            assert side in server.clients  # the close handshake may still end well...
            session.keepalive(t + 300)  # ...until close_timeout: then the socket is dropped
            await wait_for(lambda: not server.clients)


async def test_bad_origin_is_refused_with_403_before_the_upgrade() -> None:
    limits = SocketLimits(allowed_origins=["http://good.example"])
    async with running_server(limits=limits) as (_, url):
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}/ws", origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            await Client.connect(f"{url}/ws")  # no Origin at all
        # An origin is scheme://host[:port]: with a path, even "/", it is another string.
        for other in ("http://good.example/", "http://good.example/x", "http://good.example:80"):
            with pytest.raises(InvalidStatus) as refused:
                await Client.connect(f"{url}/ws", origin=other)
            assert refused.value.response.status_code == 403, other
        good = await Client.connect(f"{url}/ws", origin="http://GOOD.example")  # hosts: any case
        await good.close()


async def test_max_connections_is_refused_with_503() -> None:
    async with running_server(limits=SocketLimits(max_connections=1)) as (_, url):
        first = await Client.connect(f"{url}/ws")
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}/ws")
        assert refused.value.response.status_code == 503
        await first.close()


async def test_handshake_timeout_and_header_limit() -> None:
    limits = SocketLimits(handshake_timeout=0.3, max_header_bytes=1024)
    async with running_server(limits=limits) as (server, _):
        assert server.port is not None
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
        assert (
            await http_status(server.port, big) == b"HTTP/1.1 431 Request Header Fields Too Large"
        )
        assert await http_status(server.port, b"GET / HTTP/1.1\r\n") == (
            b"HTTP/1.1 408 Request Timeout"
        )
        assert await http_status(server.port, b"NONSENSE\r\n\r\n") == b"HTTP/1.1 400 Bad Request"


# ------------------------------------------------------------ entry points


async def test_handle_stream_serves_connections_accepted_elsewhere() -> None:
    async with PresenceServer(query_login, paths=None) as server:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, server.handle_stream)
            ann = await Client.connect(f"ws://127.0.0.1:{port}/ws?user=ann")
            await wait_for(lambda: bool(server.roster("/ws")))
            server.broadcast("/ws", "c", {"type": "hello"})
            assert await ann.recv_json() == {"type": "hello", "ns": "/ws"}
            await ann.close()
            tg.cancel_scope.cancel()
        await listener.aclose()


async def test_hooks_see_messages_and_closes() -> None:
    seen: list[str] = []

    async def on_message(client: object, text: str) -> None:
        seen.append(text)
        client.send("echo " + text)  # type: ignore[attr-defined]

    closed = anyio.Event()
    async with running_server(on_message=on_message, on_close=lambda client: closed.set()) as (
        _,
        url,
    ):
        client = await Client.connect(f"{url}/ws?user=ann")
        await client.send("ping")
        assert await client.recv() == "echo ping"
        await client.close()
        with anyio.fail_after(5):
            await closed.wait()
    assert seen == ["ping"]


async def test_shutdown_closes_clients_with_1001() -> None:
    async with running_server() as (server, url):
        client = await Client.connect(f"{url}/ws?user=ann")
        await wait_for(lambda: bool(server.clients))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown)
            assert (await client.closed())[0] == 1001
        assert server.presence.is_shut_down
        # A socket that arrives now is refused before its upgrade: the core closes it at
        # once, as it closed the others.
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}/ws?user=bob")
        assert refused.value.response.status_code == 503
        assert not server.clients


async def test_a_failing_hook_closes_that_socket_with_1011_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def on_message(client: object, text: str) -> None:
        if text == "boom":
            raise RuntimeError("application bug")
        client.send("ok")  # type: ignore[attr-defined]

    async def on_open(client: object) -> None:
        if client.user_id == "cursed":  # type: ignore[attr-defined]
            raise RuntimeError("open hook bug")

    async with running_server(on_message=on_message, on_open=on_open) as (server, url):
        victim = await Client.connect(f"{url}/ws?user=ann")
        other = await Client.connect(f"{url}/ws?user=bob")
        await victim.send("boom")
        assert await victim.closed() == (1011, "internal error")
        await other.send("still there?")
        assert await other.recv() == "ok"
        cursed = await Client.connect(f"{url}/ws?user=cursed")
        assert (await cursed.closed())[0] == 1011
        await other.close()
        await wait_for(lambda: not server.clients)
    assert "application bug" in caplog.text
    assert "open hook bug" in caplog.text


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (
            b"POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            b"HTTP/1.1 426 Upgrade Required",
        ),
    ],
)
async def test_invalid_upgrades_are_refused_over_http(request_head: bytes, status: bytes) -> None:
    async with running_server() as (server, _):
        assert server.port is not None
        assert await http_status(server.port, request_head) == status


async def test_the_upgrade_answer_follows_rfc_6455() -> None:
    async with running_server() as (server, _):
        assert server.port is not None
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, "
                b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
        # The key and answer of RFC 6455, section 1.3.
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head


async def test_frames_sent_right_behind_the_request_are_not_lost() -> None:
    seen: list[str] = []
    async with running_server(on_message=lambda client, text: seen.append(text)) as (server, _):
        assert server.port is not None
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            masked = bytes((0x81, 0x82)) + b"\x00\x00\x00\x00" + b"hi"
            await stream.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                + masked
            )
            await wait_for(lambda: seen == ["hi"])
