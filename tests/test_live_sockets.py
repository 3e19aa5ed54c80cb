"""Live presence through ``PresenceServer`` over real sockets, on asyncio and trio.

Clients speak the browser protocol (``subscribe``, ``publish``, ...) through
``handle_command``; every watcher's map is built only from what it received
(``PresenceMap``, the core's model of a client) and checked against the server's
own roster of the channel.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from megapresence_anyio import (
    ChannelStats,
    PresenceMode,
    PresenceServer,
    Refusal,
    Sender,
    SocketLimits,
    handle_command,
)
from megapresence_anyio import Client as ServerClient
from megapresence_core import Limits, LocalUsageError, Member, PresenceConfig
from megapresence_core.wire import (
    PresenceDiff,
    PresenceMap,
    PresenceState,
    decode_server_message,
    session_json,
    user_json,
)

from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def live_server(**options: Any) -> AsyncIterator[tuple[PresenceServer, str]]:
    """A server that speaks the browser protocol (``handle_command``)."""
    options.setdefault("on_message", handle_command)
    async with running_server(**options) as (server, url):
        yield server, url


class Watcher:
    """A client and the maps it builds from its own presence messages, one per channel."""

    def __init__(self, client: Client, view: str = "users") -> None:
        self.client = client
        self.view = view
        self.maps: dict[str, PresenceMap] = {}
        self.versions: list[int] = []

    @classmethod
    async def connect(cls, url: str, view: str = "users") -> Watcher:
        return cls(await Client.connect(url), view)

    async def command(self, **command: Any) -> None:
        await self.client.send(json.dumps(command))

    async def next(self) -> dict[str, Any]:
        """The next message; a presence message is applied to its channel's map first."""
        message: dict[str, Any] = await self.client.recv_json()
        if message["type"] in ("presence.state", "presence.diff"):
            decoded = decode_server_message(json.dumps(message))
            assert isinstance(decoded, PresenceState | PresenceDiff)
            found = self.maps.setdefault(decoded.channel, PresenceMap(decoded.channel, self.view))
            assert found.apply(decoded), f"{message} does not follow version {found.version}"
            self.versions.append(decoded.version)
        return message

    async def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            message = await self.next()
            if wanted(message):
                return message

    async def diff(self) -> dict[str, Any]:
        return await self.until(lambda m: m["type"] == "presence.diff")

    def members(self, channel: str) -> dict[str, Any]:
        return self.maps[channel].members


def roster_view(server: PresenceServer, channel: str, view: str = "users") -> dict[str, Any]:
    """The server's roster of ``channel`` as a map of ``view`` should hold it."""
    members = server.channel_members(channel)
    if view == "sessions":
        return {m.session_id: session_json(m) for m in members}
    users: dict[str, list[Member]] = {}
    for member in members:
        users.setdefault(member.user_id, []).append(member)
    return {user: user_json(user, sessions) for user, sessions in users.items()}


async def test_a_watcher_sees_snapshot_join_update_and_leave_in_consecutive_versions() -> None:
    async with live_server() as (server, url):
        ann = await Watcher.connect(f"{url}/ws?user=ann&session=a1")
        await ann.command(op="subscribe", channel="room", presence="users")
        assert await ann.next() == {
            "type": "subscribed",
            "channel": "room",
            "presence": "users",
            "offset": 0,
            "epoch": "boot.1",
        }
        assert (await ann.next())["type"] == "presence.state"
        await ann.diff()  # ann sees herself join
        assert ann.members("room") == roster_view(server, "room")

        bob = await Watcher.connect(f"{url}/ws?user=bob&session=b1", view="sessions")
        await bob.command(op="subscribe", channel="room", presence="sessions")
        await bob.until(lambda m: m["type"] == "presence.diff")  # bob's own join
        diff = await ann.diff()
        assert list(diff["joins"]) == ["bob"]
        assert ann.members("room") == roster_view(server, "room")
        assert bob.members("room") == roster_view(server, "room", "sessions")
        assert server.presence_stats("room") == ChannelStats(sessions=2, users=2)

        await bob.command(op="metadata", metadata={"status": "away"})
        diff = await ann.diff()
        assert (diff["joins"], diff["leaves"], list(diff["updates"])) == ({}, {}, ["bob"])
        assert ann.members("room")["bob"]["sessions"][0]["metadata"] == {"status": "away"}

        await bob.client.close()
        diff = await ann.diff()
        assert list(diff["leaves"]) == ["bob"]
        assert ann.members("room") == roster_view(server, "room")
        assert ann.versions == list(range(len(ann.versions)))  # 0, 1, 2, ... never a gap
        assert server.presence_stats("room") == (1, 1)
        await ann.client.close()


async def test_the_embedding_api_subscribes_publishes_and_unsubscribes() -> None:
    async with live_server() as (server, url):
        ann = await Watcher.connect(f"{url}/ws?user=ann&session=a1")
        bob = await Watcher.connect(f"{url}/ws?user=bob&session=b1")
        cid = await Watcher.connect(f"{url}/ws?user=cid&session=c1")
        await wait_for(lambda: server.presence.connection_of("c1") is not None)
        [ann_client] = [c for c in server.clients if c.session_id == "a1"]

        assert server.subscribe(ann_client, "room", mode="count") is None
        assert server.subscribe("b1", "room") is None
        position = {"offset": 0, "epoch": "boot.1"}
        subscribed = {"type": "subscribed", "channel": "room", **position}
        assert await ann.next() == {**subscribed, "presence": "count"}
        assert await bob.next() == {**subscribed, "presence": "none"}
        count = await ann.until(lambda m: m == {**m, "type": "presence.count", "sessions": 2})
        assert count == {"type": "presence.count", "channel": "room", "sessions": 2, "users": 2}

        # Channel-scoped: the subscribers only, the sender stamped by the server.
        server.publish("room", {"type": "note", "payload": 1}, sender=ann_client)
        sent_from = {"userId": "ann", "sessionId": "a1"}
        expected = {
            "type": "note",
            "channel": "room",
            "from": sent_from,
            "offset": 1,
            "epoch": "boot.1",
            "payload": 1,
        }
        assert await ann.next() == expected
        assert await bob.next() == expected
        server.publish("room", {"type": "note"}, except_session_ids=["a1"])
        assert await bob.next() == {
            "type": "note",
            "channel": "room",
            "offset": 2,
            "epoch": "boot.1",
        }
        await bob.command(op="publish", channel="room", type="chat", payload="hi")
        got = await ann.until(lambda m: m["type"] == "chat")
        assert got["from"] == {"userId": "bob", "sessionId": "b1"}  # never the browser's word
        assert await bob.next() == got  # no excludeSelf: the sender gets it too
        assert await cid.client.silent()  # not subscribed: nothing

        server.unsubscribe("b1", "room")
        assert await bob.next() == {"type": "unsubscribed", "channel": "room"}
        assert server.presence_stats("room") == (1, 1)
        assert [m.session_id for m in server.channel_members("room")] == ["a1"]
        for watcher in (ann, bob, cid):
            await watcher.client.close()


async def test_refusals_the_embedder_could_not_check_are_returned() -> None:
    limits = Limits(max_members_per_channel=1)
    config = PresenceConfig(leave_grace=0, limits=limits)
    async with live_server(presence=config) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=room")
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1")
        await wait_for(lambda: server.presence.connection_of("b1") is not None)
        refusal = server.subscribe("b1", "room", "users")
        assert refusal is not None
        assert refusal.code == "channel_full"
        assert await bob.silent()  # returned to the embedder, not sent to the client
        for client in (ann, bob):
            await client.close()


async def test_misuse_of_the_embedding_api_raises_at_once_saying_what_to_fix() -> None:
    server = PresenceServer(lambda request: None)
    with pytest.raises(LocalUsageError, match="inside 'async with server:'"):
        server.subscribe("a1", "room")
    with pytest.raises(LocalUsageError, match="inside 'async with server:'"):
        server.publish("room", {"type": "t"})
    # A forgotten lifespan is no silent no-op for the others either.
    with pytest.raises(LocalUsageError, match="inside 'async with server:'"):
        server.broadcast("/ws", "room", {"type": "t"})
    with pytest.raises(LocalUsageError, match="inside 'async with server:'"):
        server.direct_to_user("ann", {"type": "t"})
    async with live_server() as (server, url):
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1")
        anon = await Client.connect(f"{url}/ws")
        await wait_for(lambda: len(server.clients) == 2)
        with pytest.raises(LocalUsageError, match="no session 'zz' is connected"):
            server.subscribe("zz", "room")
        with pytest.raises(LocalUsageError, match="mode must be one of none, users"):
            server.subscribe("b1", "room", mode="everyone")
        with pytest.raises(LocalUsageError, match="channel is 300 bytes"):
            server.subscribe("b1", "c" * 300)
        [anonymous] = [c for c in server.clients if c.identity is None]
        with pytest.raises(LocalUsageError, match="holds no session"):
            server.publish("room", {"type": "t"}, sender=anonymous)
        assert server.presence.subscriptions(anonymous) == {}
        [bob_client] = [c for c in server.clients if c.identity is not None]
        assert server.presence.subscriptions(bob_client) == {}
        for client in (bob, anon):
            await client.close()


def _gatekeeper(calls: list[tuple[str, str, PresenceMode]]) -> Any:
    def authorize(client: ServerClient, channel: str, mode: PresenceMode) -> bool | Refusal:
        calls.append((str(client.user_id), channel, mode))
        if channel == "boom":
            raise RuntimeError("the hook has a bug")
        if channel == "secret":
            return Refusal(reason="members only")
        return channel != "closed"

    return authorize


async def _check_gate(server: PresenceServer, url: str) -> None:
    ann = await Watcher.connect(f"{url}/ws?user=ann&session=a1")
    await ann.command(op="subscribe", channel="secret", presence="users")
    refused = await ann.next()
    assert refused["payload"] == {
        "code": "forbidden",
        "message": "members only",
        "channel": "secret",
    }
    await ann.command(op="subscribe", channel="closed")
    refused = await ann.next()
    assert refused["payload"]["code"] == "forbidden"
    await ann.command(op="subscribe", channel="room", presence="users")
    assert (await ann.next())["type"] == "subscribed"
    assert server.presence_stats("secret") == (0, 0)

    bob = await Watcher.connect(f"{url}/ws?user=bob&session=b1")
    await bob.command(op="subscribe", channel="room")
    assert (await bob.next())["type"] == "subscribed"
    await ann.until(lambda m: "bob" in m.get("joins", {}))
    await bob.command(op="subscribe", channel="boom")
    assert await bob.client.closed() == (1011, "internal error")  # that socket's fault...
    diff = await ann.diff()  # ...seen by the others as bob leaving, and nothing more
    assert list(diff["leaves"]) == ["bob"]
    await ann.command(op="publish", channel="room", type="chat")
    assert (await ann.next())["type"] == "chat"
    await ann.client.close()


async def test_a_sync_permission_hook_refuses_allows_and_faults_one_socket_only() -> None:
    calls: list[tuple[str, str, PresenceMode]] = []
    async with live_server(authorize_subscription=_gatekeeper(calls)) as (server, url):
        await _check_gate(server, url)
        # The embedder's own subscribe is not asked.
        carl = await Client.connect(f"{url}/ws?user=carl&session=c1")
        await wait_for(lambda: server.presence.connection_of("c1") is not None)
        assert server.subscribe("c1", "secret") is None
        await carl.close()
    assert ("ann", "room", PresenceMode.USERS) in calls
    assert not any(user == "carl" for user, _, _ in calls)


async def test_an_async_permission_hook_is_awaited_the_same_way() -> None:
    calls: list[tuple[str, str, PresenceMode]] = []
    gatekeeper = _gatekeeper(calls)

    async def authorize(client: ServerClient, channel: str, mode: PresenceMode) -> bool | Refusal:
        await anyio.sleep(0.01)
        verdict: bool | Refusal = gatekeeper(client, channel, mode)
        return verdict

    async with live_server(authorize_subscription=authorize) as (server, url):
        await _check_gate(server, url)


async def test_a_hook_answering_nonsense_is_that_socket_s_fault() -> None:
    async with live_server(authorize_subscription=lambda c, ch, m: "yes") as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1")
        await ann.send(json.dumps({"op": "subscribe", "channel": "room"}))
        assert await ann.closed() == (1011, "internal error")
        assert server.presence_stats("room") == (0, 0)


async def test_a_session_back_within_its_grace_makes_no_leave_and_a_kick_skips_it() -> None:
    async with live_server(presence=PresenceConfig(leave_grace=60)) as (server, url):
        ann = await Watcher.connect(f"{url}/ws?user=ann&session=a1")
        await ann.command(op="subscribe", channel="room", presence="users")
        bob_url = f"{url}/ws?user=bob&session=b1&channels=room"
        bob = await Client.connect(bob_url)
        await ann.until(lambda m: "bob" in m.get("joins", {}))
        await bob.close()
        await wait_for(lambda: server.presence.connection_of("b1") is None)
        bob = await Client.connect(bob_url)  # a reload, within the grace
        await wait_for(lambda: server.presence.connection_of("b1") is not None)
        assert await ann.client.silent()  # no leave, no join
        assert ann.members("room") == roster_view(server, "room")
        server.kick("b1")
        assert (await bob.closed())[0] == 1008
        diff = await ann.diff()  # a kick leaves at once, grace or not
        assert list(diff["leaves"]) == ["bob"]
        await ann.client.close()


async def test_past_its_grace_a_closed_session_leaves() -> None:
    async with live_server(presence=PresenceConfig(leave_grace=0.2)) as (server, url):
        ann = await Watcher.connect(f"{url}/ws?user=ann&session=a1")
        await ann.command(op="subscribe", channel="room", presence="users")
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=room")
        await ann.until(lambda m: "bob" in m.get("joins", {}))
        await bob.close()
        diff = await ann.diff()
        assert list(diff["leaves"]) == ["bob"]
        assert ann.members("room") == roster_view(server, "room")
        await ann.client.close()


async def test_a_publish_carries_a_given_sender() -> None:
    async with live_server() as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=room")
        await wait_for(lambda: server.presence_stats("room") == (1, 1))
        server.publish("room", {"type": "t"}, sender=Sender(user_id="ops", session_id="bot"))
        got = await ann.recv_json()
        assert got == {
            "type": "t",
            "channel": "room",
            "from": {"userId": "ops", "sessionId": "bot"},
            "offset": 1,
            "epoch": "boot.1",
        }
        await ann.close()


async def test_a_snapshot_larger_than_the_send_buffer_reaches_a_watcher_that_reads() -> None:
    # A full channel's snapshot (about 1 MB at the default member cap) is one frame, as
    # large as the default send buffer: here 40 members' snapshot is over 8 KiB, twice
    # the buffer, and it arrives right behind the ``subscribed`` reply.
    limits = SocketLimits(max_send_buffer=4096)
    async with live_server(limits=limits) as (server, url):
        members = []
        for i in range(40):
            members.append(await Client.connect(f"{url}/ws?user=u{i}&session=s{i}&channels=room"))
            await members[-1].send(json.dumps({"op": "metadata", "metadata": {"bio": "x" * 200}}))
        await wait_for(lambda: sum(bool(m.metadata) for m in server.channel_members("room")) == 40)
        watcher = await Watcher.connect(f"{url}/ws?user=ann&session=a1")
        await watcher.command(op="subscribe", channel="room", presence="sessions")
        assert (await watcher.next())["type"] == "subscribed"
        snapshot = await watcher.client.recv()
        assert len(snapshot) > 2 * 4096
        assert len(json.loads(snapshot)["members"]) == 40
        for client in (*members, watcher.client):
            await client.close()


async def test_an_async_verdict_after_the_socket_closed_is_dropped_and_limits_still_hold() -> None:
    release = anyio.Event()
    asked: list[str] = []

    async def authorize(client: ServerClient, channel: str, mode: PresenceMode) -> bool:
        asked.append(channel)
        if channel == "slow":
            await release.wait()
        return True

    async with live_server(authorize_subscription=authorize) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1")
        await ann.send(json.dumps({"op": "subscribe", "channel": "c" * 300}))
        refused = await ann.recv_json()
        assert refused["payload"]["code"] == "over_limit"
        await ann.send(json.dumps({"op": "subscribe", "channel": "slow"}))
        await wait_for(lambda: "slow" in asked)
        await ann.close()
        await wait_for(lambda: not server.clients)
        release.set()
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1")
        await bob.send(json.dumps({"op": "subscribe", "channel": "room"}))
        assert (await bob.recv_json())["type"] == "subscribed"
        assert server.presence_stats("slow") == (0, 0)
        assert server.readiness().ready  # no task failed
        await bob.close()


async def test_handle_command_answers_bad_commands_rosters_and_admin_kicks() -> None:
    def on_message(client: ServerClient, text: str) -> None:
        handle_command(client, text, is_admin=client.user_id == "root")

    async with live_server(on_message=on_message) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=lobby")
        root = await Client.connect(f"{url}/ws?user=root&session=r1")
        await ann.send("nope")
        assert (await ann.recv_json())["payload"]["code"] == "bad_json"
        await ann.send(json.dumps({"op": "metadata", "metadata": {"x": "y" * 5000}}))
        assert (await ann.recv_json())["payload"]["code"] == "over_limit"
        await ann.send(json.dumps({"op": "roster"}))
        roster = await ann.recv_json()
        assert roster["payload"]["channels"] == {"lobby": ["a1"]}
        await ann.send(json.dumps({"op": "kick", "sessionId": "r1"}))
        assert (await ann.recv_json())["payload"]["code"] == "forbidden"
        await root.send(json.dumps({"op": "kick", "sessionId": "a1", "reason": "bye"}))
        assert await ann.closed() == (1008, "bye")
        await root.close()
        assert server.presence_stats("lobby") == (0, 0)


async def test_a_detached_connection_hears_nothing_and_every_command_is_answered() -> None:
    async with live_server() as (server, url):
        tab1 = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=lobby")
        bob = await Client.connect(f"{url}/ws?user=bob&session=b1&channels=lobby")
        tab2 = await Client.connect(f"{url}/ws?user=ann&session=a1&channels=lobby")
        detached = {"type": "session.detached", "sessionId": "a1", "reason": "replaced"}
        assert await tab1.recv_json() == detached
        for command, code in (
            ({"op": "metadata", "metadata": {"x": 1}}, "not_joined"),
            ({"op": "subscribe", "channel": "lobby"}, "not_joined"),
            ({"op": "unsubscribe", "channel": "lobby"}, "not_joined"),
            ({"op": "publish", "channel": "lobby", "type": "t"}, "not_joined"),
            ({"op": "sync", "channel": "lobby"}, "not_joined"),
            ({"op": "broadcast", "channel": "lobby"}, "not_joined"),
            ({"op": "direct", "userId": "bob"}, "not_joined"),
            ({"op": "kick", "sessionId": "b1"}, "forbidden"),
        ):
            await tab1.send(json.dumps(command))
            assert (await tab1.recv_json())["payload"]["code"] == code, command
        assert [m.metadata for m in server.channel_members("lobby")] == [None, None]
        await tab1.send(json.dumps({"op": "roster"}))
        assert (await tab1.recv_json())["type"] == "roster"
        # Out of every index: no broadcast (the program's or a client's), no direct.
        server.broadcast("/ws", "lobby", {"type": "news"})
        await bob.send(json.dumps({"op": "broadcast", "channel": "lobby"}))
        await bob.send(json.dumps({"op": "direct", "userId": "ann"}))
        assert (await tab2.recv_json())["type"] == "news"
        assert (await bob.recv_json())["type"] == "news"
        assert (await tab2.recv_json())["type"] == "chat"
        await tab2.close()  # nor once the newer connection has gone
        await bob.send(json.dumps({"op": "direct", "userId": "ann"}))
        server.broadcast("/ws", "lobby", {"type": "news"})
        assert await tab1.silent()
        for client in (tab1, bob):
            await client.close()


async def test_an_error_names_the_channel_the_command_named() -> None:
    async with live_server() as (_, url):
        ann = await Client.connect(f"{url}/ws?user=ann&session=a1")
        anon = await Client.connect(f"{url}/ws")
        long = "c" * 300  # over Limits.max_name_bytes
        for client, command, code, channel in (
            (ann, {"op": "subscribe", "channel": long}, "over_limit", long),
            (ann, {"op": "publish", "channel": "room", "type": "error"}, "bad_command", "room"),
            (ann, {"op": "subscribe", "channel": "room", "since": {}}, "bad_command", "room"),
            (anon, {"op": "subscribe", "channel": "room"}, "not_joined", "room"),
            (ann, {"op": "direct", "userId": "bob", "type": "error"}, "bad_command", None),
        ):
            await client.send(json.dumps(command))
            payload = (await client.recv_json())["payload"]
            assert (payload["code"], payload.get("channel")) == (code, channel), command
        for client in (ann, anon):
            await client.close()
