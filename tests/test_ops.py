"""Operating a server: ``/metrics`` during traffic, its access rule, ``/healthz``, ``/readyz``,
``on_link_state``, and a boundary for every background task (faults injected)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio
import anyio.abc
import pytest

import megapresence_anyio._host as host_module
from megapresence_anyio import HubServer, MetricsAccess, PresenceServer, SocketLimits
from megapresence_anyio._transport import StreamTransport
from megapresence_core import (
    ClusterConfig,
    HubConfig,
    HubLinkConfig,
    PresenceConfig,
    StoreConfig,
    Tick,
)
from megapresence_core.events import HubLost
from megapresence_nats import NatsCluster
from megapresence_redis import RedisRoster

from .process_helpers import TOKEN
from .servers import Server
from .socket_helpers import Client, http_exchange, query_login, upgrade_answer, wait_for

pytestmark = pytest.mark.anyio

#: A ticker that ticks every 50 ms, so faults in ticks show at once.
FAST = SocketLimits(ping_interval=0.2, ping_timeout=0.2, close_timeout=0.2)


async def http_get(port: int, path: str, headers: str = "") -> tuple[int, str]:
    """One GET over a raw socket; (status, body) once the server closes."""
    status, _, body = await http_exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
    return int(status.split()[1]), body.decode()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from Prometheus' text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


async def test_metrics_scraped_during_traffic_match_what_was_done(anyio_backend: str) -> None:
    no_grace = PresenceConfig(leave_grace=0)  # a closed session leaves the roster at once
    async with PresenceServer(query_login, presence=no_grace) as server:
        port = await server.listen()
        url = f"ws://127.0.0.1:{port}/ws/chat"
        clients = [await Client.connect(f"{url}?user=u{i}&channels=lobby") for i in range(5)]
        await wait_for(lambda: len(server.roster("/ws/chat")) == 5)
        assert (await upgrade_answer(port, path="/ws/chat?user=refused")).startswith(
            b"HTTP/1.1 401"
        )
        assert (await http_get(port, "/favicon.ico"))[0] == 404
        message = {"type": "news", "payload": "x" * 50}
        text = {"type": "news", "ns": "/ws/chat", "payload": "x" * 50}
        frame_bytes = 2 + len(json.dumps(text, separators=(",", ":")))  # a header, the text
        scrapes = []
        for _ in range(7):  # scrape between broadcasts, as Prometheus would during traffic
            server.broadcast("/ws/chat", "lobby", message)
            scrapes.append(samples((await http_get(port, "/metrics"))[1]))
        for client in clients:
            for _ in range(7):
                assert json.loads(await client.recv())["type"] == "news"
        await clients[0].send("x" * 70_000)  # over the socket limit: 1009
        assert (await clients[0].closed())[0] == 1009
        await clients[1].close()  # a normal close by the client
        await wait_for(lambda: len(server.roster("/ws/chat")) == 3)
        final = samples((await http_get(port, "/metrics"))[1])

        assert [s["megapresence_deliveries_total"] for s in scrapes] == [5, 10, 15, 20, 25, 30, 35]
        assert final["megapresence_deliveries_total"] == 35
        assert final["megapresence_delivered_bytes_total"] == 35 * frame_bytes
        assert final["megapresence_connections"] == 3
        assert final["megapresence_sessions"] == 3
        assert final['megapresence_refusals_total{status="401"}'] == 1
        assert final['megapresence_refusals_total{status="404"}'] == 1
        assert final['megapresence_closes_total{by="server",code="1009"}'] == 1
        assert final['megapresence_closes_total{by="client",code="1000"}'] == 1
        assert final["megapresence_slow_consumer_closes_total"] == 0
        assert final["megapresence_send_queue_bytes"] == 0
        assert final["megapresence_ready"] == 1
        for client in clients[2:]:
            await client.close()


async def test_metrics_are_for_the_allowed_addresses_or_the_token(anyio_backend: str) -> None:
    access = MetricsAccess(token="s3cret", allow=["10.0.0.0/8"])
    async with PresenceServer(query_login, metrics_access=access) as server:
        port = await server.listen()
        assert (await http_get(port, "/metrics"))[0] == 403  # loopback is not in the list
        assert (await http_get(port, "/metrics", "Authorization: Bearer nope\r\n"))[0] == 403
        status, text = await http_get(port, "/metrics", "Authorization: Bearer s3cret\r\n")
        assert status == 200
        assert "megapresence_connections 0.0" in text
        assert (await http_get(port, "/healthz")) == (200, "ok\n")  # health needs no token


async def test_a_metrics_port_answers_the_three_paths_and_nothing_else(anyio_backend: str) -> None:
    async with PresenceServer(query_login) as server:
        main = await server.listen()
        assert (await http_get(main, "/healthz")) == (200, "ok\n")  # on the main port until
        port = await server.listen_metrics()
        assert (await http_get(port, "/metrics"))[0] == 200
        assert (await http_get(port, "/healthz")) == (200, "ok\n")
        status, body = await http_get(port, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True, "checks": {"server": "running"}})
        assert (await upgrade_answer(port, path="/ws/chat?user=ann")).startswith(b"HTTP/1.1 404")
        # "instead of the main one" (serve --help): the main port answers them no more,
        # nor does the ASGI app, which leaves them to the app it wraps.
        for path in ("/metrics", "/healthz", "/readyz"):
            assert (await http_get(main, path))[0] == 404, path
            assert not server.answers_http(path)
        assert server.answers_http("/megapresence.js")


async def test_a_hub_s_metrics_port_takes_the_three_paths_off_its_main_port(
    anyio_backend: str,
) -> None:
    async with HubServer(HubConfig(hub_id="h", tokens=[TOKEN])) as hub:
        main = await hub.listen()
        assert (await http_get(main, "/healthz")) == (200, "ok\n")
        port = await hub.listen_metrics()
        for path in ("/metrics", "/healthz", "/readyz"):
            assert (await http_get(port, path))[0] == 200, path
            assert (await http_get(main, path))[0] == 404, path


async def test_without_prometheus_client_metrics_say_what_to_install(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    async with PresenceServer(query_login) as server:
        port = await server.listen()
        status, body = await http_get(port, "/metrics")
        assert (status, body) == (
            501,
            "metrics need prometheus_client: pip install 'megapresence[metrics]'\n",
        )
        client = await Client.connect(f"ws://127.0.0.1:{port}/ws/chat?user=ann")
        await client.close()  # and the server serves on


async def test_readyz_and_on_link_state_follow_the_hub_link(anyio_backend: str) -> None:
    seen: list[tuple[str, str]] = []
    config = PresenceConfig(
        hub_link=HubLinkConfig(
            bridge_id="b", instance_id="i", backoff_initial=0.02, backoff_max=0.05
        )
    )
    async with HubServer(HubConfig(hub_id="h", tokens=[TOKEN])) as hub:
        hub_port = await hub.listen()
        server = PresenceServer(
            query_login,
            presence=config,
            hub_url=f"ws://127.0.0.1:{hub_port}/",
            hub_token=TOKEN,
            on_link_state=lambda link, state: seen.append((link, state)),
        )
        async with server:
            port = await server.listen()
            await wait_for(lambda: ("hub", "registered") in seen)
            status, body = await http_get(port, "/readyz")
            assert (status, json.loads(body)["checks"]["hub"]) == (200, "registered")
            await hub.drain()  # the hub goes: 4503, and the link backs off
            await wait_for(lambda: seen[-1][1] != "registered")
            status, body = await http_get(port, "/readyz")
            assert status == 503
            assert json.loads(body)["checks"]["hub"] != "registered"
    assert seen[0] == ("hub", "connecting")
    assert [state for _, state in seen].count("registered") == 1


async def test_a_failing_on_link_state_hook_is_logged_and_changes_nothing(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(link: str, state: str) -> None:
        raise RuntimeError("hook bug")

    config = PresenceConfig(hub_link=HubLinkConfig(bridge_id="b", instance_id="i"))
    server = PresenceServer(
        query_login,
        presence=config,
        hub_url="ws://127.0.0.1:1/",
        hub_token="t",
        on_link_state=broken,
    )
    async with server:
        await server.listen()
        assert "the on_link_state hook failed: RuntimeError: hook bug" in caplog.text
        assert server.link_states()["hub"] in ("connecting", "backing_off")


# ----------------------------------------------------------- injected faults


def failing_on(kind: type, handle: Any) -> Any:
    def handle_or_fail(event: Any) -> Any:
        if isinstance(event, kind):
            raise RuntimeError(f"injected fault in {kind.__name__}")
        return handle(event)

    return handle_or_fail


async def test_a_fault_in_a_tick_is_logged_the_process_serves_on_and_readyz_says_so(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PresenceServer(query_login, limits=FAST) as server:
        port = await server.listen()
        handle = server.presence.handle
        monkeypatch.setattr(server.presence, "handle", failing_on(Tick, handle))
        await wait_for(lambda: server.stats.faults["ticker"] >= 2)
        assert "a tick failed (the ticker goes on): RuntimeError: injected fault in Tick" in (
            caplog.text
        )
        assert "Traceback" in caplog.text
        assert caplog.text.count("a tick failed") == 1  # once per failing stretch
        status, body = await http_get(port, "/readyz")
        assert (status, json.loads(body)["checks"]["ticker"]) == (503, "failing")
        ann = await Client.connect(f"ws://127.0.0.1:{port}/ws/chat?user=ann")
        server.broadcast("/ws/chat", "lobby", {"type": "still"})
        assert json.loads(await ann.recv())["type"] == "still"
        monkeypatch.setattr(server.presence, "handle", handle)
        await wait_for(lambda: not server.readiness().checks.get("ticker"))
        assert server.readiness().ready
        await ann.close()


async def test_a_fault_handling_the_hub_link_s_loss_makes_it_not_ready(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PresenceConfig(hub_link=HubLinkConfig(bridge_id="b", instance_id="i"))
    server = PresenceServer(
        query_login, presence=config, hub_url="ws://127.0.0.1:1/", hub_token="t"
    )
    monkeypatch.setattr(server.presence, "handle", failing_on(HubLost, server.presence.handle))
    async with server:
        port = await server.listen()
        await wait_for(lambda: server.link_states()["hub"] == "faulted")
        assert "the hub link's loss could not be handled" in caplog.text
        status, body = await http_get(port, "/readyz")
        assert (status, json.loads(body)["checks"]["hub"]) == (503, "faulted")
        ann = await Client.connect(f"ws://127.0.0.1:{port}/ws/chat?user=ann")  # still serving
        await ann.close()


class StreamThatFailsToClose(anyio.abc.ByteStream):
    """A stream accepted by a framework whose ``aclose`` has a bug."""

    def __init__(self) -> None:
        self.closed = anyio.Event()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed.set()
        raise RuntimeError("injected fault in aclose")


async def test_a_fault_in_a_stream_s_background_close_is_logged_and_the_server_serves_on(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with PresenceServer(query_login) as server:
        port = await server.listen()
        stream = StreamThatFailsToClose()
        await server.handle_stream(stream)
        await stream.closed.wait()
        name = StreamTransport._aclose.__qualname__
        await wait_for(lambda: server.stats.faults[name] == 1)
        assert f"background task {name} failed: RuntimeError: injected fault in aclose" in (
            caplog.text
        )
        assert server.readiness().ready  # one connection's close: not a service
        ann = await Client.connect(f"ws://127.0.0.1:{port}/ws/chat?user=ann")
        await ann.close()


async def test_a_listener_that_fails_makes_the_server_not_ready(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_accept(sock: Any, on_accept: Any, *rest: Any) -> None:
        sock.close()  # as accept_forever does on its way out
        raise OSError("injected fault in the accept loop")

    async with PresenceServer(query_login) as server:
        port = await server.listen_metrics()
        monkeypatch.setattr(host_module, "accept_forever", broken_accept)
        await server.listen()
        await wait_for(lambda: "listener" in server.readiness().checks)
        with caplog.at_level(logging.ERROR):
            assert "background task listener failed (not ready from now on)" in caplog.text
        status, body = await http_get(port, "/readyz")
        assert (status, json.loads(body)["checks"]["listener"]) == (503, "failed")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # nats-py and redis-py need it
async def test_readyz_follows_nats_and_redis_through_an_outage(
    nats_server: Server, redis_server: Server
) -> None:
    seen: list[tuple[str, str]] = []
    config = PresenceConfig(
        cluster=ClusterConfig(app="ops", instance_id="i", epoch=1),
        store=StoreConfig(ttl=2, refresh_interval=0.2),
    )
    server = PresenceServer(
        query_login,
        presence=config,
        cluster=NatsCluster(f"nats://127.0.0.1:{nats_server.port}", reconnect_wait=0.1),
        roster=RedisRoster(
            f"redis://127.0.0.1:{redis_server.port}/0",
            app="ops",
            instance_id="i",
            epoch=1,
            timeout=0.5,
        ),
        on_link_state=lambda link, state: seen.append((link, state)),
    )
    async with server:
        port = await server.listen()
        ann = await Client.connect(f"ws://127.0.0.1:{port}/ws/chat?user=ann&channels=lobby")
        await wait_for(lambda: server.readiness().ready)
        assert server.readiness().checks == {
            "server": "running",
            "cluster": "connected",
            "roster": "ok",
        }
        redis_server.kill()
        nats_server.kill()
        await wait_for(
            lambda: ("roster", "failing") in seen and ("cluster", "disconnected") in seen
        )
        status, body = await http_get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"] | {"server": "running"} == {
            "server": "running",
            "cluster": "disconnected",
            "roster": "failing",
        }
        metrics = samples((await http_get(port, "/metrics"))[1])
        assert metrics["megapresence_roster_errors_total"] >= 1
        assert metrics['megapresence_roster_link_state{state="failing"}'] == 1
        assert metrics['megapresence_cluster_link_state{state="disconnected"}'] == 1
        redis_server.start()
        nats_server.start()
        await wait_for(lambda: server.readiness().ready, timeout=15)
        # on_link_state hears of Redis at the next tick (it has no event of its own).
        await wait_for(lambda: dict(seen) == {"cluster": "connected", "roster": "ok"})
        await ann.close()


async def test_the_hub_answers_metrics_and_readyz_for_its_bridges(anyio_backend: str) -> None:
    async with HubServer(HubConfig(hub_id="h", tokens=[TOKEN])) as hub:
        hub_port = await hub.listen()

        def bridge(name: str) -> PresenceServer:
            config = PresenceConfig(
                hub_link=HubLinkConfig(bridge_id=name, instance_id=name, channels=["lobby"])
            )
            return PresenceServer(
                query_login, presence=config, hub_url=f"ws://127.0.0.1:{hub_port}/", hub_token=TOKEN
            )

        async with bridge("a") as a, bridge("b") as b:
            b_port = await b.listen()
            bob = await Client.connect(f"ws://127.0.0.1:{b_port}/ws/chat?user=bob&channels=lobby")
            await wait_for(lambda: a.readiness().ready and b.readiness().ready)
            # bob is the one session: the bridges' channels are interests, not members
            await wait_for(lambda: len(hub.hub.members()) == 1)
            assert hub.hub.interests() == {"a": ("lobby",), "b": ("lobby",)}
            a.broadcast("/ws/chat", "lobby", {"type": "across"})
            assert json.loads(await bob.recv())["type"] == "across"
            metrics = samples((await http_get(hub_port, "/metrics"))[1])
            assert metrics["megapresence_hub_bridges"] == 2
            assert metrics["megapresence_hub_sessions"] == 1
            assert metrics["megapresence_connections"] == 2
            assert metrics["megapresence_deliveries_total"] >= 1  # the BROADCAST routed to b
            status, body = await http_get(hub_port, "/readyz")
            assert (status, json.loads(body)["ready"]) == (200, True)
            await bob.close()
        await hub.drain()
        status, body = await http_get(hub_port, "/readyz")
        assert (status, json.loads(body)["checks"]["server"]) == (503, "stopped")
