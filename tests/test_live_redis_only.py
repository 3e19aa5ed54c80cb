"""What a Redis-only deployment (no hub, no NATS) offers for live presence, shown on two
servers sharing one Redis: what the README says about it is checked here."""

from __future__ import annotations

import json

import anyio
import pytest

from megapresence_anyio import handle_command
from megapresence_core import PresenceConfig, StoreConfig
from megapresence_redis import RedisRoster

from .servers import Server
from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py is asyncio only
async def test_redis_only_shares_the_lists_of_members_but_not_live_presence(
    redis_server: Server,
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"

    def options(instance: str) -> dict[str, object]:
        return {
            "presence": PresenceConfig(leave_grace=0, store=StoreConfig()),
            "roster": RedisRoster(url, app="r", instance_id=instance, epoch=1),
            "on_message": handle_command,
        }

    async with (
        running_server(**options("A")) as (a, a_url),
        running_server(**options("B")) as (b, b_url),
    ):
        ann = await Client.connect(f"{a_url}/ws?user=ann&session=a1")
        bob = await Client.connect(f"{b_url}/ws?user=bob&session=b1")
        await ann.send(json.dumps({"op": "subscribe", "channel": "room", "presence": "users"}))
        await bob.send(json.dumps({"op": "subscribe", "channel": "room"}))
        await wait_for(lambda: b.presence_stats("room") == (1, 1))

        # Shared: the members of a channel, read from Redis (a subscribe updates it).
        listed = {m.user_id for m in await a.presence_list(["room"])}
        assert listed == {"ann", "bob"}
        # Not shared: counts and live diffs are this server's own members only...
        assert a.presence_stats("room") == (1, 1)
        assert [(await ann.recv_json())["type"] for _ in range(3)] == [
            "subscribed",
            "presence.state",
            "presence.diff",  # ann sees herself join, never bob
        ]
        assert await ann.silent()
        # ...and a publish reaches this server's subscribers only.
        b.publish("room", {"type": "note"})
        assert (await bob.recv_json())["type"] == "subscribed"
        assert (await bob.recv_json())["type"] == "note"
        assert await ann.silent()
        for client in (ann, bob):
            await client.close()
        # Let the removals reach Redis before the servers stop (as the README's test does).
        with anyio.fail_after(10):
            while await a.presence_list(["room"]):
                await anyio.sleep(0.02)
