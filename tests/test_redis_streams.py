"""Channel streams in Redis Streams against a real redis-server (asyncio only, as redis-py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from megapresence_core._values import StreamPosition
from megapresence_redis import RedisStreams, RosterUnavailableError
from megapresence_redis._streams import StreamAnswer, StreamPublication

from .servers import Server
from .socket_helpers import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Instance:
    """One instance's streams, and everything they handed on, in order."""

    def __init__(self, streams: RedisStreams) -> None:
        self.streams = streams
        self.received: list[StreamPublication | StreamAnswer] = []
        self.states: list[bool] = []
        self._request = 0

    def publications(self, channel: str) -> list[StreamPublication]:
        return [
            item
            for item in self.received
            if isinstance(item, StreamPublication) and item.channel == channel
        ]

    def answers(self) -> list[StreamAnswer]:
        return [item for item in self.received if isinstance(item, StreamAnswer)]

    async def recover(
        self, channel: str, since: StreamPosition | None = None, session_id: str = "s1"
    ) -> StreamAnswer:
        self._request += 1
        request = self._request
        self.streams.recover(request, channel, since, session_id)

        def answered() -> StreamAnswer | None:
            return next((a for a in self.answers() if a.request == request), None)

        await wait_for(lambda: answered() is not None)
        found = answered()
        assert found is not None
        return found


@contextlib.asynccontextmanager
async def instance(
    server: Server, *, size: int = 300, ttl: float = 120, max_recovery: int = 300
) -> AsyncIterator[Instance]:
    streams = RedisStreams(
        f"redis://127.0.0.1:{server.port}/0",
        app="app",
        size=size,
        ttl=ttl,
        max_recovery=max_recovery,
        timeout=2,
    )
    found = Instance(streams)
    await streams.start(found.received.append, found.states.append)
    async with anyio.create_task_group() as tg:
        tg.start_soon(streams.run)
        tg.start_soon(streams.write)
        await wait_for(lambda: streams.up)
        yield found
        await streams.aclose()
        tg.cancel_scope.cancel()


def offsets(items: list[StreamPublication]) -> list[int]:
    return [item.position.offset for item in items]


async def test_every_instance_receives_each_channel_in_offset_order(redis_server: Server) -> None:
    async with instance(redis_server) as a, instance(redis_server) as b:
        for n in range(50):  # both publish to one channel at once
            a.streams.publish("room", f"a{n}")
            b.streams.publish("room", f"b{n}")
            b.streams.publish("other", f"o{n}")
        await wait_for(lambda: len(a.publications("room")) == 100)
        await wait_for(lambda: len(b.publications("other")) == 50)
        for receiver in (a, b):
            room = receiver.publications("room")
            assert offsets(room) == list(range(1, 101))
            assert len({item.position.epoch for item in room}) == 1
            # Each publisher's own messages keep the order it sent them in.
            for who in "ab":
                mine = [item.data for item in room if item.data.startswith(who)]
                assert mine == [f"{who}{n}" for n in range(50)]
            assert offsets(receiver.publications("other")) == list(range(1, 51))
        assert [i.data for i in a.publications("room")] == [i.data for i in b.publications("room")]


async def test_a_recovery_returns_exactly_the_missed_publications(redis_server: Server) -> None:
    async with instance(redis_server) as a:
        first = await a.recover("room")  # a subscriber's position before any publication
        assert (first.position.offset, first.reason, first.publications) == (0, None, [])
        for n in range(1, 11):
            a.streams.publish("room", f"m{n}", except_session_ids={"s2"} if n == 5 else ())
        await wait_for(lambda: len(a.publications("room")) == 10)
        epoch = first.position.epoch
        assert {item.position.epoch for item in a.publications("room")} == {epoch}
        assert a.publications("room")[4].except_session_ids == frozenset({"s2"})

        answer = await a.recover("room", StreamPosition(offset=3, epoch=epoch))
        assert answer.reason is None
        assert answer.position == StreamPosition(offset=10, epoch=epoch)
        assert answer.publications == [f"m{n}" for n in range(4, 11)]
        # Without those the session was excluded from.
        other = await a.recover("room", StreamPosition(offset=3, epoch=epoch), "s2")
        assert other.publications == [f"m{n}" for n in range(4, 11) if n != 5]
        caught_up = await a.recover("room", StreamPosition(offset=10, epoch=epoch))
        assert (caught_up.reason, caught_up.publications) == (None, [])

        for since, reason in [
            (StreamPosition(offset=3, epoch="another"), "epoch"),
            (StreamPosition(offset=11, epoch=epoch), "epoch"),
        ]:
            refused = await a.recover("room", since)
            assert (refused.reason, refused.publications) == (reason, [])
            assert refused.position == StreamPosition(offset=10, epoch=epoch)


@pytest.mark.parametrize(
    ("size", "max_recovery", "since", "reason"),
    [
        (300, 4, 5, None),  # 4 missed, 4 allowed
        (300, 4, 4, "too_many"),  # more than one recovery returns
        (4, 300, 4, "too_many"),  # more than the history keeps
        (4, 300, 5, None),
    ],
)
async def test_too_many_missed(
    redis_server: Server, size: int, max_recovery: int, since: int, reason: str | None
) -> None:
    async with instance(redis_server, size=size, max_recovery=max_recovery) as a:
        for n in range(1, 10):
            a.streams.publish("room", f"m{n}")
        await wait_for(lambda: len(a.publications("room")) == 9)
        epoch = a.publications("room")[0].position.epoch
        answer = await a.recover("room", StreamPosition(offset=since, epoch=epoch))
        assert answer.reason == reason
        assert answer.publications == ([] if reason else [f"m{n}" for n in range(since + 1, 10)])
        client = aioredis.Redis(port=redis_server.port)
        kept = await client.xlen("megapresence:stream:{app:room}")
        await client.aclose()
        assert kept == min(size, 9)  # MAXLEN exact


async def test_expired_publications_are_dropped_and_said_so(redis_server: Server) -> None:
    async with instance(redis_server, ttl=0.3) as a:
        a.streams.publish("room", "old")
        await wait_for(lambda: len(a.publications("room")) == 1)
        await anyio.sleep(0.5)
        a.streams.publish("room", "new")
        await wait_for(lambda: len(a.publications("room")) == 2)
        epoch = a.publications("room")[0].position.epoch
        expired = await a.recover("room", StreamPosition(offset=0, epoch=epoch))
        assert (expired.reason, expired.position.epoch) == ("expired", epoch)
        fresh = await a.recover("room", StreamPosition(offset=1, epoch=epoch))
        assert fresh.publications == ["new"]
        await anyio.sleep(0.5)  # all expired: the stream key goes, the position stays
        gone = await a.recover("room", StreamPosition(offset=1, epoch=epoch))
        assert gone.reason == "expired"
        assert gone.position == StreamPosition(offset=2, epoch=epoch)
        current = await a.recover("room", StreamPosition(offset=2, epoch=epoch))
        assert current.reason is None
        client = aioredis.Redis(port=redis_server.port)
        assert not await client.exists("megapresence:stream:{app:room}")
        await client.aclose()


async def test_lost_history_is_a_new_epoch(redis_server: Server) -> None:
    async with instance(redis_server) as a:
        a.streams.publish("room", "m1")
        await wait_for(lambda: len(a.publications("room")) == 1)
        before = a.publications("room")[0].position
        client = aioredis.Redis(port=redis_server.port)
        await client.flushall()
        await client.aclose()
        a.streams.publish("room", "m2")
        await wait_for(lambda: len(a.publications("room")) == 2)
        after = a.publications("room")[1].position
        assert after.offset == 1
        assert after.epoch != before.epoch
        answer = await a.recover("room", before)
        assert answer.reason == "epoch"


async def _restart(redis_server: Server, *, saved: bool) -> None:
    client = aioredis.Redis(port=redis_server.port)
    if saved:
        await client.save()  # the restart reloads this snapshot
    await client.aclose()
    redis_server.kill()
    redis_server.start()


@pytest.mark.parametrize("saved", [False, True], ids=["without_persistence", "from_a_snapshot"])
async def test_a_redis_restart_is_a_new_epoch_and_the_link_says_so(
    redis_server: Server, saved: bool
) -> None:
    async with instance(redis_server) as a:
        for n in range(3):
            a.streams.publish("room", f"m{n}")
        await wait_for(lambda: len(a.publications("room")) == 3)
        held = a.publications("room")[1].position
        await _restart(redis_server, saved=saved)
        await wait_for(lambda: a.states[-2:] == [False, True], timeout=10)
        answer = await a.recover("room", held)
        assert answer.reason == "epoch"
        a.streams.publish("room", "after")
        await wait_for(lambda: len(a.publications("room")) == 4)
        assert a.publications("room")[3].position == StreamPosition(
            offset=1, epoch=answer.position.epoch
        )


async def test_an_answer_comes_between_the_publications_it_covers_and_the_later_ones(
    redis_server: Server,
) -> None:
    async with instance(redis_server) as publisher, instance(redis_server) as reader:
        done = False

        async def publish() -> None:
            n = 0
            while not done:
                n += 1
                publisher.streams.publish("room", f"m{n}")
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            await wait_for(lambda: len(reader.publications("room")) > 0)
            for _ in range(20):
                await reader.recover("room")
                await anyio.sleep(0.005)
            done = True
        seen = 0
        for item in reader.received:
            if isinstance(item, StreamPublication):
                assert item.position.offset == seen + 1
                seen = item.position.offset
            else:
                assert item.position.offset == seen  # after everything up to it, nothing more


async def test_an_unreachable_redis_fails_the_start(redis_server: Server) -> None:
    redis_server.kill()
    streams = RedisStreams(
        f"redis://127.0.0.1:{redis_server.port}/0", app="app", size=3, ttl=1, max_recovery=3
    )
    with pytest.raises(RosterUnavailableError, match="cannot reach Redis"):
        await streams.start(lambda item: None, lambda up: None)
