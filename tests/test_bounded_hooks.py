"""A connection's work is bounded and ends with it (issue 17, item 7).

Every awaited hook has ``SocketLimits.hook_timeout``; at most
``max_pending_hooks`` ``authorize_subscription`` calls await at once per
connection (past it: ``rate_limited``); and whatever a connection started is
cancelled when it closes, so the core hears the close whatever a hook does.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from megapresence_anyio import SocketLimits, handle_command

from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio

QUICK = SocketLimits(hook_timeout=0.3, max_pending_hooks=4)


async def test_an_on_open_that_never_returns_costs_its_connection_only() -> None:
    async def on_open(client: Any) -> None:
        if client.user_id == "stuck":
            await anyio.sleep_forever()

    async with running_server(on_open=on_open, limits=QUICK) as (server, url):
        stuck = await Client.connect(f"{url}/ws?user=stuck")
        await wait_for(lambda: len(server.clients) == 1)
        # Closed (1011) once the hook is past its timeout, and gone from the core.
        await wait_for(lambda: not server.clients and not server.roster("/ws"), timeout=3)
        await stuck.close()


async def test_a_client_gone_while_on_message_hangs_leaves_the_core() -> None:
    started = anyio.Event()

    async def on_message(client: Any, text: str) -> None:
        started.set()
        await anyio.sleep_forever()

    limits = SocketLimits(hook_timeout=1.0)
    async with running_server(on_message=on_message, limits=limits) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann")
        await ann.send("hello")
        await started.wait()
        await ann.close()
        with anyio.fail_after(3):
            while server.clients or server.roster("/ws"):
                await anyio.sleep(0.02)


async def test_authorize_subscription_is_capped_timed_and_cancelled_with_its_socket() -> None:
    running: list[str] = []
    cancelled: list[str] = []

    async def authorize(client: Any, channel: str, mode: Any) -> bool:
        running.append(channel)
        try:
            if channel.startswith("slow"):
                await anyio.sleep_forever()
            return True
        except anyio.get_cancelled_exc_class():
            cancelled.append(channel)
            raise

    async with running_server(
        on_message=handle_command, authorize_subscription=authorize, limits=QUICK
    ) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann")
        for n in range(6):
            await ann.send(json.dumps({"op": "subscribe", "channel": f"slow{n}"}))
        # Two past the cap of four: refused at once, and the hook was not asked.
        for n in (4, 5):
            error = await ann.recv_json()
            assert error["type"] == "error"
            assert error["payload"]["code"] == "rate_limited"
            assert error["payload"]["channel"] == f"slow{n}"
        assert sorted(running) == [f"slow{n}" for n in range(4)]
        # Past hook_timeout: cancelled, and each refused.
        refused = {(await ann.recv_json())["payload"]["channel"] for _ in range(4)}
        assert refused == {f"slow{n}" for n in range(4)}
        assert sorted(cancelled) == sorted(refused)
        # A fast one passes; then four slow ones are cut short by the close.
        await ann.send(json.dumps({"op": "subscribe", "channel": "fast"}))
        assert (await ann.recv_json())["type"] == "subscribed"
        cancelled.clear()
        for n in range(4):
            await ann.send(json.dumps({"op": "subscribe", "channel": f"slowly{n}"}))
        await wait_for(lambda: len(running) == 9)
        await ann.close()
        await wait_for(lambda: len(cancelled) == 4, timeout=0.25)  # before any timeout
        assert not server.clients
