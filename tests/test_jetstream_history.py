"""Channel history in JetStream: two PresenceServers over a real nats-server (``-js``), so a
client that drops on one instance recovers exactly on the other; an instance restart and a
NATS restart recover exactly or say ``recovered: false``, never silently wrong. NATS without
JetStream falls back to each instance numbering its own streams."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import anyio
import nats
import pytest

from megapresence_anyio import PresenceServer, handle_command
from megapresence_client import (
    Backoff,
    ChannelMessage,
    PresenceClient,
    ServerError,
    StreamReset,
    Subscribed,
)
from megapresence_core import PresenceConfig
from megapresence_core.events import StreamPosition, StreamReadDone
from megapresence_nats import JetStreamHistory, NatsCluster
from megapresence_nats._history import _Read

from .servers import Server
from .socket_helpers import query_login
from .test_nats_cluster import quick_cluster

pytestmark = pytest.mark.anyio

CHANNEL = "seq"
#: Reconnect within a tenth of a second.
QUICK = Backoff(first=0.1, first_back_off=0.1, cap=0.1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def instance(port: int, name: str) -> AsyncIterator[int]:
    url = f"nats://127.0.0.1:{port}"
    config = quick_cluster(name)
    server = PresenceServer(
        query_login,
        paths=None,
        on_message=handle_command,
        presence=PresenceConfig(cluster=config, leave_grace=5),
        cluster=NatsCluster(url, reconnect_wait=0.1),
        stream_store=JetStreamHistory(url, app="t", reconnect_wait=0.1),
    )
    async with server:
        yield await server.listen()


def client(port: int, user: str) -> PresenceClient:
    return PresenceClient(f"ws://127.0.0.1:{port}/ws", query={"user": user, "session": user + "1"})


class Reader:
    """A subscriber's numbers, and every answer and reset it was given."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.answers: list[Subscribed] = []
        self.resets = 0

    async def read(self, source: PresenceClient, until: float) -> None:
        with anyio.move_on_after(until):
            async for event in source:
                if isinstance(event, ChannelMessage) and event.channel == CHANNEL:
                    self.numbers.append(event.payload)
                elif isinstance(event, Subscribed):
                    self.answers.append(event)
                elif isinstance(event, StreamReset):
                    self.resets += 1

    async def come_back(self, source: PresenceClient) -> None:
        """Read until the answer to the resubscribe after a drop, then a little more."""
        answers = len(self.answers)
        with anyio.fail_after(10):
            while len(self.answers) == answers:
                await self.read(source, 0.1)
        await self.read(source, 0.2)

    def recoveries(self) -> list[tuple[bool | None, str | None]]:
        return [(a.recovered, a.reason) for a in self.answers if a.recovered is not None]


async def publish(publisher: PresenceClient, n: int) -> None:
    """Publish ``n`` and wait for its echo; again while the store is out of reach."""
    with anyio.fail_after(30):
        while True:
            await publisher.publish(CHANNEL, "n", n)
            async for event in publisher:
                if isinstance(event, ChannelMessage) and event.payload == n:
                    return
                if isinstance(event, ServerError):
                    assert event.code == "unavailable"
                    await anyio.sleep(0.1)
                    break


def urls(*ports: int) -> Any:
    """Each (re)connection to the next instance in turn."""
    turn = iter(range(10_000))
    choices = [f"ws://127.0.0.1:{p}/ws?user=sub&session=sub1" for p in ports]
    return lambda: choices[next(turn) % len(choices)]


@asynccontextmanager
async def pair(
    nats_port: int, publisher_on: str
) -> AsyncIterator[tuple[PresenceClient, PresenceClient]]:
    """Instances A and B; a publisher on ``publisher_on``, subscribed, and a subscriber whose
    every (re)connection goes to the next instance in turn (not yet subscribed)."""
    async with (
        instance(nats_port, "A") as port_a,
        instance(nats_port, "B") as port_b,
        client({"A": port_a, "B": port_b}[publisher_on], "pub") as publisher,
        PresenceClient(urls(port_a, port_b), backoff=QUICK) as sub,
    ):
        await publisher.subscribe(CHANNEL).wait_subscribed()
        yield publisher, sub


async def test_a_subscriber_recovers_exactly_on_the_other_instance(nats_server: Server) -> None:
    reader = Reader()
    async with pair(nats_server.port, "A") as (publisher, sub):
        first = await sub.subscribe(CHANNEL, recover=True).wait_subscribed()
        assert (first.offset, first.recovered) == (0, None)
        n = 0
        for _round in range(6):  # publish, drop, publish while away, come back on the other
            for _ in range(5):
                n += 1
                await publish(publisher, n)
            await reader.read(sub, 0.3)
            await sub.drop()
            for _ in range(3):
                n += 1
                await publish(publisher, n)
            await reader.come_back(sub)
    assert reader.numbers == list(range(1, n + 1))  # each once, in order, across instances
    assert reader.recoveries() == [(True, None)] * 6
    assert reader.resets == 0


async def test_an_instance_restart_recovers_exactly(nats_server: Server) -> None:
    reader, stop_a = Reader(), anyio.Event()

    async def run_a(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with instance(nats_server.port, "A") as port:
            task_status.started(port)
            await stop_a.wait()

    async with (
        instance(nats_server.port, "B") as port_b,
        client(port_b, "pub") as publisher,
        anyio.create_task_group() as group,
    ):
        await publisher.subscribe(CHANNEL).wait_subscribed()
        port_a = await group.start(run_a)
        async with PresenceClient(urls(port_a, port_b), backoff=QUICK) as sub:
            await sub.subscribe(CHANNEL, recover=True).wait_subscribed()
            for n in range(1, 4):
                await publish(publisher, n)
            await reader.read(sub, 0.5)
            stop_a.set()  # A stops: its subscriber comes back on B, while B publishes on
            for n in range(4, 7):
                await publish(publisher, n)
            await reader.come_back(sub)
    assert reader.numbers == [1, 2, 3, 4, 5, 6]
    assert reader.recoveries() == [(True, None)]


async def test_a_nats_restart_recovers_exactly_or_says_so(nats_server: Server) -> None:
    """The store is kept on disk: after NATS restarts every instance asks JetStream where
    each stream is, and tells a subscriber ``stream.missed`` if it is behind (never a
    ``stream.reset`` naming the instance's own epoch); nothing is silently wrong."""
    reader = Reader()
    async with pair(nats_server.port, "B") as (publisher, sub):
        await sub.subscribe(CHANNEL, recover=True).wait_subscribed()
        for n in range(1, 4):
            await publish(publisher, n)
        await reader.read(sub, 0.5)
        nats_server.kill()
        await anyio.sleep(0.5)
        nats_server.start()
        for n in range(4, 7):
            await publish(publisher, n)  # refused (unavailable) until the store is back
        await reader.read(sub, 0.5)
        await sub.drop()
        for n in range(7, 10):
            await publish(publisher, n)
        await reader.read(sub, 1.5)
    assert reader.resets == 0
    assert reader.numbers == sorted(set(reader.numbers))  # in order, none twice
    assert reader.numbers[:3] == [1, 2, 3]
    assert reader.numbers[-3:] == [7, 8, 9]
    assert reader.recoveries()  # the resubscribe after the drop, at least
    assert set(reader.recoveries()) <= {(True, None), (False, "epoch")}


async def test_without_jetstream_each_instance_numbers_its_own(
    plain_nats_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    reader = Reader()
    async with pair(plain_nats_server.port, "A") as (publisher, sub):
        await sub.subscribe(CHANNEL, recover=True).wait_subscribed()
        await publish(publisher, 1)
        await reader.read(sub, 0.3)
        await sub.drop()
        await publish(publisher, 2)
        await reader.read(sub, 1.0)
    assert reader.numbers[0] == 1
    assert reader.recoveries() == [(False, "epoch")]  # the other instance's own stream
    assert sum("has no JetStream" in r.message for r in caplog.records) == 2  # once each


async def test_a_purged_history_is_a_new_epoch_never_a_wrong_recovery(nats_server: Server) -> None:
    reader = Reader()
    async with pair(nats_server.port, "A") as (publisher, sub):
        await sub.subscribe(CHANNEL, recover=True).wait_subscribed()
        for n in range(1, 4):
            await publish(publisher, n)
        await reader.read(sub, 0.3)
        await sub.drop()
        nc = await nats.connect(f"nats://127.0.0.1:{nats_server.port}")
        await nc.jetstream().purge_stream("MEGAPRESENCE_t")
        await nc.close()
        for n in range(4, 7):  # offsets 1, 2, 3 again, under a new epoch
            await publish(publisher, n)
        await reader.come_back(sub)
        await publish(publisher, 7)
        await reader.read(sub, 0.3)
    assert reader.recoveries() == [(False, "epoch")]
    assert reader.numbers == [1, 2, 3, 7]  # told that 4 to 6 are missing


# ------------------------------------------- the answer's order with the live consumer


class FakeJetStream:
    """The entries of one subject, by stream sequence; a read can be held half-way."""

    def __init__(self, history: JetStreamHistory) -> None:
        self.history = history
        self.entries: dict[int, SimpleNamespace] = {}
        self.gate = anyio.Event()

    def put(self, seq: int, offset: int, prev: int) -> SimpleNamespace:
        headers = {"Mp-Offset": str(offset), "Mp-Epoch": "E", "Mp-Prev": str(prev)}
        entry = SimpleNamespace(
            seq=seq,
            headers=headers,
            data=f'{{"type":"PUBLISH","payload":{{"channel":"room","message":{{"type":"n","payload":{offset}}}}}}}'.encode(),
            subject=self.history._subject("room"),
            metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)),
        )
        self.entries[seq] = entry
        return entry

    async def get_last_msg(self, stream: str, subject: str, direct: bool) -> SimpleNamespace:
        await self.gate.wait()
        return self.entries[max(self.entries)]

    async def get_msg(self, stream: str, seq: int, direct: bool) -> SimpleNamespace:
        return self.entries[seq]


async def ordered(visible: int, arrivals: list[str]) -> list[Any]:
    """Events as the core gets them, for entries 1..3 (sequences 11..13) of which the read
    sees the first ``visible``, read since offset 0 while the consumer delivers them at the
    points ``arrivals`` names."""
    got: list[Any] = []
    history = JetStreamHistory("nats://unused", app="t")
    history._dispatch = got.append
    fake = FakeJetStream(history)
    history._js = fake  # type: ignore[assignment]
    history._consumed = 10
    entries = [
        fake.put(10 + offset, offset, 9 + offset if offset > 1 else 0) for offset in (1, 2, 3)
    ]
    for entry in entries[visible:]:
        del fake.entries[entry.seq]  # stored after the read
    async with anyio.create_task_group() as group:
        read = _Read()
        history._reads["room"] = deque([read])
        group.start_soon(history._read, read, 1, "room", StreamPosition(offset=0, epoch="E"), 10)
        for step in arrivals:
            if step == "read":
                fake.gate.set()
                await anyio.sleep(0.01)
            else:
                await history._on_live(entries[int(step) - 1])
    return [
        ("answer", [o for o, _ in e.entries]) if isinstance(e, StreamReadDone) else e.offset
        for e in got
    ]


@pytest.mark.parametrize("visible", [2, 3])
@pytest.mark.parametrize("read_at", [0, 1, 2, 3])
async def test_an_answer_comes_after_the_live_entries_it_covers_and_before_the_rest(
    visible: int, read_at: int
) -> None:
    """Whether the consumer lags behind the read or runs ahead of it: the live entries the
    read covers come first, then the answer, then the rest (held meanwhile)."""
    arrivals = ["1", "2", "3"]
    arrivals.insert(read_at, "read")
    covered = list(range(1, visible + 1))
    expected = [*covered, ("answer", covered), *range(visible + 1, 4)]
    assert await ordered(visible, arrivals) == expected


async def test_a_burst_keeps_its_order_per_channel_while_channels_go_side_by_side(
    nats_server: Server,
) -> None:
    async with (
        instance(nats_server.port, "A") as port_a,
        instance(nats_server.port, "B") as port_b,
        client(port_a, "pub") as publisher,
        client(port_b, "sub") as sub,
    ):
        for channel in (CHANNEL, "other"):
            await publisher.subscribe(channel).wait_subscribed()
            await sub.subscribe(channel).wait_subscribed()
        for n in range(1, 31):  # no waiting for the echoes
            await publisher.publish(CHANNEL, "n", n)
            await publisher.publish("other", "n", -n)
        got: dict[str, list[tuple[int, int]]] = {CHANNEL: [], "other": []}
        with anyio.fail_after(10):
            async for event in sub:
                if isinstance(event, ChannelMessage):
                    assert event.offset is not None
                    got[event.channel].append((event.offset, event.payload))
                    if all(len(numbers) == 30 for numbers in got.values()):
                        break
    assert got[CHANNEL] == [(n, n) for n in range(1, 31)]
    assert got["other"] == [(n, -n) for n in range(1, 31)]


async def test_answers_go_in_the_order_their_reads_started_whatever_order_they_end_in() -> None:
    """Read 1 sees entry 1 only, read 2 (started later) entries 1 and 2; read 2 ends first.
    Entry 2 must not reach the core before read 1's answer: its subscriber would take it
    for one of the missed ones and drop it (the gap the process test found)."""
    got: list[Any] = []
    history = JetStreamHistory("nats://unused", app="t")
    history._dispatch = got.append
    fake = FakeJetStream(history)
    history._js = fake  # type: ignore[assignment]
    history._consumed = 10
    first, second = fake.put(11, 1, 0), fake.put(12, 2, 11)
    gates = [anyio.Event(), anyio.Event()]
    tops = [first, second]

    async def get_last_msg(stream: str, subject: str, direct: bool) -> SimpleNamespace:
        gate, top = gates.pop(0), tops.pop(0)
        await gate.wait()
        return top

    fake.get_last_msg = get_last_msg  # type: ignore[method-assign]
    since = StreamPosition(offset=0, epoch="E")
    read_1, read_2 = _Read(), _Read()
    history._reads["room"] = deque([read_1, read_2])
    release_1, release_2 = gates
    async with anyio.create_task_group() as group:
        group.start_soon(history._read, read_1, 1, "room", since, 10)
        group.start_soon(history._read, read_2, 2, "room", since, 10)
        await anyio.sleep(0.01)
        await history._on_live(first)
        await history._on_live(second)
        release_2.set()
        await anyio.sleep(0.01)
        release_1.set()
    assert [
        (e.request, [o for o, _ in e.entries]) if isinstance(e, StreamReadDone) else e.offset
        for e in got
    ] == [1, (1, [1]), 2, (2, [1, 2])]
