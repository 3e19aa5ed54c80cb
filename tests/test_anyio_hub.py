"""The hub as a real server with two PresenceServers linked to it, on asyncio and trio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.abc
import pytest
from websockets.exceptions import InvalidStatus

from megapresence_anyio import HubServer, PresenceServer, SocketLimits
from megapresence_core import (
    HubConfig,
    HubLinkConfig,
    PresenceConfig,
)
from megapresence_core.events import (
    HubLost,
)
from megapresence_core.lifecycle import (
    HubLinkState,
)

from .socket_helpers import Client, http_status, query_login, wait_for

pytestmark = pytest.mark.anyio

TOKEN = "hub-secret"


def bridge(hub_port: int, bridge_id: str, token: str = TOKEN) -> PresenceServer:
    link = HubLinkConfig(
        bridge_id=bridge_id,
        instance_id=f"{bridge_id}-1",
        channels=["lobby"],
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    return PresenceServer(
        query_login,
        paths=None,
        # A kicked or closed session leaves at once (the core's tests cover the grace).
        presence=PresenceConfig(hub_link=link, leave_grace=0),
        hub_url=f"ws://127.0.0.1:{hub_port}/any/path",
        hub_token=token,
    )


@asynccontextmanager
async def cluster() -> AsyncIterator[tuple[HubServer, list[tuple[PresenceServer, str]]]]:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(HubServer(HubConfig(hub_id="h1", tokens=[TOKEN])))
        hub_port = await hub.listen()
        servers = []
        for name in ("A", "B"):
            server = await stack.enter_async_context(bridge(hub_port, name))
            servers.append((server, f"ws://127.0.0.1:{await server.listen()}"))
        await wait_for(
            lambda: all(s.presence.hub_link_state is HubLinkState.REGISTERED for s, _ in servers)
        )
        yield hub, servers


async def test_broadcast_direct_and_kick_cross_servers_exactly_once() -> None:
    async with cluster() as (hub, [(a, url_a), (_, url_b)]):
        ann = await Client.connect(f"{url_a}/ws?user=ann&channels=lobby")
        bob = await Client.connect(f"{url_b}/ws?user=bob&channels=lobby")
        bob2 = await Client.connect(f"{url_b}/ws?user=bob&session=bob-2")
        await wait_for(
            lambda: {m.session_id for m in hub.hub.members()} >= {"ann-s", "bob-s", "bob-2"}
        )

        a.broadcast("/ws", "lobby", {"type": "chat", "payload": "hi"})
        expected = {"type": "chat", "ns": "/ws", "payload": "hi"}
        assert await ann.recv_json() == expected
        assert await bob.recv_json() == expected
        assert await bob2.recv_json() == expected
        assert await ann.silent()  # no echo back from the hub
        assert await bob.silent()

        a.direct_to_user("bob", {"type": "dm"})
        assert await bob.recv_json() == {"type": "dm"}
        assert await bob2.recv_json() == {"type": "dm"}
        assert await ann.silent()

        a.kick("bob-2", "moving you", requeue=True)
        assert await bob2.closed() == (4503, "moving you")
        await wait_for(lambda: "bob-2" not in {m.session_id for m in hub.hub.members()})
        for client in (ann, bob):
            await client.close()


async def test_the_hub_lists_its_presence_to_token_holders() -> None:
    async with cluster() as (hub, [(_, url_a), _]):
        ann = await Client.connect(f"{url_a}/ws?user=ann")
        await wait_for(lambda: len(hub.hub.members()) == 1)
        assert hub.port is not None
        async with await anyio.connect_tcp("127.0.0.1", hub.port) as stream:
            await stream.send(
                f"GET /presence HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            )
            data = b""
            with anyio.fail_after(5):
                while not data.endswith(b"}"):
                    data += await stream.receive()
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        # The bridges' channels are interests (REGISTER channels), never members.
        assert {(m["bridgeId"], m["sessionId"]) for m in body["members"]} == {("A", "ann-s")}
        assert await http_status(hub.port, b"GET /presence HTTP/1.1\r\nHost: x\r\n\r\n") == (
            b"HTTP/1.1 401 Unauthorized"
        )
        await ann.close()


async def test_a_bad_token_is_refused_with_401_and_the_link_stops() -> None:
    async with HubServer(HubConfig(hub_id="h1", tokens=[TOKEN])) as hub:
        hub_port = await hub.listen()
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(
                f"ws://127.0.0.1:{hub_port}/", additional_headers={"Authorization": "Bearer wrong"}
            )
        assert refused.value.response.status_code == 401
        async with bridge(hub_port, "A", token="wrong") as server:
            await wait_for(lambda: server.presence.hub_link_state is HubLinkState.CLOSED)
        assert hub.hub.members() == []


async def run_hub(
    hub: HubServer,
    stop: anyio.Event,
    done: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``hub`` in its own task until ``stop`` is set, then drain it."""
    async with hub:
        task_status.started(await hub.listen())
        await stop.wait()
    done.set()


async def test_hub_drain_closes_with_4503_and_bridges_come_back_to_a_new_hub() -> None:
    hub = HubServer(HubConfig(hub_id="h1", tokens=[TOKEN]), limits=SocketLimits(close_timeout=1))
    stop, done = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        hub_port = await tg.start(run_hub, hub, stop, done)
        async with bridge(hub_port, "A") as a:
            a_url = f"ws://127.0.0.1:{await a.listen()}"
            ann = await Client.connect(f"{a_url}/ws?user=ann")
            await wait_for(lambda: len(hub.hub.members()) == 1)
            lost: list[int | None] = []
            hub_link = a._hub
            assert hub_link is not None
            original = hub_link._dispatch

            def spy(event: object) -> None:
                if isinstance(event, HubLost):
                    lost.append(event.code)
                original(event)  # type: ignore[arg-type]

            hub_link._dispatch = spy
            stop.set()  # the hub drains and goes away
            await wait_for(lambda: bool(lost))
            assert lost[0] == 4503
            await done.wait()
            async with HubServer(HubConfig(hub_id="h2", tokens=[TOKEN])) as hub2:
                assert await hub2.listen(port=hub_port) == hub_port
                await wait_for(lambda: {m.session_id for m in hub2.hub.members()} == {"ann-s"})
                assert await ann.silent(0.05)  # the client socket stayed open throughout
                await ann.close()
