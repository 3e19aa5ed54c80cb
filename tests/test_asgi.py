"""The ASGI adapter in process: what it sends an ASGI server for each thing a client does.

The in-memory server (``asgi_harness.py``) plays uvicorn's and Hypercorn's side of
the ASGI spec; the process tests (``test_asgi_processes.py``) run the real ones.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from megapresence_anyio import (
    Client,
    HandshakeRequest,
    Identity,
    PresenceASGI,
    PresenceServer,
    Refusal,
    SocketLimits,
)
from megapresence_core import LocalUsageError, PresenceConfig

from .asgi_harness import FakeConnection, asgi_connection, websocket_scope
from .socket_helpers import wait_for

pytestmark = pytest.mark.anyio

COOKIES = {"c-ann": "ann", "c-bob": "bob", "c-cat": "cat"}


def cookie_login(request: HandshakeRequest) -> Identity | Refusal:
    user = COOKIES.get((request.header("cookie") or "").removeprefix("sid="))
    if user is None:
        return Refusal(status=401, reason="log in first")
    return Identity(user_id=user, session_id=f"{user}-s", channels=("lobby",))


def as_user(user: str, **options: Any) -> dict[str, Any]:
    return websocket_scope(headers=(("cookie", f"sid=c-{user}"),), **options)


@asynccontextmanager
async def mounted(**options: Any) -> AsyncIterator[tuple[PresenceServer, PresenceASGI, Any]]:
    heartbeat = options.pop("heartbeat", None)

    def chat(client: Client, text: str) -> None:
        server.broadcast(client.ns, "lobby", {"type": "chat", "payload": text})

    options.setdefault("on_message", chat)
    # These tests watch the adapter's sockets: a closed session leaves at once here
    # (the core's tests cover the leave grace).
    options.setdefault("presence", PresenceConfig(leave_grace=0))
    server = PresenceServer(options.pop("authenticate", cookie_login), **options)
    async with server, anyio.create_task_group() as group:
        yield server, server.asgi(heartbeat=heartbeat), group
        group.cancel_scope.cancel()


async def accepted(conn: FakeConnection) -> None:
    assert (await conn.wait_type("websocket.accept"))["type"] == "websocket.accept"


async def test_a_cookie_opens_a_session_and_broadcasts_reach_every_connection(
    anyio_backend: str,
) -> None:
    async with (
        mounted() as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
        asgi_connection(group, app, as_user("bob")) as bob,
    ):
        await accepted(ann)
        await accepted(bob)
        assert {m.user_id for m in server.roster("/ws/chat")} == {"ann", "bob"}
        await ann.text("hi")
        for conn in (ann, bob):
            await conn.wait_for(lambda sent: any(m["type"] == "websocket.send" for m in sent))
            assert json.loads(conn.texts()[0]) == {
                "type": "chat",
                "ns": "/ws/chat",
                "payload": "hi",
            }
        assert server.stats.deliveries == 2
        await bob.disconnect()
        await wait_for(lambda: [m.user_id for m in server.roster("/ws/chat")] == ["ann"])


async def test_a_refusal_is_its_http_status_with_the_extension_and_403_without(
    anyio_backend: str,
) -> None:
    async with mounted() as (server, app, group):
        async with asgi_connection(group, app, websocket_scope()) as conn:
            start = await conn.wait_type("websocket.http.response.start")
            assert start["status"] == 401
            body = conn.of_type("websocket.http.response.body")
            assert body == [{"type": "websocket.http.response.body", "body": b"log in first\n"}]
            assert not conn.of_type("websocket.accept")
        async with asgi_connection(
            group, app, websocket_scope("/elsewhere", headers=(("cookie", "sid=c-ann"),))
        ) as conn:
            assert (await conn.wait_type("websocket.http.response.start"))["status"] == 404
        async with asgi_connection(group, app, websocket_scope(extension=False)) as conn:
            # Daphne's case: a close before the accept, which the server answers with 403.
            assert (await conn.wait_type("websocket.close"))["code"] == 1008
            assert not conn.of_type("websocket.accept")
        await wait_for(lambda: server.stats.refusals == {401: 2, 404: 1})


async def test_a_bad_percent_escape_in_the_query_is_refused_with_400(anyio_backend: str) -> None:
    """An ASGI server hands the query string on as it came: ``%zz`` is refused as the
    own listener refuses it (docs/limits.md), before ``authenticate`` sees it."""
    seen: list[str] = []

    def login(request: HandshakeRequest) -> Identity:
        seen.append(request.query_string)
        return Identity(user_id=request.query.get("user", "x"), session_id="s")

    async with mounted(authenticate=login) as (server, app, group):
        for query in ("user=%zz&session=p1", "user=a%"):
            async with asgi_connection(group, app, websocket_scope(query=query)) as conn:
                start = await conn.wait_type("websocket.http.response.start")
                assert start["status"] == 400, query
                assert not conn.of_type("websocket.accept")
        async with asgi_connection(group, app, websocket_scope(query="user=a%41")) as conn:
            await accepted(conn)
            assert [m.user_id for m in server.roster("/ws/chat")] == ["aA"]
        assert seen == ["user=a%41"]


async def test_close_reasons_go_only_to_a_server_of_spec_2_3_or_later(anyio_backend: str) -> None:
    async with (
        mounted() as (server, app, group),
        asgi_connection(group, app, as_user("ann", spec_version="2.4")) as ann,
        asgi_connection(group, app, as_user("bob", spec_version="2.2")) as bob,
    ):
        await accepted(ann)
        await accepted(bob)
        server.kick("ann-s", "bye ann")
        server.kick("bob-s", "bye bob")
        assert await ann.wait_type("websocket.close") == {
            "type": "websocket.close",
            "code": 1008,
            "reason": "bye ann",
        }
        assert await bob.wait_type("websocket.close") == {"type": "websocket.close", "code": 1008}


async def test_a_message_over_the_limit_is_1009_and_a_binary_one_1003(anyio_backend: str) -> None:
    async with (
        mounted(limits=SocketLimits(max_message_bytes=10)) as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
        asgi_connection(group, app, as_user("bob")) as bob,
    ):
        await accepted(ann)
        await accepted(bob)
        await ann.text("é" * 6)  # 12 bytes of UTF-8, 6 characters
        assert (await ann.wait_type("websocket.close"))["code"] == 1009
        await bob.push({"type": "websocket.receive", "bytes": b"x"})
        assert (await bob.wait_type("websocket.close"))["code"] == 1003
        assert server.stats.deliveries == 0


async def test_a_client_that_does_not_read_is_closed_1013_and_the_others_go_on(
    anyio_backend: str,
) -> None:
    limits = SocketLimits(max_send_buffer=1000)
    async with (
        mounted(limits=limits) as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
        asgi_connection(group, app, as_user("bob")) as bob,
    ):
        await accepted(ann)
        await accepted(bob)
        ann.hold = anyio.Event()  # the ASGI server's send to ann blocks from now on
        message = {"type": "news", "payload": "x" * 300}  # a frame of 330 bytes
        for sent in range(1, 6):  # one in flight, then 3 x 330 fit in 1000, the 5th does not
            server.broadcast("/ws/chat", "lobby", message)
            await bob.wait_for(lambda messages: len(messages) == 1 + sent)  # noqa: B023
            assert not ann.of_type("websocket.close")
        ann.hold.set()
        close = await ann.wait_type("websocket.close")
        assert (close["code"], close["reason"]) == (1013, "slow consumer: send buffer full")
        assert len(ann.texts()) == 1  # the one in flight; the queue was dropped for the close
        await ann.disconnect(1013)
        await wait_for(lambda: server.stats.closes[(1013, "server")] == 1)


async def test_the_heartbeat_finds_a_silent_client_and_spares_one_that_answers(
    anyio_backend: str,
) -> None:
    limits = SocketLimits(ping_interval=10, ping_timeout=5)
    async with (
        mounted(limits=limits, heartbeat='{"type":"ping"}') as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
        asgi_connection(group, app, as_user("bob")) as bob,
    ):
        await accepted(ann)
        await accepted(bob)
        clients = {client.user_id: client for client in server.clients}
        now = anyio.current_time()
        for client in clients.values():  # a fake clock: keepalive is told the time
            client.session.keepalive(now + 11)
        for conn in (ann, bob):
            await conn.wait_for(lambda sent: '{"type":"ping"}' in [m.get("text") for m in sent])
        await bob.text('{"type":"pong"}')
        await wait_for(lambda: clients["bob"].session.heard)  # type: ignore[attr-defined]
        for client in clients.values():
            client.session.keepalive(now + 17)
        close = await ann.wait_type("websocket.close")
        assert (close["code"], close["reason"]) == (1011, "keepalive ping timeout")
        assert not bob.of_type("websocket.close")


async def test_without_a_heartbeat_the_asgi_server_s_pings_are_relied_on(
    anyio_backend: str,
) -> None:
    async with (
        mounted(limits=SocketLimits(ping_interval=1, ping_timeout=1)) as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
    ):
        await accepted(ann)
        (client,) = server.clients
        client.session.keepalive(anyio.current_time() + 100)
        client.session.keepalive(anyio.current_time() + 200)
        assert [m["type"] for m in ann.sent] == ["websocket.accept"]


async def test_a_client_gone_under_a_send_leaves_the_roster(anyio_backend: str) -> None:
    async with (
        mounted() as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
    ):
        await accepted(ann)
        ann.fail_sends = OSError("client disconnected")
        server.broadcast("/ws/chat", "lobby", {"type": "news"})
        await wait_for(lambda: server.roster("/ws/chat") == [])
        assert ann.done.is_set()
        assert ann.error is None


async def test_outside_the_server_s_lifetime_a_socket_gets_503_and_the_app_says_why(
    anyio_backend: str,
) -> None:
    server = PresenceServer(cookie_login)
    async with (
        anyio.create_task_group() as group,
        asgi_connection(group, server.asgi(), as_user("ann")) as conn,
    ):
        assert (await conn.wait_type("websocket.http.response.start"))["status"] == 503
        await conn.done.wait()
    assert isinstance(conn.error, LocalUsageError)
    assert "FastAPI(lifespan=server.lifespan)" in str(conn.error)


async def lifespan(app: Any, *messages: str) -> list[dict[str, Any]]:
    """Drive an ASGI lifespan through ``messages``; return what the app answered."""
    inbox_send, inbox = anyio.create_memory_object_stream[dict[str, Any]](10)
    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    async with inbox_send, inbox, anyio.create_task_group() as group:
        group.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.receive, send)
        for message in messages:
            await inbox_send.send({"type": message})
            expected = len(answers) + 1
            await wait_for(lambda: len(answers) >= expected)  # noqa: B023
    return answers


async def test_the_lifespan_runs_the_server_around_the_other_app_s(anyio_backend: str) -> None:
    server = PresenceServer(cookie_login)
    seen: list[tuple[str, bool]] = []

    async def other(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append((message["type"], server.running))
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                seen.append(("returned", server.running))
                return

    answers = await lifespan(server.asgi(other), "lifespan.startup", "lifespan.shutdown")
    assert [a["type"] for a in answers] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    # Started before the other app's startup; running during its shutdown; stopped once
    # the other app has said its shutdown is complete.
    assert seen == [("lifespan.startup", True), ("lifespan.shutdown", True), ("returned", False)]
    assert not server.running
    # Alone, the adapter answers the lifespan itself.
    answers = await lifespan(server.asgi(), "lifespan.startup", "lifespan.shutdown")
    assert [a["type"] for a in answers] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


class FailingRoster:
    async def start(self) -> None:
        raise ConnectionError("no roster here")


async def test_a_server_that_cannot_start_fails_the_lifespan_startup(anyio_backend: str) -> None:
    from megapresence_core import PresenceConfig, StoreConfig

    server = PresenceServer(
        cookie_login,
        presence=PresenceConfig(store=StoreConfig()),
        roster=FailingRoster(),  # type: ignore[arg-type]
    )
    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    with pytest.raises(ConnectionError):  # after the answer: the ASGI server exits on it
        await server.asgi()({"type": "lifespan"}, receive, send)
    assert answers == [
        {
            "type": "lifespan.startup.failed",
            "message": "megapresence: ConnectionError: no roster here",
        }
    ]
    assert not server.running


async def test_plain_http_goes_to_the_other_app_except_the_server_s_own_paths(
    anyio_backend: str,
) -> None:
    async def other(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"other " + scope["path"].encode()})

    async def get(app: Any, path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "query_string": query.encode(),
            "headers": [],
            "client": None,
        }
        await app(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    server = PresenceServer(cookie_login, pages={"/page": ("text/plain", b"a page")})
    async with server:
        app = server.asgi(other)
        assert await get(app, "/") == (200, b"other /")
        assert await get(app, "/page") == (200, b"a page")
        assert await get(app, "/healthz") == (200, b"ok\n")
        status, body = await get(app, "/readyz")
        assert (status, json.loads(body)["ready"]) == (200, True)
        assert (await get(server.asgi(), "/nothing"))[0] == 404
        assert (await get(server.asgi(), "/ws/chat"))[0] == 426
        assert (await get(app, "/healthz?x=%zz"))[0] == 400  # a bad escape, as over listen


async def test_a_route_of_the_app_can_hand_its_socket_over(anyio_backend: str) -> None:
    server = PresenceServer(cookie_login, paths=["/rooms/"])

    async def route(scope: Any, receive: Any, send: Any) -> None:  # what a framework's route does
        await server.handle_asgi(scope, receive, send)

    async with server, anyio.create_task_group() as group:
        scope = websocket_scope("/rooms/1", headers=(("cookie", "sid=c-ann"),))
        async with asgi_connection(group, route, scope) as ann:
            await accepted(ann)
            assert [m.user_id for m in server.roster("/rooms/1")] == ["ann"]
        group.cancel_scope.cancel()
