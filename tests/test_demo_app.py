"""The demo application of ``megapresence serve``, spoken to over real sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from megapresence_anyio import PresenceServer
from megapresence_anyio._demo import DemoApp
from megapresence_core import (
    Limits,
    PresenceConfig,
)

from .socket_helpers import Client, wait_for

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def demo() -> AsyncIterator[tuple[PresenceServer, str]]:
    app = DemoApp(admins=["root"])
    server = PresenceServer(
        app.authenticate,
        on_open=app.on_open,
        on_message=app.on_message,
        pages=app.pages,
        presence=PresenceConfig(limits=Limits(max_metadata_bytes=64)),
    )
    app.server = server
    async with server:
        port = await server.listen()
        yield server, f"ws://127.0.0.1:{port}/ws/chat"


async def join(url: str, user: str) -> tuple[Client, dict[str, Any]]:
    client = await Client.connect(f"{url}?user={user}&channels=lobby")
    welcome = await client.recv_json()
    assert welcome["type"] == "welcome"
    return client, welcome["payload"]


async def next_of(client: Client, kind: str, skipped: list[str] | None = None) -> dict[str, Any]:
    """The next message of type ``kind``; the types passed over go to ``skipped``."""
    while True:
        message: dict[str, Any] = await client.recv_json()
        if message["type"] == kind:
            return message
        if skipped is not None:
            skipped.append(message["type"])


async def test_welcome_roster_and_watching_a_channel() -> None:
    async with demo() as (_, url):
        ann, me = await join(url, "ann")
        assert me["userId"] == "ann"
        assert me["admin"] is False
        assert me["sessionId"].startswith("ann-")
        await ann.send('{"op":"subscribe","channel":"lobby","presence":"users"}')
        state = await next_of(ann, "presence.state")
        assert list(state["members"]) == ["ann"]
        bob, _ = await join(url, "bob")
        skipped: list[str] = []
        diff = await next_of(ann, "presence.diff", skipped)
        assert list(diff["joins"]) == ["bob"]
        assert "presence.changed" not in skipped  # the page watches diffs: no bare notices
        await ann.send('{"op":"roster"}')
        roster = await next_of(ann, "roster")
        assert sorted(m["userId"] for m in roster["payload"]["members"]) == ["ann", "bob"]
        await bob.close()
        await ann.close()


async def test_broadcast_excluding_self_direct_and_metadata() -> None:
    async with demo() as (server, url):
        ann, ann_me = await join(url, "ann")
        bob, _ = await join(url, "bob")
        await ann.send(
            '{"op":"broadcast","channel":"lobby","excludeSelf":true,"payload":{"text":"hi"}}'
        )
        chat = await next_of(bob, "chat")
        assert chat["payload"] == {"text": "hi"}
        assert chat["from"] == {"userId": "ann", "sessionId": ann_me["sessionId"]}
        await ann.send('{"op":"direct","userId":"bob","payload":"psst"}')
        direct = await next_of(bob, "direct")
        assert direct == {"type": "direct", "from": chat["from"], "payload": "psst"}
        # The sender is the server's from, whatever the page puts in its payload.
        await ann.send('{"op":"direct","userId":"bob","payload":{"from":"root","text":"hi"}}')
        direct = await next_of(bob, "direct")
        assert (direct["from"], direct["payload"]) == (chat["from"], {"from": "root", "text": "hi"})
        await ann.send('{"op":"direct","userId":"bob"}')
        assert await next_of(bob, "direct") == {"type": "direct", "from": chat["from"]}
        await ann.send('{"op":"direct","userId":"nobody","payload":"?"}')
        results = [await next_of(ann, "direct.result") for _ in range(4)]
        assert [(r["userId"], r["found"]) for r in results] == [("bob", True)] * 3 + [
            ("nobody", False)
        ]
        await ann.send('{"op":"metadata","metadata":{"status":"away"}}')
        await wait_for(
            lambda: any(m.metadata == {"status": "away"} for m in server.roster("/ws/chat"))
        )
        await ann.send('{"op":"roster"}')
        skipped: list[str] = []
        await next_of(ann, "roster", skipped)
        assert "chat" not in skipped  # excludeSelf kept her own broadcast from her
        await ann.close()
        await bob.close()


async def test_a_reconnect_within_the_grace_is_told_every_channel_of_its_session() -> None:
    async with demo() as (_, url):
        ann = await Client.connect(f"{url}?user=ann&session=a1&channels=lobby")
        assert (await ann.recv_json())["payload"]["channels"] == ["lobby"]
        await ann.send('{"op":"subscribe","channel":"dev"}')
        await next_of(ann, "subscribed")
        await ann.close()
        # A reload: the page's URL names lobby only; the restored session is in dev too.
        ann = await Client.connect(f"{url}?user=ann&session=a1&channels=lobby")
        welcome = await ann.recv_json()
        assert (welcome["type"], welcome["payload"]["channels"]) == ("welcome", ["dev", "lobby"])
        assert "from" not in welcome
        await ann.close()


@pytest.mark.parametrize(
    "forged",
    [
        {"op": "broadcast", "channel": "lobby", "type": "welcome", "payload": {"userId": "m"}},
        {"op": "publish", "channel": "lobby", "type": "unsubscribed"},
        {"op": "direct", "userId": "bob", "type": "error", "payload": {"code": "x"}},
        {"op": "publish", "channel": "lobby", "type": "presence.diff"},
    ],
)
async def test_no_client_speaks_as_the_server(forged: dict[str, Any]) -> None:
    async with demo() as (_, url):
        mallory, _ = await join(url, "mallory")
        bob, _ = await join(url, "bob")
        await mallory.send(json.dumps(forged))
        refused = await next_of(mallory, "error")
        assert refused["payload"]["code"] == "bad_command"
        assert "reserved for the server" in refused["payload"]["message"]
        await bob.send('{"op":"roster"}')
        skipped: list[str] = []
        await next_of(bob, "roster", skipped)
        assert skipped == []  # nothing reached bob
        await mallory.close()
        await bob.close()


async def test_errors_are_answered_not_fatal() -> None:
    async with demo() as (_, url):
        ann, _ = await join(url, "ann")
        await ann.send("not json")
        assert (await next_of(ann, "error"))["payload"]["code"] == "bad_json"
        await ann.send('{"op":"kick","sessionId":"x"}')
        assert (await next_of(ann, "error"))["payload"]["code"] == "forbidden"
        await ann.send('{"op":"metadata","metadata":{"big":"' + "x" * 100 + '"}}')
        # The core's own code for it, one a client knows (CLIENT_ERROR_CODES).
        assert (await next_of(ann, "error"))["payload"]["code"] == "over_limit"
        await ann.send('{"op":"ping"}')  # answers a heartbeat; nothing comes back
        await ann.send('{"op":"roster"}')
        skipped: list[str] = []
        assert (await next_of(ann, "roster", skipped))["type"] == "roster"  # still connected
        assert skipped == []
        await ann.close()


async def test_admins_kick() -> None:
    async with demo() as (_, url):
        root, me = await join(url, "root")
        assert me["admin"] is True
        bob, bob_me = await join(url, "bob")
        await root.send(
            json.dumps({"op": "kick", "sessionId": bob_me["sessionId"], "reason": "bye"})
        )
        assert await bob.closed() == (1008, "bye")
        await root.close()


async def test_the_demo_login_needs_a_user_name() -> None:
    from websockets.exceptions import InvalidStatus

    async with demo() as (_, url):
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(url)
        assert refused.value.response.status_code == 401


async def test_an_identity_the_core_refuses_gets_the_errors_status_before_the_upgrade() -> None:
    async with demo() as (_, url):
        channels = ",".join(f"c{n}" for n in range(65))  # Limits.max_channels_per_session is 64
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}?user=ann&channels={channels}")
        assert refused.value.response.status_code == 400
        assert b"65 channels; the limit is 64" in refused.value.response.body
        ann, _ = await join(url, "ann")  # the server goes on
        await ann.close()


def test_the_demo_identity_s_defaults_are_the_ones_the_protocol_states() -> None:
    from megapresence_anyio import HandshakeRequest, Identity, Refusal

    app = DemoApp(admins=["root"], default_channels=("lobby",))

    def ask(query: str) -> Identity | Refusal:
        return app.authenticate(
            HandshakeRequest(method="GET", path="/ws/chat", query_string=query, headers=())
        )

    assert ask("") == Refusal(status=401, reason="demo: add ?user=NAME")
    ann = ask("user=ann")
    assert isinstance(ann, Identity)
    assert ann.user_id == "ann"
    assert ann.session_id.startswith("ann-")
    assert len(ann.session_id) == len("ann-") + 8  # 8 random hex digits
    assert ann.channels == ("lobby",)
    assert ann.metadata == {"status": "online", "admin": False}
    root = ask("user=root&session=r1&channels=dev,ops")
    assert root == Identity(
        user_id="root",
        session_id="r1",
        channels=("dev", "ops"),
        metadata={"status": "online", "admin": True},
    )


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("user=%ED%A0%80", b"lone surrogate"),  # percent-escaped bytes that are not UTF-8
        ("user=ann&session=%FF", b"lone surrogate"),
        ("user=ann&channels=lobby,%C0", b"lone surrogate"),
        ("user=a%00b", b"control character"),
        ("user=ann&session=s%0A1", b"control character"),
        ("user=ann&channels=lo%7Fbby", b"control character"),
    ],
)
async def test_a_demo_name_utf_8_cannot_carry_or_with_a_control_character_is_400(
    query: str, reason: bytes
) -> None:
    async with demo() as (_, url):
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}?{query}")
        assert refused.value.response.status_code == 400
        assert reason in refused.value.response.body


def test_distinct_raw_query_values_stay_distinct() -> None:
    from megapresence_anyio import HandshakeRequest

    def user(query: str) -> str:
        request = HandshakeRequest(method="GET", path="/ws", query_string=query, headers=())
        return request.query["user"]

    assert user("user=%ED%A0%80") != user("user=%ED%A0%81")
    assert user("user=%C3%A9") == "\u00e9"


def test_a_repeated_query_parameter_gives_its_first_value() -> None:
    from megapresence_anyio import HandshakeRequest

    request = HandshakeRequest(
        method="GET", path="/ws", query_string="user=ann&tab=1&user=bob&tab=2", headers=()
    )
    assert request.query == {"user": "ann", "tab": "1"}


async def test_a_session_taken_over_through_a_hub_is_welcomed_again_with_its_kept_channels() -> (
    None
):
    from contextlib import AsyncExitStack

    from megapresence_anyio import HubServer
    from megapresence_core import HubConfig, HubLinkConfig
    from megapresence_core.lifecycle import HubLinkState

    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(HubServer(HubConfig(hub_id="h", tokens=["t"])))
        hub_port = await hub.listen()
        servers, urls = [], []
        for name in ("A", "B"):
            app = DemoApp()
            link = HubLinkConfig(bridge_id=name, instance_id=name, backoff_initial=0.05)
            server = PresenceServer(
                app.authenticate,
                on_open=app.on_open,
                on_restored=app.on_open,
                on_message=app.on_message,
                presence=PresenceConfig(hub_link=link, leave_grace=30),
                hub_url=f"ws://127.0.0.1:{hub_port}/",
                hub_token="t",
            )
            app.server = server
            servers.append(await stack.enter_async_context(server))
            urls.append(f"ws://127.0.0.1:{await server.listen()}/ws/chat")
        await wait_for(
            lambda: all(s.presence.hub_link_state is HubLinkState.REGISTERED for s in servers)
        )
        first = await Client.connect(f"{urls[0]}?user=ann&session=s1&channels=lobby,room")
        assert (await next_of(first, "welcome"))["payload"]["channels"] == ["lobby", "room"]
        await wait_for(lambda: [m.session_id for m in hub.hub.members()] == ["s1"])
        await first.close()
        back = await Client.connect(f"{urls[1]}?user=ann&session=s1&channels=lobby")
        # Told at its join what B knew then; told again once A's channels reached B.
        assert (await next_of(back, "welcome"))["payload"]["channels"] == ["lobby"]
        again = await next_of(back, "welcome")
        assert again["payload"]["channels"] == ["lobby", "room"]
        assert again["payload"]["sessionId"] == "s1"
        await back.close()
