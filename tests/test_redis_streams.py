"""Channel streams in Redis Streams against a real redis-server (asyncio only, as redis-py)."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from megapresence_anyio import handle_command
from megapresence_core import Event, LocalUsageError
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    StreamPosition,
    StreamPublished,
    StreamReadDone,
    StreamStoreChanged,
    StreamStoreState,
)
from megapresence_redis import RedisRoster, RedisStreams, RosterUnavailableError

from .servers import Server
from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio

READY, DOWN = StreamStoreState.READY, StreamStoreState.DOWN


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Instance:
    """One instance's streams, and everything they dispatched, in order."""

    def __init__(self, streams: RedisStreams) -> None:
        self.streams = streams
        self.events: list[Event] = []
        self._request = 0

    @property
    def states(self) -> list[StreamStoreState]:
        return [e.state for e in self.events if isinstance(e, StreamStoreChanged)]

    def publications(self, channel: str) -> list[StreamPublished]:
        return [e for e in self.events if isinstance(e, StreamPublished) and e.channel == channel]

    def answers(self) -> list[StreamReadDone]:
        return [e for e in self.events if isinstance(e, StreamReadDone)]

    async def read(
        self, channel: str, since: StreamPosition | None = None, limit: int = 300
    ) -> StreamReadDone:
        self._request += 1
        request = self._request
        self.streams.read(request, channel, since, limit)

        def answered() -> StreamReadDone | None:
            return next((a for a in self.answers() if a.request == request), None)

        await wait_for(lambda: answered() is not None)
        found = answered()
        assert found is not None
        return found


@contextlib.asynccontextmanager
async def instance(server: Server, *, size: int = 300, ttl: float = 120) -> AsyncIterator[Instance]:
    streams = RedisStreams(f"redis://127.0.0.1:{server.port}/0", app="app", timeout=2)
    found = Instance(streams)
    await streams.start(found.events.append, HistoryConfig(boot_id="b", size=size, ttl=ttl))
    assert found.states == [DOWN]  # not reading yet: nothing is numbered here alone
    async with anyio.create_task_group() as tg:
        tg.start_soon(streams.run)
        await wait_for(lambda: streams.healthy)
        assert found.states == [DOWN, READY]
        yield found
        await streams.aclose()
        tg.cancel_scope.cancel()


def text(event: StreamPublished) -> str:
    return event.data.decode() if isinstance(event.data, bytes) else event.data


def position(event: StreamPublished) -> StreamPosition:
    return StreamPosition(offset=event.offset, epoch=event.epoch)


def offsets(items: list[StreamPublished]) -> list[int]:
    return [item.offset for item in items]


def at(offset: int, epoch: str) -> StreamPosition:
    return StreamPosition(offset=offset, epoch=epoch)


async def test_every_instance_receives_each_channel_in_offset_order(redis_server: Server) -> None:
    async with instance(redis_server) as a, instance(redis_server) as b:
        for n in range(50):  # both publish to one channel at once
            a.streams.append("room", f"a{n}")
            b.streams.append("room", f"b{n}")
            b.streams.append("other", f"o{n}")
        await wait_for(lambda: len(a.publications("room")) == 100)
        await wait_for(lambda: len(b.publications("other")) == 50)
        for receiver in (a, b):
            room = receiver.publications("room")
            assert offsets(room) == list(range(1, 101))
            assert len({item.epoch for item in room}) == 1
            # Each publisher's own messages keep the order it sent them in.
            for who in "ab":
                mine = [text(item) for item in room if text(item).startswith(who)]
                assert mine == [f"{who}{n}" for n in range(50)]
            assert offsets(receiver.publications("other")) == list(range(1, 51))
        assert [text(i) for i in a.publications("room")] == [
            text(i) for i in b.publications("room")
        ]


async def test_a_read_returns_the_position_and_the_entries_after_since(
    redis_server: Server,
) -> None:
    async with instance(redis_server) as a:
        first = await a.read("room")  # a subscriber's position before any publication
        assert first.position is not None
        epoch = first.position.epoch
        assert (first.position.offset, first.entries) == (0, ())
        assert (await a.read("room")).position == first.position  # kept in Redis
        for n in range(1, 11):
            a.streams.append("room", f"m{n}")
        await wait_for(lambda: len(a.publications("room")) == 10)
        assert {position(item) for item in a.publications("room")} == {
            at(n, epoch) for n in range(1, 11)
        }
        answer = await a.read("room", at(3, epoch))
        assert answer.position == at(10, epoch)
        assert answer.entries == tuple((n, f"m{n}".encode()) for n in range(4, 11))
        assert (await a.read("room", at(10, epoch))).entries == ()
        # Not of this epoch, beyond the top, or further behind than the limit: no entries.
        for since, limit in [(at(3, "another"), 300), (at(11, epoch), 300), (at(3, epoch), 6)]:
            refused = await a.read("room", since, limit)
            assert (refused.position, refused.entries) == (at(10, epoch), ())
        assert len((await a.read("room", at(3, epoch), 7)).entries) == 7


async def test_the_size_trims_exactly(redis_server: Server) -> None:
    async with instance(redis_server, size=4) as a:
        for n in range(1, 10):
            a.streams.append("room", f"m{n}")
        await wait_for(lambda: len(a.publications("room")) == 9)
        epoch = a.publications("room")[0].epoch
        answer = await a.read("room", at(2, epoch))
        assert answer.entries == tuple((n, f"m{n}".encode()) for n in range(6, 10))
        client = aioredis.Redis(port=redis_server.port)
        assert await client.xlen("megapresence:stream:{app:room}") == 4
        await client.aclose()


async def test_expired_publications_are_dropped_and_the_epoch_stays(redis_server: Server) -> None:
    async with instance(redis_server, ttl=0.3) as a:
        a.streams.append("room", "old")
        await wait_for(lambda: len(a.publications("room")) == 1)
        await anyio.sleep(0.5)
        a.streams.append("room", "new")
        await wait_for(lambda: len(a.publications("room")) == 2)
        epoch = a.publications("room")[0].epoch
        assert (await a.read("room", at(0, epoch))).entries == ((2, b"new"),)
        await anyio.sleep(0.5)  # all expired: the stream key goes, the position stays
        gone = await a.read("room", at(1, epoch))
        assert (gone.position, gone.entries) == (at(2, epoch), ())
        client = aioredis.Redis(port=redis_server.port)
        assert not await client.exists("megapresence:stream:{app:room}")
        await client.aclose()
        a.streams.append("room", "later")
        await wait_for(lambda: len(a.publications("room")) == 3)
        assert position(a.publications("room")[2]) == at(3, epoch)


async def test_lost_history_is_a_new_epoch(redis_server: Server) -> None:
    async with instance(redis_server) as a:
        a.streams.append("room", "m1")
        await wait_for(lambda: len(a.publications("room")) == 1)
        before = position(a.publications("room")[0])
        client = aioredis.Redis(port=redis_server.port)
        await client.flushall()
        await client.aclose()
        a.streams.append("room", "m2")
        await wait_for(lambda: len(a.publications("room")) == 2)
        after = position(a.publications("room")[1])
        assert after.offset == 1
        assert after.epoch != before.epoch


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
            a.streams.append("room", f"m{n}")
        await wait_for(lambda: len(a.publications("room")) == 3)
        held = position(a.publications("room")[1])
        await _restart(redis_server, saved=saved)
        await wait_for(lambda: a.states == [DOWN, READY, DOWN, READY], timeout=10)
        answer = await a.read("room", held)
        assert answer.position is not None
        assert (answer.position.offset, answer.entries) == (0, ())
        assert answer.position.epoch != held.epoch
        a.streams.append("room", "after")
        await wait_for(lambda: len(a.publications("room")) == 4)
        assert position(a.publications("room")[3]) == at(1, answer.position.epoch)


async def test_an_answer_comes_between_the_publications_it_covers_and_the_later_ones(
    redis_server: Server,
) -> None:
    async with instance(redis_server) as publisher, instance(redis_server) as reader:
        done = False

        async def publish() -> None:
            n = 0
            while not done:
                n += 1
                publisher.streams.append("room", f"m{n}")
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            await wait_for(lambda: len(reader.publications("room")) > 0)
            for _ in range(20):
                await reader.read("room")
                await anyio.sleep(0.005)
            done = True
        seen, between = 0, 0
        for item in reader.events:
            if isinstance(item, StreamPublished):
                assert item.offset == seen + 1
                seen = item.offset
            elif isinstance(item, StreamReadDone):
                assert item.position is not None
                assert item.position.offset == seen  # after all up to it, before the rest
                between += seen < len(reader.publications("room"))
        assert between > 0  # answers did fall among the publications


async def test_a_failed_write_answers_its_reads_without_a_position(redis_server: Server) -> None:
    async with instance(redis_server) as a:
        redis_server.kill()
        a.streams.read(7, "room", None, 300)
        await wait_for(lambda: bool(a.answers()))
        assert (a.answers()[0].request, a.answers()[0].position) == (7, None)
        await wait_for(lambda: a.states[-1:] == [DOWN])
        redis_server.start()
        await wait_for(lambda: a.states[-1:] == [READY], timeout=10)


async def test_an_unreachable_redis_fails_the_start(redis_server: Server) -> None:
    redis_server.kill()
    streams = RedisStreams(f"redis://127.0.0.1:{redis_server.port}/0", app="app")
    with pytest.raises(RosterUnavailableError, match="cannot reach Redis"):
        await streams.start(lambda event: None, HistoryConfig(boot_id="b"))


async def test_a_server_refuses_publishes_while_redis_is_out_of_reach(redis_server: Server) -> None:
    states: list[tuple[str, str]] = []
    async with running_server(
        stream_store=RedisStreams(f"redis://127.0.0.1:{redis_server.port}/0", app="s", timeout=1),
        on_message=handle_command,
        on_link_state=lambda link, state: states.append((link, state)),
    ) as (server, url):
        await wait_for(lambda: server.link_states() == {"streams": "ok"})
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1")
        await ann.send(json.dumps({"op": "subscribe", "channel": "room"}))
        assert (await ann.recv_json())["type"] == "subscribed"
        await ann.send(json.dumps({"op": "publish", "channel": "room", "type": "note"}))
        first = await ann.recv_json()
        assert first["offset"] == 1  # numbered by Redis, delivered back
        redis_server.kill()
        await wait_for(lambda: server.link_states() == {"streams": "failing"})
        assert not server.readiness().ready
        await ann.send(json.dumps({"op": "publish", "channel": "room", "type": "note"}))
        # Refused, and nothing said before it: ann holds Redis's position, not this server's.
        assert (await ann.recv_json())["payload"]["code"] == "unavailable"
        redis_server.start()
        await wait_for(lambda: server.link_states() == {"streams": "ok"}, timeout=10)
        assert ("streams", "failing") in states
        assert states[-1] == ("streams", "ok")
        # Redis came back empty: the server asked where the stream is, and ann is told.
        missed = await ann.recv_json()
        assert missed["type"] == "stream.missed"
        assert missed["epoch"] != first["epoch"]
        await ann.close()


async def test_a_cut_pubsub_connection_takes_the_link_down_and_up(redis_server: Server) -> None:
    async with instance(redis_server) as a:
        client = aioredis.Redis(port=redis_server.port)
        assert await client.client_kill_filter(_type="pubsub") == 1
        await client.aclose()
        await wait_for(lambda: a.states == [DOWN, READY, DOWN, READY])
        a.streams.append("room", "after")
        await wait_for(lambda: len(a.publications("room")) == 1)


async def test_a_redis_that_stops_answering_takes_the_link_down(redis_server: Server) -> None:
    streams = RedisStreams(f"redis://127.0.0.1:{redis_server.port}/0", app="app", timeout=1)
    events: list[Event] = []
    await streams.start(events.append, HistoryConfig(boot_id="b"))
    process = redis_server.process
    assert process is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(streams.run)
        await wait_for(lambda: streams.healthy)
        await anyio.sleep(1.5)  # idle past the timeout: a ping is answered, it stays up
        assert streams.healthy
        process.send_signal(signal.SIGSTOP)  # a Redis that neither answers nor closes
        try:
            await wait_for(lambda: not streams.healthy, timeout=10)
        finally:
            process.send_signal(signal.SIGCONT)
        await wait_for(lambda: streams.healthy, timeout=10)
        states = [e.state for e in events if isinstance(e, StreamStoreChanged)]
        assert states == [DOWN, READY, DOWN, READY]
        tg.cancel_scope.cancel()
    await streams.aclose()


async def test_a_message_not_from_our_scripts_is_skipped(
    redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    async with instance(redis_server) as a:
        client = aioredis.Redis(port=redis_server.port)
        await client.publish("megapresence:streams:{app}", "not a publication")
        await client.aclose()
        a.streams.append("room", "next")
        await wait_for(lambda: len(a.publications("room")) == 1)
        assert a.streams.errors == 1
        assert "skipping a malformed message" in caplog.text


async def test_a_storm_of_recoveries_stays_within_the_pubsub_buffer(redis_server: Server) -> None:
    client = aioredis.Redis(port=redis_server.port)
    # A pub/sub reader holding more than 64 KiB is disconnected at once.
    await client.config_set("client-output-buffer-limit", "pubsub 65536 65536 0")
    await client.aclose()
    async with instance(redis_server) as a:
        for n in range(100):
            a.streams.append("room", f"{n:04}" + "x" * 1000)
        await wait_for(lambda: len(a.publications("room")) == 100)
        epoch = a.publications("room")[0].epoch
        for request in range(1, 201):  # 200 answers of 100 KB: through pub/sub, 20 MB
            a.streams.read(request, "room", at(0, epoch), 300)
        await wait_for(lambda: len(a.answers()) == 200, timeout=30)
        assert {len(answer.entries) for answer in a.answers()} == {100}
        assert a.states == [DOWN, READY]


@pytest.mark.parametrize("app", ["h3:x", "a{b}", "", "x y"])
def test_an_app_name_that_could_share_keys_with_another_is_refused(app: str) -> None:
    # App "h3:x", channel "y" and app "h3", channel "x:y" would be one Redis stream.
    with pytest.raises(LocalUsageError, match="app must be letters, digits"):
        RedisStreams("redis://127.0.0.1:1/0", app=app)
    with pytest.raises(LocalUsageError, match="app must be letters, digits"):
        RedisRoster("redis://127.0.0.1:1/0", app=app, instance_id="i", epoch=1)
