"""Two ``megapresence serve --redis`` processes: the channel streams live in Redis, so a
client that drops recovers on the other instance, every message once; a Redis restart is
``recovered: false`` or an exact recovery, never a silent gap."""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from megapresence_client import (
    Backoff,
    ChannelMessage,
    PresenceClient,
    StreamReset,
    Subscribed,
)

from .process_helpers import Command
from .servers import Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def serve(tmp_path: Path, name: str, redis_: Server, *extra: str) -> Command:
    return Command(
        tmp_path,
        name,
        "serve",
        "--port",
        "0",
        "--instance-id",
        name,
        "--redis",
        f"redis://127.0.0.1:{redis_.port}/0",
        "--app",
        "streams",
        "--log-level",
        "warning",
        *extra,
    )


@pytest.fixture(params=["redis", "redis+nats"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: Server
) -> Iterator[tuple[Command, Command]]:
    """Two instances sharing Redis; with NATS too, which then carries presence, broadcasts
    and directs, while channel messages still go through Redis (it numbers them)."""
    extra: tuple[str, ...] = ()
    if request.param == "redis+nats":
        nats: Server = request.getfixturevalue("nats_server")
        extra = ("--nats", f"nats://127.0.0.1:{nats.port}")
    a, b = serve(tmp_path, "A", redis_server, *extra), serve(tmp_path, "B", redis_server, *extra)
    yield a, b
    for command in (a, b):
        command.stop()


def url(command: Command, user: str) -> str:
    return f"ws://127.0.0.1:{command.port}/ws/chat?user={user}"


class Subscriber:
    """A recovering client that connects where ``urls`` says (a list: each in turn)."""

    def __init__(self, urls: list[str] | Callable[[], str]) -> None:
        if isinstance(urls, list):
            turns = itertools.cycle(urls)
            urls = lambda: next(turns)  # noqa: E731
        backoff = Backoff(first=0.05, first_back_off=0.2, cap=0.2)
        self.client = PresenceClient(urls, backoff=backoff)
        self.numbers: list[int] = []
        self.answers: list[Subscribed] = []
        self.resets: list[StreamReset] = []

    async def read(self) -> None:
        async for event in self.client:
            if isinstance(event, ChannelMessage):
                self.numbers.append(event.payload["n"])
            elif isinstance(event, Subscribed):
                self.answers.append(event)
            elif isinstance(event, StreamReset):
                self.resets.append(event)


async def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Polled: the events are read by another task, after the client's state changed."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


async def publish(publisher: PresenceClient, numbers: range) -> None:
    for n in numbers:  # 50 a second: within a connection's command rate (100)
        await publisher.publish("room", "number", {"n": n})
        await anyio.sleep(0.02)


@asynccontextmanager
async def flowing(subscriber: Subscriber, at: Command, numbers: range) -> AsyncIterator[None]:
    """``subscriber`` in "room" (recovering, read in the background) while a publisher on
    ``at`` publishes ``numbers`` there; both stop when the block ends."""
    async with (
        PresenceClient(url(at, "pub")) as publisher,
        subscriber.client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(subscriber.read)
        await publisher.subscribe("room").wait_subscribed()
        await subscriber.client.subscribe("room", recover=True).wait_subscribed()
        tg.start_soon(publish, publisher, numbers)
        yield
        tg.cancel_scope.cancel()


async def test_a_subscriber_recovers_every_number_on_the_other_instance(
    pair: tuple[Command, Command],
) -> None:
    a, b = pair
    subscriber = Subscriber([url(a, "sub"), url(b, "sub")])
    total = 300
    async with flowing(subscriber, a, range(1, total + 1)):
        for _ in range(6):  # drops while the numbers flow: A, B, A, ...
            await anyio.sleep(0.5)
            connections = subscriber.client.connections + 1
            await subscriber.client.drop()
            with anyio.fail_after(10):
                await subscriber.client.wait_for(
                    lambda: subscriber.client.connections >= connections  # noqa: B023
                )
        await until(lambda: len(subscriber.numbers) >= total)
        await anyio.sleep(0.2)
    assert subscriber.numbers == list(range(1, total + 1))  # every number, once, in order
    recovered = [answer.recovered for answer in subscriber.answers]
    assert recovered == [None] + [True] * 6
    assert subscriber.resets == []


@pytest.mark.parametrize("pair", ["redis"], indirect=True)  # the same with NATS
async def test_a_redis_restart_is_not_recovered_never_a_silent_gap(
    pair: tuple[Command, Command], redis_server: Server
) -> None:
    a, b = pair
    subscriber = Subscriber([url(b, "sub")])
    # The publisher subscribes too: what it receives is what Redis numbered.
    echo = Subscriber([url(a, "pub")])
    publisher = echo.client
    async with publisher, subscriber.client, anyio.create_task_group() as tg:
        tg.start_soon(subscriber.read)
        tg.start_soon(echo.read)
        await publisher.subscribe("room").wait_subscribed()
        await subscriber.client.subscribe("room", recover=True).wait_subscribed()
        await publish(publisher, range(1, 11))
        await until(lambda: len(subscriber.numbers) == 10)
        await subscriber.client.drop()  # away while Redis restarts
        redis_server.kill()
        redis_server.start()
        n, after = 10, 0
        with anyio.fail_after(30):
            # Until the subscriber is back and five more made it (some are refused with
            # ``unavailable`` while A reads Redis again).
            while not after or len([x for x in echo.numbers if x > after]) < 5:
                n += 1
                await publisher.publish("room", "number", {"n": n})
                await anyio.sleep(0.05)
                if not after and len(subscriber.answers) >= 2:
                    after = n
        await until(lambda: subscriber.numbers[-1:] == echo.numbers[-1:])
        tg.cancel_scope.cancel()
    # The old position belongs to the lost epoch: the subscriber is told, and from then on
    # it has exactly what Redis numbered, a contiguous tail of it, never a hole.
    answers = [answer.recovered for answer in subscriber.answers]
    assert False in answers or subscriber.resets, (subscriber.answers, subscriber.resets)
    assert {a.reason for a in subscriber.answers if a.recovered is False} <= {"epoch"}
    assert subscriber.numbers[:10] == echo.numbers[:10] == list(range(1, 11))
    tail = subscriber.numbers[10:]
    assert tail
    assert tail == echo.numbers[len(echo.numbers) - len(tail) :]


async def test_two_instances_publishing_at_once_deliver_one_order_everywhere(
    pair: tuple[Command, Command],
) -> None:
    a, b = pair
    offsets: dict[str, list[int]] = {"A": [], "B": []}
    texts: dict[str, list[str]] = {"A": [], "B": []}

    async def watch(name: str, client: PresenceClient) -> None:
        async for event in client:
            if isinstance(event, ChannelMessage):
                assert event.offset is not None
                offsets[name].append(event.offset)
                texts[name].append(f"{event.sender and event.sender.user_id}{event.payload['n']}")

    async with (
        PresenceClient(url(a, "ann")) as ann,
        PresenceClient(url(b, "bob")) as bob,
        anyio.create_task_group() as tg,
    ):
        for name, client in (("A", ann), ("B", bob)):
            await client.subscribe("room").wait_subscribed()
            tg.start_soon(watch, name, client)
        async with anyio.create_task_group() as publishers:
            publishers.start_soon(publish, ann, range(1, 101))
            publishers.start_soon(publish, bob, range(1, 101))
        await until(lambda: len(texts["A"]) == len(texts["B"]) == 200)
        tg.cancel_scope.cancel()
    first = offsets["A"][0]
    assert offsets["A"] == offsets["B"] == list(range(first, first + 200))
    assert texts["A"] == texts["B"]  # one order, Redis's, on both instances
    for who in ("ann", "bob"):
        assert [t for t in texts["A"] if t.startswith(who)] == [f"{who}{n}" for n in range(1, 101)]


@pytest.mark.parametrize("pair", ["redis"], indirect=True)  # the same with NATS
async def test_an_instance_killed_and_started_again_loses_nothing(
    tmp_path: Path, pair: tuple[Command, Command], redis_server: Server
) -> None:
    a, b = pair
    current = [url(b, "sub")]
    subscriber = Subscriber(lambda: current[0])
    async with flowing(subscriber, a, range(1, 101)):
        await until(lambda: len(subscriber.numbers) >= 20)
        b.stop(signal.SIGKILL)  # its history was never its own: Redis keeps it
        restarted = serve(tmp_path, "B", redis_server)
        current[0] = url(restarted, "sub")
        try:
            await until(lambda: len(subscriber.numbers) >= 100)
        finally:
            restarted.stop()
    assert subscriber.numbers == list(range(1, 101))
    assert [answer.recovered for answer in subscriber.answers] == [None, True]
