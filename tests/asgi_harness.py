"""An in-memory ASGI server for the adapter's tests: scopes in, messages out, no sockets.

It plays what uvicorn and Hypercorn do for one connection (the ``websocket.connect``
first, whole messages, a ``websocket.disconnect`` at the end) and lets a test hold
the app's sends back, as a peer that stops reading makes a real server do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

Message = dict[str, Any]


def websocket_scope(
    path: str = "/ws/chat",
    *,
    query: str = "",
    headers: tuple[tuple[str, str], ...] = (),
    client: tuple[str, int] | None = ("127.0.0.1", 40000),
    extension: bool = True,
    spec_version: str = "2.4",
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": client,
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if extension else {},
    }


class FakeConnection:
    """One WebSocket connection to an ASGI app, seen from the server's side."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.inbox_send, self.inbox = anyio.create_memory_object_stream[Message](100)
        self.sent: list[Message] = []
        self._changed = anyio.Event()
        #: While set, the app's sends wait (a peer that does not read).
        self.hold: anyio.Event | None = None
        #: Raised by the app's next send (the ASGI server's word that the client left).
        self.fail_sends: Exception | None = None
        self.error: BaseException | None = None
        self.done = anyio.Event()

    async def receive(self) -> Message:
        return await self.inbox.receive()

    async def send(self, message: Message) -> None:
        if self.fail_sends is not None:
            raise self.fail_sends
        if self.hold is not None:
            await self.hold.wait()
        self.sent.append(dict(message))
        self._changed.set()

    async def push(self, message: Message) -> None:
        await self.inbox_send.send(message)

    async def text(self, text: str) -> None:
        await self.push({"type": "websocket.receive", "text": text})

    async def disconnect(self, code: int = 1000) -> None:
        await self.push({"type": "websocket.disconnect", "code": code, "reason": ""})

    async def wait_for(self, check: Callable[[list[Message]], bool], timeout: float = 5) -> None:
        with anyio.fail_after(timeout):
            while True:
                changed = self._changed = anyio.Event()  # before the check: no send is missed
                if check(self.sent):
                    return
                await changed.wait()

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.sent if m["type"] == kind]

    def texts(self) -> list[str]:
        return [m["text"] for m in self.of_type("websocket.send")]

    async def wait_type(self, kind: str, timeout: float = 5) -> Message:
        await self.wait_for(lambda sent: any(m["type"] == kind for m in sent), timeout)
        return self.of_type(kind)[0]


@asynccontextmanager
async def asgi_connection(
    group: anyio.abc.TaskGroup, app: Any, scope: dict[str, Any], *, connect: bool = True
) -> AsyncIterator[FakeConnection]:
    """Start ``app`` on one connection in ``group``; disconnect it at the end if still open."""
    conn = FakeConnection(scope)

    async def run() -> None:
        try:
            await app(scope, conn.receive, conn.send)
        except BaseException as exc:  # kept for the test to look at
            conn.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            conn.done.set()

    group.start_soon(run)
    if connect:
        await conn.push({"type": "websocket.connect"})
    try:
        yield conn
    finally:
        with conn.inbox_send, conn.inbox:
            if not conn.done.is_set():
                if conn.hold is not None:
                    conn.hold.set()
                await conn.disconnect()
                with anyio.fail_after(10):
                    await conn.done.wait()
