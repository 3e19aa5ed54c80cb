"""The JavaScript client as served: ``/megapresence.js`` on a server's own port and mounted.

What the client does is tested in a real browser (tests/test_browser_client.py).
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import pytest

from megapresence_anyio import PresenceServer

from .socket_helpers import http_exchange, query_login, running_server

pytestmark = pytest.mark.anyio

SOURCE = files("megapresence_anyio").joinpath("static/megapresence.js").read_bytes()


async def test_the_server_serves_the_client_with_an_etag_and_revalidation() -> None:
    async with running_server() as (server, _):
        assert server.port is not None
        get = "GET /megapresence.js HTTP/1.1\r\nHost: x\r\n"
        status, headers, body = await http_exchange(server.port, get + "\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert body == SOURCE
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["cache-control"] == "no-cache"  # kept, revalidated on each load
        etag = headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)

        status, headers, body = await http_exchange(
            server.port, get + f"If-None-Match: {etag}\r\n\r\n"
        )
        assert (status, body) == ("HTTP/1.1 304 Not Modified", b"")
        assert headers["etag"] == etag
        assert "content-length" not in headers

        status, _, body = await http_exchange(
            server.port, get + 'If-None-Match: "other", W/' + etag + "\r\n\r\n"
        )
        assert (status, body) == ("HTTP/1.1 304 Not Modified", b"")
        status, _, body = await http_exchange(server.port, get + 'If-None-Match: "old"\r\n\r\n')
        assert (status, body) == ("HTTP/1.1 200 OK", SOURCE)

        head = "HEAD /megapresence.js HTTP/1.1\r\nHost: x\r\n\r\n"
        status, headers, body = await http_exchange(server.port, head)
        assert (status, body, headers["content-length"]) == (
            "HTTP/1.1 200 OK",
            b"",
            str(len(SOURCE)),
        )
        post = "POST /megapresence.js HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n"
        status, headers, _ = await http_exchange(server.port, post)
        assert (status, headers["allow"]) == ("HTTP/1.1 405 Method Not Allowed", "GET, HEAD")
        # Other answers still say no-store, once.
        status, headers, _ = await http_exchange(
            server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert headers["cache-control"] == "no-store"


async def asgi_get(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers, "client": None}
    await app(scope, receive, send)
    return sent


async def test_a_mounted_server_serves_the_client_in_front_of_its_app(anyio_backend: str) -> None:
    async def other(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the client is the server's")

    server = PresenceServer(query_login)
    async with server:
        app = server.asgi(other)
        assert server.answers_http("/megapresence.js")
        start, body = await asgi_get(app, "/megapresence.js", [])
        headers = dict(start["headers"])
        assert (start["status"], body["body"]) == (200, SOURCE)
        assert headers[b"content-type"] == b"text/javascript; charset=utf-8"
        assert headers[b"cache-control"] == b"no-cache"
        assert [name for name, _ in start["headers"]].count(b"cache-control") == 1
        start, body = await asgi_get(
            app, "/megapresence.js", [(b"if-none-match", headers[b"etag"])]
        )
        assert (start["status"], body["body"]) == (304, b"")
        assert b"content-length" not in dict(start["headers"])
        start, _ = await asgi_get(app, "/healthz", [])
        assert dict(start["headers"])[b"cache-control"] == b"no-store"
