"""The hub as a real server with two PresenceServers linked to it, on asyncio and trio."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from websockets.exceptions import InvalidStatus

from megapresence_anyio import HubServer, PresenceServer, SocketLimits, handle_command
from megapresence_core import (
    Event,
    HubConfig,
    HubLinkConfig,
    LocalUsageError,
    PresenceConfig,
)
from megapresence_core._values import MAX_JSON_DEPTH
from megapresence_core.config import DEFAULT_MAX_MESSAGE_BYTES
from megapresence_core.events import BridgeFrameReceived, HubConnected, HubLost
from megapresence_core.lifecycle import HubLinkState

from .hostile import BAD_HUB_ANSWERS, FakeHub
from .socket_helpers import (
    Client,
    RawClient,
    http_status,
    query_login,
    upgrade_answer,
    wait_for,
)
from .test_live_sockets import Watcher

pytestmark = pytest.mark.anyio

TOKEN = "hub-secret"


def bridge(
    hub_port: int,
    bridge_id: str,
    token: str = TOKEN,
    capabilities: tuple[str, ...] = HubLinkConfig.__attrs_attrs__.capabilities.default,
    **options: Any,
) -> PresenceServer:
    link = HubLinkConfig(
        bridge_id=bridge_id,
        instance_id=f"{bridge_id}-1",
        channels=["lobby"],
        backoff_initial=0.05,
        backoff_max=0.2,
        capabilities=capabilities,
    )
    return PresenceServer(
        query_login,
        paths=None,
        # A kicked or closed session leaves at once (the core's tests cover the grace).
        presence=PresenceConfig(hub_link=link, leave_grace=0),
        hub_url=f"ws://127.0.0.1:{hub_port}/any/path",
        hub_token=token,
        **options,
    )


def count_link_events(server: PresenceServer) -> Counter[str]:
    """Counts the hub link's HubConnected and HubLost events from now on."""
    seen: Counter[str] = Counter()
    link = server._hub
    assert link is not None
    original = link._dispatch

    def spy(event: Event) -> None:
        if isinstance(event, HubConnected | HubLost):
            seen[type(event).__name__] += 1
        original(event)

    link._dispatch = spy
    return seen


@asynccontextmanager
async def cluster(
    hub_config: HubConfig | None = None, **options: Any
) -> AsyncIterator[tuple[HubServer, list[tuple[PresenceServer, str]]]]:
    async with AsyncExitStack() as stack:
        config = hub_config or HubConfig(hub_id="h1", tokens=[TOKEN])
        hub = await stack.enter_async_context(HubServer(config))
        hub_port = await hub.listen()
        servers = []
        for name in ("A", "B"):
            server = await stack.enter_async_context(bridge(hub_port, name, **options))
            servers.append((server, f"ws://127.0.0.1:{await server.listen()}"))
        await wait_for(
            lambda: all(s.presence.hub_link_state is HubLinkState.REGISTERED for s, _ in servers)
        )
        assert not hub._host.readers  # the hub's bridges keep their tasks (paused by flow)
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
        assert body["interests"] == {"A": ["lobby"], "B": ["lobby"]}
        assert await http_status(hub.port, b"GET /presence HTTP/1.1\r\nHost: x\r\n\r\n") == (
            b"HTTP/1.1 401 Unauthorized"
        )
        await ann.close()


async def test_a_bad_token_is_refused_with_401_and_the_link_stops_for_good() -> None:
    async with HubServer(HubConfig(hub_id="h1", tokens=[TOKEN])) as hub:
        hub_port = await hub.listen()
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(
                f"ws://127.0.0.1:{hub_port}/", additional_headers={"Authorization": "Bearer wrong"}
            )
        assert refused.value.response.status_code == 401
        async with bridge(hub_port, "A", token="wrong") as server:
            await wait_for(lambda: server.presence.hub_link_state is HubLinkState.REFUSED)
            readiness = server.readiness()
            assert not readiness.ready
            assert readiness.checks["hub"] == "refused"
            metrics = server._health.metrics()
            [state] = [m for m in metrics if m.name == "megapresence_hub_link_state"]
            assert (("refused",), 1.0) in state.samples
        assert hub.hub.members() == []


async def test_an_old_bridge_over_the_rate_is_paused_not_struck() -> None:
    """A version 1 bridge that knows nothing of REGISTERED's limits sends 2,000 JOINs as
    fast as it can: the hub stops reading it for a while (TCP slows it down), never
    strikes it, and lists every session."""
    config = HubConfig(hub_id="h1", tokens=[TOKEN], max_frames_per_second=1_000, frame_burst=100)
    async with HubServer(config) as hub:
        hub_port = await hub.listen()
        old = await Client.connect(
            f"ws://127.0.0.1:{hub_port}/", additional_headers={"Authorization": f"Bearer {TOKEN}"}
        )
        register = {"bridgeId": "old", "instanceId": "i", "protocol": 1}
        await old.send(json.dumps({"type": "REGISTER", "payload": register}))
        registered = await old.recv_json()
        assert registered["payload"]["maxFramesPerSecond"] == 1_000

        def joins() -> None:
            for n in range(2_000):
                join = {"userId": "u", "sessionId": f"s{n}", "channels": ["lobby"]}
                old.ws.send(json.dumps({"type": "JOIN", "payload": join}))

        started = anyio.current_time()
        await anyio.to_thread.run_sync(joins)
        await wait_for(lambda: len(hub.hub.members()) == 2_000, timeout=20)
        assert anyio.current_time() - started >= 1.5  # (2,000 - 100) frames at 1,000/s
        assert hub._pauses > 0
        assert await old.silent()  # no ERROR, no close
        metrics = "\n".join(m.name for m in hub._metrics())
        assert "megapresence_hub_bridge_pauses" in metrics
        await old.close()


async def test_a_refusal_of_one_session_closes_that_client_and_keeps_the_link() -> None:
    """The hub allows one channel per session; a client joining two is refused by the
    hub (an ERROR naming its session): its server closes it with 1008, and the link and
    the other client go on."""
    config = HubConfig(hub_id="h1", tokens=[TOKEN], max_channels_per_session=1, max_errors=1)
    async with HubServer(config) as hub:
        hub_port = await hub.listen()
        async with bridge(hub_port, "A") as a:
            a_url = f"ws://127.0.0.1:{await a.listen()}"
            await wait_for(lambda: a.presence.hub_link_state is HubLinkState.REGISTERED)
            bob = await Client.connect(f"{a_url}/ws?user=bob&channels=x")
            await wait_for(lambda: len(hub.hub.members()) == 1)
            for _ in range(3):  # more than max_errors: none of them is a strike
                ann = await Client.connect(f"{a_url}/ws?user=ann&channels=x,y")
                assert await ann.closed() == (1008, "refused by the hub: too_many_channels")
            assert a.presence.hub_link_state is HubLinkState.REGISTERED
            assert {m.session_id for m in hub.hub.members()} == {"bob-s"}
            assert await bob.silent(0.05)
            await bob.close()


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


# ------------------------------------------------------------ the link holds


async def test_a_healthy_link_outlives_many_handshake_timeouts_with_traffic_both_ways() -> None:
    timeout = 0.2  # the upgrade's bound, not the link's
    hub_config = HubConfig(
        hub_id="h1", tokens=[TOKEN], heartbeat_interval=0.1
    )  # dead after 0.3 s silent
    limits = SocketLimits(handshake_timeout=timeout)
    async with cluster(hub_config, limits=limits) as (_, [(a, url_a), (b, url_b)]):
        counts = [count_link_events(a), count_link_events(b)]
        ann = await Client.connect(f"{url_a}/ws?user=ann&channels=lobby")
        bob = await Client.connect(f"{url_b}/ws?user=bob&channels=lobby")
        start = anyio.current_time()
        sent = 0
        while anyio.current_time() - start < 4 * timeout:
            a.broadcast("/ws", "lobby", {"type": "n", "payload": sent})  # ann here, bob via the hub
            b.broadcast("/ws", "lobby", {"type": "n", "payload": sent + 1})  # and the other way
            for client in (ann, bob):
                got = {(await client.recv_json())["payload"] for _ in range(2)}
                assert got == {sent, sent + 1}
            sent += 2
            await anyio.sleep(timeout / 4)
        assert counts == [Counter(), Counter()]  # no HubLost, and so no reconnect
        assert a.presence.hub_link_state is b.presence.hub_link_state is HubLinkState.REGISTERED
        for client in (ann, bob):
            await client.close()


# --------------------------------------------------- a hub address that lies


async def test_an_address_answering_garbage_costs_retries_never_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeHub().running() as fake:
        async with bridge(fake.port, "A") as server:
            url = f"ws://127.0.0.1:{await server.listen()}"
            lost = count_link_events(server)
            await wait_for(lambda: fake.seen >= 2 * len(BAD_HUB_ANSWERS), timeout=30)
            assert lost["HubLost"] >= 2 * len(BAD_HUB_ANSWERS) - 1
            ann = await Client.connect(f"{url}/ws?user=ann")  # still serving
            await ann.close()
    reasons = " ".join(r.getMessage() for r in caplog.records if "hub.link.lost" in r.getMessage())
    assert "bad response" in reasons
    assert "Traceback" not in caplog.text


# ------------------------------------------------------ limits as one chain


def relay(client: Any, text: str) -> None:
    """The sender's text, broadcast as the payload of a message of type "m"."""
    client._server.broadcast(client.ns, "lobby", {"type": "m", "payload": text})


#: The core counts a message as its JSON ``{"type", "payload"}``, in bytes. This
#: is the longest text whose message the core takes.
LARGEST_TEXT = DEFAULT_MAX_MESSAGE_BYTES - len('{"type":"m","payload":""}')


async def test_the_largest_legal_message_crosses_every_hop_one_byte_more_stops_at_the_core() -> (
    None
):
    """The chain, with default limits everywhere:

    client -> server socket: SocketLimits.max_message_bytes (64 KiB of UTF-8), else 1009;
    server -> core: Limits.max_message_bytes (64 KiB of the message's JSON), else the core
      refuses it (LocalUsageError, hinting 1009) and the sender is closed with 1009,
      nothing delivered;
    core -> hub frame -> bridge link -> hub: Limits.max_hub_frame_bytes and
      HubConfig.max_frame_bytes (80 KiB each) carry any message the core took;
    hub -> other bridge: the same 80 KiB; other bridge -> its clients: no limit of ours.
    """
    async with cluster(on_message=relay) as (hub, [(a, url_a), (b, url_b)]):
        counts = [count_link_events(a), count_link_events(b)]
        sender = await Client.connect(f"{url_a}/ws?user=sender")
        here = await Client.connect(f"{url_a}/ws?user=here&channels=lobby")
        there = await Client.connect(f"{url_b}/ws?user=there&channels=lobby", max_size=None)
        # sender, here, there: the bridges' channels are interests, not members
        await wait_for(lambda: len(hub.hub.members()) == 3)

        largest = "x" * LARGEST_TEXT
        await sender.send(largest)
        for receiver in (here, there):
            assert (await receiver.recv_json())["payload"] == largest

        await sender.send(largest + "x")  # one byte more: the core refuses the broadcast
        assert (await sender.closed())[0] == 1009  # the core's hint: message too big
        assert await here.silent()
        assert await there.silent()

        over_socket = await Client.connect(f"{url_a}/ws?user=big")
        await over_socket.send("x" * (64 * 1024 + 1))  # past the socket: 1009, before the core
        assert (await over_socket.closed())[0] == 1009
        wide = await Client.connect(f"{url_a}/ws?user=wide")
        await wide.send("\U0001d11e" * 65_536)  # 64 Ki characters, 256 KiB of UTF-8
        assert (await wide.closed())[0] == 1009

        assert counts == [Counter(), Counter()]  # no link was lost on the way
        for client in (here, there):
            await client.close()


async def test_a_broadcast_whose_hub_frame_would_not_fit_is_refused_by_the_core() -> None:
    """A message the core takes, with routing that makes its hub frame too big."""
    refused: LocalUsageError | None = None
    async with cluster() as (hub, [(a, url_a), (b, _)]):
        counts = [count_link_events(a), count_link_events(b)]
        here = await Client.connect(f"{url_a}/ws?user=here&channels=lobby")
        await wait_for(lambda: len(hub.hub.members()) == 1)  # here: interests are not members
        excepted = [f"s-{i:06}" for i in range(4_000)]  # 40 KB of routing
        try:
            a.broadcast("/ws", "lobby", {"type": "m", "payload": "x" * 60_000}, excepted)
        except LocalUsageError as exc:
            refused = exc
        delivered = not await here.silent()
        lost = [dict(count) for count in counts]  # before the servers stop and drop their links
        await here.close()
    # Asserted outside the servers' task groups, so a failure reads plainly.
    assert refused is not None
    assert "max_hub_frame_bytes" in str(refused)
    assert not delivered
    assert lost == [{}, {}]


async def test_bridge_links_over_the_hub_cap_get_503_and_retry() -> None:
    limits = SocketLimits(max_connections=1)
    async with HubServer(HubConfig(hub_id="h1", tokens=[TOKEN]), limits=limits) as hub:
        hub_port = await hub.listen()
        async with bridge(hub_port, "A") as a:
            await wait_for(lambda: a.presence.hub_link_state is HubLinkState.REGISTERED)
            status = await upgrade_answer(hub_port, f"Authorization: Bearer {TOKEN}\r\n")
            assert status.startswith(b"HTTP/1.1 503")
            async with bridge(hub_port, "B") as b:
                lost = count_link_events(b)
                await wait_for(lambda: lost["HubLost"] >= 2)  # refused, and retrying
                assert b.presence.hub_link_state is not HubLinkState.CLOSED


def nested(depth: int) -> Any:
    """A value ``depth`` objects and arrays deep (an object outermost when depth is odd)."""
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


async def test_the_deepest_legal_value_crosses_every_hop_one_level_more_stops_at_the_sender() -> (
    None
):
    """Nesting is a chain like size: a command nests at most MAX_JSON_DEPTH deep (its
    metadata or payload one less), and the hub frame, the other bridge and the watcher's
    snapshot wrap it in their envelopes and still carry it. 970 levels once reached the
    hub, failed to re-encode there and cost the sender's bridge its link for good."""
    deepest = MAX_JSON_DEPTH - 1  # inside the command object
    async with cluster(on_message=handle_command) as (_, [(a, url_a), (b, url_b)]):
        counts = [count_link_events(a), count_link_events(b)]
        watcher = await Watcher.connect(f"{url_b}/ws?user=wat", view="sessions")
        await watcher.command(op="subscribe", channel="room", presence="sessions")
        await watcher.until(lambda m: m["type"] == "presence.diff")  # its own join
        deep = Watcher(await Client.connect(f"{url_a}/ws?user=deep&session=d1"))
        await deep.command(op="subscribe", channel="room")
        await deep.command(op="metadata", metadata=nested(deepest))
        await deep.command(op="publish", channel="room", type="t", payload=nested(deepest))
        await watcher.until(lambda m: m["type"] == "t" and m["payload"] == nested(deepest))
        # The join and the update, coalesced or not, before or after the publish.
        while watcher.members("room").get("d1", {}).get("metadata") != nested(deepest):
            await watcher.next()

        for command in (
            {"op": "metadata", "metadata": nested(deepest + 1)},
            {"op": "publish", "channel": "room", "type": "t", "payload": nested(deepest + 1)},
        ):
            await deep.command(**command)
            error = await deep.until(lambda m: m["type"] == "error")
            assert error["payload"]["code"] == "bad_json"
            assert f"deeper than {MAX_JSON_DEPTH} levels" in error["payload"]["message"]
        assert await watcher.client.silent()
        # A new watcher's snapshot carries the deepest metadata too.
        late = Watcher(await Client.connect(f"{url_b}/ws?user=late"), view="sessions")
        await late.command(op="subscribe", channel="room", presence="sessions")
        await late.until(lambda m: m["type"] == "presence.state")
        assert late.members("room")["d1"]["metadata"] == nested(deepest)
        assert counts == [Counter(), Counter()]  # no link was lost on the way
        for client in (watcher.client, deep.client, late.client):
            await client.close()


# ------------------------------------------------------------------ batching


async def test_frames_of_one_turn_cross_the_hub_in_one_message_each_hop() -> None:
    """A's five broadcasts of one turn leave A in one message; the hub sends them on to a
    batching bridge (a raw socket here, to see the messages) in one message, in order."""
    async with HubServer(HubConfig(hub_id="h1", tokens=[TOKEN])) as hub:
        hub_port = await hub.listen()
        async with (
            bridge(hub_port, "A") as a,
            await RawClient.connect(hub_port, "/", f"Authorization: Bearer {TOKEN}\r\n") as raw,
        ):
            register = {
                "bridgeId": "R",
                "instanceId": "R",
                "protocol": 1,
                "capabilities": ["batch"],
            }
            await raw.send_frame(
                0x81, json.dumps({"type": "REGISTER", "payload": register}).encode()
            )
            _, registered = await raw.frame()
            assert json.loads(registered)["payload"]["capabilities"] == ["batch"]
            subscriber = {
                "userId": "bridge:R",
                "sessionId": "bridge:R#lobby",
                "channels": ["lobby"],
            }
            await raw.send_frame(0x81, json.dumps({"type": "JOIN", "payload": subscriber}).encode())
            await wait_for(lambda: hub.hub.interests().get("R") == ("lobby",))
            await wait_for(lambda: a.presence.hub_link_state is HubLinkState.REGISTERED)

            arrived: list[str] = []
            dispatch = hub.dispatch

            def spy(event: Any) -> None:
                if isinstance(event, BridgeFrameReceived) and event.bridge != raw_bridge:
                    arrived.append(event.data)
                dispatch(event)

            raw_bridge = hub.hub.registered_bridges()["R"]
            hub.dispatch = spy  # type: ignore[method-assign]
            for n in range(5):
                a.broadcast("/ws", "lobby", {"type": "m", "payload": n})
            _, message = await raw.frame()
            assert [text.count("\n") for text in arrived] == [4]  # one message from A
            frames = [json.loads(line) for line in message.decode().split("\n")]
            assert [f["payload"]["message"]["payload"] for f in frames] == [0, 1, 2, 3, 4]

            a.broadcast("/ws", "lobby", {"type": "m", "payload": "alone"})  # light traffic
            _, message = await raw.frame()
            assert json.loads(message)["payload"]["message"]["payload"] == "alone"


@pytest.mark.parametrize(
    ("batch_frames", "capabilities_b"),
    [(True, ("broadcast", "direct")), (False, HubLinkConfig.__attrs_attrs__.capabilities.default)],
    ids=["old-bridge-new-hub", "new-bridge-old-hub"],
)
async def test_a_peer_without_batch_still_works_both_ways(
    batch_frames: bool, capabilities_b: tuple[str, ...]
) -> None:
    config = HubConfig(hub_id="h1", tokens=[TOKEN], batch_frames=batch_frames)
    async with HubServer(config) as hub:
        hub_port = await hub.listen()
        async with (
            bridge(hub_port, "A") as a,
            bridge(hub_port, "B", capabilities=capabilities_b) as b,
        ):
            url_a = f"ws://127.0.0.1:{await a.listen()}"
            url_b = f"ws://127.0.0.1:{await b.listen()}"
            await wait_for(
                lambda: all(s.presence.hub_link_state is HubLinkState.REGISTERED for s in (a, b))
            )
            ann = await Client.connect(f"{url_a}/ws?user=ann&channels=lobby")
            bob = await Client.connect(f"{url_b}/ws?user=bob&channels=lobby")
            await wait_for(lambda: len(hub.hub.members()) == 2)
            for sender, n in ((a, 0), (b, 1), (a, 2), (a, 3), (b, 4), (b, 5)):
                sender.broadcast("/ws", "lobby", {"type": "m", "payload": n})
            got_ann = [(await ann.recv_json())["payload"] for _ in range(6)]
            got_bob = [(await bob.recv_json())["payload"] for _ in range(6)]
            # Each sees its own server's at once and the other's through the hub, in order.
            for got in (got_ann, got_bob):
                assert sorted(got) == [0, 1, 2, 3, 4, 5]
            assert [n for n in got_bob if n in (0, 2, 3)] == [0, 2, 3]
            assert [n for n in got_ann if n in (1, 4, 5)] == [1, 4, 5]
            b.direct_to_user("ann", {"type": "dm"})
            a.direct_to_user("bob", {"type": "dm"})
            assert await ann.recv_json() == {"type": "dm"}
            assert await bob.recv_json() == {"type": "dm"}
            assert await ann.silent()
            assert await bob.silent()
            for client in (ann, bob):
                await client.close()


async def test_largest_messages_of_one_turn_cross_in_separate_batches() -> None:
    """Three of the largest legal messages and a small one in one turn: the batch bound
    (the frame limit) sends each large frame in a message of its own, all arrive, in order,
    and no link is lost."""
    async with cluster() as (hub, [(a, _), (b, url_b)]):
        counts = [count_link_events(a), count_link_events(b)]
        there = await Client.connect(f"{url_b}/ws?user=there&channels=lobby", max_size=None)
        await wait_for(lambda: len(hub.hub.members()) == 1)
        largest = "x" * LARGEST_TEXT
        for text in (largest, "small", largest, largest):
            a.broadcast("/ws", "lobby", {"type": "m", "payload": text})
        got = [(await there.recv_json())["payload"] for _ in range(4)]
        assert got == [largest, "small", largest, largest]
        assert counts == [Counter(), Counter()]
        await there.close()
