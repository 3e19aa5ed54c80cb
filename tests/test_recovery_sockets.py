"""Recovery over real sockets, on asyncio and trio: a subscriber drops, publications go on, it
comes back with ``since`` and gets exactly what it missed, in order, before anything live."""

from __future__ import annotations

import json
from typing import Any

import pytest

from megapresence_anyio import handle_command
from megapresence_core import PresenceConfig
from megapresence_core.config import HistoryConfig

from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio


def config(boot_id: str | None = None) -> PresenceConfig:
    history = HistoryConfig(boot_id=boot_id) if boot_id is not None else None
    return PresenceConfig(leave_grace=5, presence_window=0, history=history)


async def publish(client: Client, n: int) -> None:
    await client.send(json.dumps({"op": "publish", "channel": "room", "type": "n", "payload": n}))


async def subscribe(client: Client, since: dict[str, Any] | None = None) -> dict[str, Any]:
    command: dict[str, Any] = {"op": "subscribe", "channel": "room"}
    if since is not None:
        command["since"] = since
    await client.send(json.dumps(command))
    reply = await client.recv_json()
    assert reply["type"] == "subscribed"
    return dict(reply)


async def numbers(client: Client, count: int) -> list[tuple[int, int]]:
    """(payload, offset) of the next ``count`` channel messages."""
    got = []
    while len(got) < count:
        message = await client.recv_json()
        if message["type"] == "n":
            got.append((message["payload"], message["offset"]))
    return got


async def test_a_subscriber_that_drops_recovers_what_it_missed(anyio_backend: str) -> None:
    async with running_server(on_message=handle_command, presence=config()) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=room")
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        first = await subscribe(bob)
        epoch = first["epoch"]
        assert (first["offset"], len(epoch) > 32) == (0, True)  # the shim's random boot id
        await publish(ann, 1)
        assert await numbers(bob, 1) == [(1, 1)]
        await bob.close()
        await wait_for(lambda: server.presence.connection_of("b1") is None)
        for n in (2, 3, 4):
            await publish(ann, n)
        assert await numbers(ann, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]
        assert server.presence.history_bytes > 0

        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        reply = await subscribe(bob, {"offset": 1, "epoch": epoch})
        assert (reply["recovered"], reply["offset"], reply["epoch"]) == (True, 4, epoch)
        await publish(ann, 5)
        assert await numbers(bob, 4) == [(2, 2), (3, 3), (4, 4), (5, 5)]
        await ann.close()
        await bob.close()


async def test_a_restarted_server_says_not_recovered(anyio_backend: str) -> None:
    async with running_server(on_message=handle_command, presence=config("one")) as (_, url):
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        position = await subscribe(bob)
        await publish(bob, 1)
        assert await numbers(bob, 1) == [(1, 1)]
        await bob.close()
    async with running_server(on_message=handle_command, presence=config("two")) as (_, url):
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        reply = await subscribe(bob, {"offset": 1, "epoch": position["epoch"]})
        assert (reply["recovered"], reply["reason"], reply["offset"]) == (False, "epoch", 0)
        assert reply["epoch"] != position["epoch"]
        assert await bob.silent(0.2)
        await bob.close()


async def test_a_bad_since_is_refused_and_the_connection_stays(anyio_backend: str) -> None:
    async with running_server(on_message=handle_command, presence=config("b")) as (_, url):
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        await bob.send(json.dumps({"op": "subscribe", "channel": "room", "since": {"offset": -1}}))
        error = await bob.recv_json()
        assert (error["type"], error["payload"]["code"]) == ("error", "bad_command")
        assert (await subscribe(bob))["offset"] == 0
        await bob.close()


async def test_a_position_check_is_silent_in_step_and_tells_stream_missed_out_of_step(
    anyio_backend: str,
) -> None:
    async with running_server(on_message=handle_command, presence=config("c")) as (_, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=room")
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        epoch = (await subscribe(bob))["epoch"]
        await publish(ann, 1)
        await publish(ann, 2)
        assert await numbers(bob, 2) == [(1, 1), (2, 2)]

        async def check(offset: int, epoch: str) -> None:
            command = {"op": "position", "channel": "room", "offset": offset, "epoch": epoch}
            await bob.send(json.dumps(command))

        await check(2, epoch)
        await check(1, epoch)  # behind: the rest was on its way
        assert await bob.silent(0.2)
        await check(1, "c.9")  # a stream it never had here: out of step
        missed = await bob.recv_json()
        assert missed == {"type": "stream.missed", "channel": "room", "offset": 2, "epoch": epoch}
        # What the client then does: subscribe again with its position.
        reply = await subscribe(bob, {"offset": 1, "epoch": "c.9"})
        assert (reply["recovered"], reply["reason"], reply["offset"]) == (False, "epoch", 2)
        await check(2, epoch)
        assert await bob.silent(0.2)
        await ann.close()
        await bob.close()
