"""The Redis roster against a real redis-server (asyncio backend only, as redis-py's client)."""

from __future__ import annotations

import logging

import anyio
import pytest
import redis.asyncio as aioredis

from megapresence_core import (
    LocalUsageError,
    Member,
)
from megapresence_core.actions import (
    StoreEntry,
)
from megapresence_redis import RedisRoster, RosterUnavailableError

from .servers import Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def started(server: Server, instance: str = "i1", app: str = "app") -> RedisRoster:
    roster = RedisRoster(
        f"redis://127.0.0.1:{server.port}/0", app=app, instance_id=instance, epoch=1
    )
    await roster.start()
    return roster


async def flushed(roster: RedisRoster) -> None:
    assert await roster._flush()


ANN = Member(session_id="s-ann", user_id="ann", metadata={"status": "here", "tags": []})
BOB = Member(session_id="s-bob", user_id="bob")


async def test_put_list_delete(redis_server: Server) -> None:
    roster = await started(redis_server)
    roster.put("lobby", "s-ann", ANN, ttl=30)
    roster.put("lobby", "s-bob", BOB, ttl=30)
    roster.put("other", "s-bob", BOB, ttl=30)
    await flushed(roster)
    assert sorted(await roster.members(["lobby"]), key=lambda m: m.session_id) == [ANN, BOB]
    assert await roster.members(["lobby", "other"]) != []
    roster.delete("lobby", "s-ann")
    await flushed(roster)
    assert await roster.members(["lobby"]) == [BOB]
    await roster.aclose()


async def test_the_stored_member_carries_owner_epoch_and_expiry(redis_server: Server) -> None:
    roster = await started(redis_server)
    roster.put("lobby", "s-ann", ANN, ttl=30)
    await flushed(roster)
    client = aioredis.Redis(port=redis_server.port)
    raw = await client.hget("megapresence:roster:{app:lobby}", "s-ann")
    score = await client.zscore("megapresence:roster:{app:lobby}:exp", "s-ann")
    assert await client.ttl("megapresence:roster:{app:lobby}") == -1  # no whole-key TTL
    await client.aclose()
    import json

    value = json.loads(raw)
    assert value["userId"] == "ann"
    assert value["metadata"] == {"status": "here", "tags": []}  # JSON kept exactly
    assert (value["instanceId"], value["epoch"]) == ("i1", 1)
    assert value["expiresAt"] == score
    await roster.aclose()


async def test_a_crashed_instances_members_expire_while_another_refreshes(
    redis_server: Server,
) -> None:
    crashed = await started(redis_server, "crashed")
    alive = await started(redis_server, "alive")
    crashed.put("lobby", "s-ann", ANN, ttl=0.5)
    await flushed(crashed)
    for _ in range(5):  # the other instance keeps the same channel busy
        alive.refresh([StoreEntry(channel="lobby", session_id="s-bob", member=BOB)], ttl=0.5)
        await flushed(alive)
        await anyio.sleep(0.2)
    assert await alive.members(["lobby"]) == [BOB]
    await crashed.aclose()
    await alive.aclose()


async def test_an_instance_removes_only_its_own_members(redis_server: Server) -> None:
    first = await started(redis_server, "first")
    second = await started(redis_server, "second")
    first.put("lobby", "s-ann", ANN, ttl=30)
    await flushed(first)
    second.put("lobby", "s-ann", ANN, ttl=30)  # the session moved to the second instance
    await flushed(second)
    first.delete("lobby", "s-ann")  # the first one's late close
    await flushed(first)
    assert await second.members(["lobby"]) == [ANN]
    await first.aclose()
    await second.aclose()


async def test_after_a_restart_with_no_data_the_refresh_reasserts(
    redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    roster = await started(redis_server)
    entries = [StoreEntry(channel="lobby", session_id="s-ann", member=ANN)]
    roster.refresh(entries, ttl=30)
    await flushed(roster)
    redis_server.kill()
    with pytest.raises(RosterUnavailableError, match="unavailable"):
        await roster.members(["lobby"])
    with caplog.at_level(logging.WARNING, logger="megapresence.redis"):
        for _ in range(3):
            roster.put("lobby", "s-bob", BOB, ttl=30)
            assert not await roster._flush()  # failing: not raised...
    assert len(caplog.records) == 1  # ...and logged once per outage, not per write
    redis_server.start()
    roster.refresh(entries, ttl=30)
    await flushed(roster)
    assert await roster.members(["lobby"]) == [ANN]
    await roster.aclose()


async def test_reads_skip_malformed_members(redis_server: Server) -> None:
    roster = await started(redis_server)
    client = aioredis.Redis(port=redis_server.port)
    await client.hset("megapresence:roster:{app:lobby}", "bad", "not json")
    await client.hset("megapresence:roster:{app:lobby}", "worse", '{"userId": 5}')
    await client.aclose()
    assert await roster.members(["lobby"]) == []
    await roster.aclose()


async def test_unreachable_redis_fails_fast_with_the_url_redacted() -> None:
    from .servers import free_port

    roster = RedisRoster(
        f"redis://user:hunter2@127.0.0.1:{free_port()}/0",
        app="a",
        instance_id="i",
        epoch=1,
        timeout=1,
    )
    with pytest.raises(RosterUnavailableError, match=r"redis://user:\*\*\*@127\.0\.0\.1") as info:
        await roster.start()
    assert "hunter2" not in str(info.value)


def test_the_trio_backend_is_refused_clearly() -> None:
    roster = RedisRoster("redis://127.0.0.1:1/0", app="a", instance_id="i", epoch=1)
    with pytest.raises(LocalUsageError, match="needs the asyncio backend"):
        anyio.run(roster.start, backend="trio")
