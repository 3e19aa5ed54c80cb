"""What the shim schedules works whoever started the loop (issue 17, item 11).

The end of a turn's writes is flushed from a loop callback, outside any task;
from there a writer task is started, or a socket closed. Each loop starter runs
the same slow consumer: it never reads, its send queue fills, and it must be
closed with 1013 and gone within ``close_timeout``, with no error logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import anyio
import pytest

from megapresence_anyio import PresenceServer, SocketLimits
from megapresence_core import PresenceConfig

from .hostile import upgraded
from .socket_helpers import query_login

LIMITS = SocketLimits(max_send_buffer=32 * 1024, close_timeout=0.5, ping_interval=60)


def silent_client(port: int) -> socket.socket:
    """A blocking socket past its upgrade that will never read: a small receive buffer."""
    return upgraded(port, "/ws?user=slow", receive_buffer=4096)


async def slow_consumer_is_closed(server: PresenceServer) -> float:
    """Fill a silent client's queue; the seconds until the server dropped it."""
    port = await server.listen()
    sock = await anyio.to_thread.run_sync(silent_client, port)
    try:
        while not server.clients:
            await anyio.sleep(0.01)
        (client,) = server.clients
        start = time.monotonic()
        chunk = "x" * 16_000
        while server.clients:
            assert time.monotonic() - start < 5, "the slow consumer was never dropped"
            if client.session.is_open:
                client.send(chunk)
            await anyio.sleep(0.005)
        assert client.session.close_code == 1013
        return time.monotonic() - start
    finally:
        sock.close()


def quiet(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert bad == []


async def scenario() -> float:
    server = PresenceServer(query_login, paths=None, limits=LIMITS, presence=PresenceConfig())
    async with server:
        return await slow_consumer_is_closed(server)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_under_asyncio_run(caplog: pytest.LogCaptureFixture) -> None:
    assert asyncio.run(scenario()) < 5
    quiet(caplog)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_under_anyio_run(caplog: pytest.LogCaptureFixture, anyio_backend: str) -> None:
    assert anyio.run(scenario, backend=anyio_backend) < 5
    quiet(caplog)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_under_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    """The server in an app's lifespan, the app run by uvicorn (as its command does)."""
    import uvicorn

    results: list[float] = []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        assert scope["type"] == "lifespan"
        message = await receive()  # type: ignore[operator]
        assert message["type"] == "lifespan.startup"
        results.append(await scenario())
        await send({"type": "lifespan.startup.complete"})  # type: ignore[operator]
        await receive()  # type: ignore[operator]
        await send({"type": "lifespan.shutdown.complete"})  # type: ignore[operator]

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not results:
            await asyncio.sleep(0.05)
            assert not task.done(), "uvicorn stopped"
        server.should_exit = True
        await task

    asyncio.run(run())
    assert results[0] < 5
    quiet(caplog)
