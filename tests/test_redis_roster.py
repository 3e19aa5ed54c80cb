"""The Redis roster against a real redis-server (asyncio backend only, as redis-py's client)."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import warnings
from collections.abc import Iterator

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


async def started(
    server: Server, instance: str = "i1", app: str = "app", epoch: int = 1, timeout: float = 5
) -> RedisRoster:
    roster = RedisRoster(
        f"redis://127.0.0.1:{server.port}/0",
        app=app,
        instance_id=instance,
        epoch=epoch,
        timeout=timeout,
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
    with pytest.raises(RosterUnavailableError) as unavailable:
        await roster.members(["lobby"])
    # One sentence that says what and why, not the repr of an exception group.
    message = str(unavailable.value)
    assert message.startswith(f"the roster at {roster.url} is unavailable: ConnectionError: ")
    assert "Group" not in message
    assert "\n" not in message
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


@contextlib.contextmanager
def outage(server: Server) -> Iterator[None]:
    """Redis stops answering (the process is stopped, its data kept), then comes back."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


async def test_removals_during_an_outage_are_kept_and_applied_when_redis_is_back(
    redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    roster = await started(redis_server, timeout=0.5)
    roster.put("lobby", "s-ann", ANN, ttl=30)
    roster.put("lobby", "s-bob", BOB, ttl=30)
    await flushed(roster)
    with outage(redis_server):
        roster.delete("lobby", "s-ann")
        roster.put("lobby", "s-cid", Member(session_id="s-cid", user_id="cid"), ttl=30)
        assert not await roster._flush()
        assert roster.pending_removals == 1
    assert "1 removals are kept" in caplog.text
    await flushed(roster)  # the kept removal; the put waits for the next refresh
    assert await roster.members(["lobby"]) == [BOB]
    await roster.aclose()


async def test_removals_that_fail_at_shutdown_are_counted_in_a_warning(
    redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    roster = await started(redis_server, timeout=0.5)
    for session in ("s-1", "s-2", "s-3"):
        roster.put("lobby", session, BOB, ttl=30)
    await flushed(roster)
    with outage(redis_server), caplog.at_level(logging.WARNING, logger="megapresence.redis"):
        for session in ("s-1", "s-2", "s-3"):
            roster.delete("lobby", session)
        await roster.aclose()
    assert "3 removals of this instance's members did not reach" in caplog.text


async def test_an_outage_leaves_no_unclosed_pipeline(redis_server: Server) -> None:
    roster = await started(redis_server, timeout=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with outage(redis_server):  # connected, then no answer
            for _ in range(2):
                roster.put("lobby", "s-ann", ANN, ttl=30)
                assert not await roster._flush()
        redis_server.kill()  # refused
        roster.put("lobby", "s-ann", ANN, ttl=30)
        assert not await roster._flush()
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
    assert roster._redis is not None
    assert not roster._redis.connection_pool._in_use_connections  # each went back to the pool
    await roster.aclose()


async def test_a_restarted_instance_removes_its_earlier_incarnations_members_at_once(
    redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    other = await started(redis_server, "other")
    other.put("lobby", "s-bob", BOB, ttl=60)
    await flushed(other)
    crashed = await started(redis_server, "i1", epoch=1)
    for channel in ("lobby", "games", "a*[weird]?channel"):
        crashed.put(channel, "s-ann", ANN, ttl=60)
    crashed.put("lobby", "s-tricky", Member(session_id="s-tricky", user_id="t"), ttl=60)
    await flushed(crashed)
    # It crashed: no removals. The same instance id boots again, with a later epoch.
    with caplog.at_level(logging.INFO, logger="megapresence.redis"):
        restarted = await started(redis_server, "i1", epoch=2)
    assert await restarted.members(["lobby", "games", "a*[weird]?channel"]) == [BOB]
    assert "removed 4 members an earlier incarnation" in caplog.text
    newer = await started(redis_server, "i1", epoch=3)  # never removes a later incarnation's
    newer.put("lobby", "s-ann", ANN, ttl=60)
    await flushed(newer)
    await (await started(redis_server, "i1", epoch=2)).aclose()
    assert sorted(m.session_id for m in await other.members(["lobby"])) == ["s-ann", "s-bob"]
    for roster in (other, crashed, restarted, newer):
        await roster.aclose()


async def test_metadata_that_looks_like_an_owner_does_not_make_one(redis_server: Server) -> None:
    owner = await started(redis_server, "owner")
    impostor = await started(redis_server, "impostor")
    sneaky = Member(session_id="s-x", user_id="x", metadata={"instanceId": "impostor"})
    owner.put("lobby", "s-x", sneaky, ttl=60)
    await flushed(owner)
    impostor.delete("lobby", "s-x")
    await flushed(impostor)
    assert await owner.members(["lobby"]) == [sneaky]
    await owner.aclose()
    await impostor.aclose()
