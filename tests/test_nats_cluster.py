"""Two PresenceServers over a real nats-server (asyncio backend only, as nats-py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from megapresence_anyio import PresenceServer
from megapresence_core import (
    ClusterConfig,
    LocalUsageError,
    PresenceConfig,
)
from megapresence_nats import ClusterUnavailableError, NatsCluster

from .servers import Server, free_port
from .socket_helpers import Client, query_login, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def quick_cluster(name: str) -> ClusterConfig:
    """Instance ``name`` of app "t", with a new epoch, that a peer misses within a second."""
    return ClusterConfig(
        app="t",
        instance_id=name,
        epoch=time.time_ns() // 1_000_000,
        heartbeat_interval=0.3,
        ttl=1.0,
    )


def instance(port: int, name: str) -> PresenceServer:
    config = quick_cluster(name)
    cluster = NatsCluster(f"nats://127.0.0.1:{port}", reconnect_wait=0.1)
    # A kicked or closed session leaves at once (the core's tests cover the grace).
    presence = PresenceConfig(cluster=config, leave_grace=0)
    return PresenceServer(query_login, paths=None, presence=presence, cluster=cluster)


@asynccontextmanager
async def two(port: int) -> AsyncIterator[list[tuple[PresenceServer, str]]]:
    async with AsyncExitStack() as stack:
        servers = []
        for name in ("A", "B"):
            server = await stack.enter_async_context(instance(port, name))
            servers.append((server, f"ws://127.0.0.1:{await server.listen()}"))
        yield servers


def names(server: PresenceServer) -> set[str]:
    return {m.user_id for m in server.roster("/ws")}


async def test_fan_out_and_roster_across_instances(nats_server: Server) -> None:
    async with two(nats_server.port) as [(a, url_a), (b, url_b)]:
        ann = await Client.connect(f"{url_a}/ws?user=ann")
        bob = await Client.connect(f"{url_b}/ws?user=bob")
        await wait_for(lambda: names(a) == names(b) == {"ann", "bob"})
        a.broadcast("/ws", "c", {"type": "hi"})
        assert await ann.recv_json() == {"type": "hi", "ns": "/ws"}
        assert await bob.recv_json() == {"type": "hi", "ns": "/ws"}
        assert await ann.silent()  # never the sender's echo
        b.direct_to_user("ann", {"type": "dm"})
        assert await ann.recv_json() == {"type": "dm"}
        a.kick("bob-s", "over there", requeue=True)
        assert await bob.closed() == (4503, "over there")
        await wait_for(lambda: names(a) == names(b) == {"ann"})
        await ann.close()


async def test_a_nats_restart_is_a_gap_that_heals(nats_server: Server) -> None:
    async with two(nats_server.port) as [(a, url_a), (b, url_b)]:
        ann = await Client.connect(f"{url_a}/ws?user=ann")
        await wait_for(lambda: names(b) == {"ann"})
        nats_server.kill()
        cid = await Client.connect(f"{url_a}/ws?user=cid")  # joins during the outage
        await ann.close()  # leaves during the outage
        await anyio.sleep(0.5)
        assert names(b) == {"ann"}  # stale, not gone, while nobody can hear
        nats_server.start()
        await wait_for(lambda: names(b) == {"cid"}, timeout=15)
        bob = await Client.connect(f"{url_b}/ws?user=bob")
        await wait_for(lambda: names(a) == {"cid", "bob"})
        a.broadcast("/ws", "c", {"type": "back"})
        assert await bob.recv_json() == {"type": "back", "ns": "/ws"}
        await cid.close()
        await bob.close()


async def test_a_silent_instance_is_swept_within_the_ttl(nats_server: Server) -> None:
    async with instance(nats_server.port, "A") as a, instance(nats_server.port, "B") as b:
        url_b = f"ws://127.0.0.1:{await b.listen()}"
        bob = await Client.connect(f"{url_b}/ws?user=bob")
        await wait_for(lambda: names(a) == {"bob"})
        cluster = b._backends.cluster
        assert cluster is not None
        cluster.publish = lambda subject, data: None  # type: ignore[method-assign]
        # Swept by the real NATS path (the TTL's exact bound, "after the TTL and not
        # before", is tested on a fake clock in test_cluster.py).
        await wait_for(lambda: names(a) == set(), timeout=5)
        await bob.close()


async def test_unreachable_nats_fails_fast_with_the_url_redacted() -> None:
    config = ClusterConfig(app="t", instance_id="i", epoch=1)
    cluster = NatsCluster(f"nats://me:s3cret@127.0.0.1:{free_port()}", connect_timeout=1)
    server = PresenceServer(query_login, presence=PresenceConfig(cluster=config), cluster=cluster)
    with pytest.raises(ClusterUnavailableError, match=r"nats://me:\*\*\*@127\.0\.0\.1") as info:
        async with server:
            pass
    assert "s3cret" not in str(info.value)


def test_the_trio_backend_is_refused_clearly() -> None:
    config = ClusterConfig(app="t", instance_id="i", epoch=1)
    server = PresenceServer(
        query_login,
        presence=PresenceConfig(cluster=config),
        cluster=NatsCluster("nats://127.0.0.1:1"),
    )

    async def main() -> None:
        async with server:
            pass

    with pytest.raises(LocalUsageError, match="needs the asyncio backend"):
        anyio.run(main, backend="trio")


def test_server_refuses_a_cluster_config_without_a_backend() -> None:
    config = ClusterConfig(app="t", instance_id="i", epoch=1)
    with pytest.raises(LocalUsageError, match="give a cluster backend"):
        PresenceServer(query_login, presence=PresenceConfig(cluster=config))
