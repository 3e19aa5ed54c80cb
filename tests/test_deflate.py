"""permessage-deflate (RFC 7692): the negotiation, compressed fragments in the
spirit of Autobahn 12.x/13.x, the bounded inflate, and broadcasts compressed
once; the socket tests on asyncio and trio."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib
from typing import Any

import anyio
import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from megapresence_anyio import SocketLimits
from megapresence_anyio._deflate import Deflate, negotiate
from megapresence_anyio._outgoing import deflated_frame
from megapresence_core import LocalUsageError

from .socket_helpers import Client, RawClient, running_server, wait_for

BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


# ------------------------------------------------------------------ negotiation


@pytest.mark.parametrize(
    ("offers", "agreed"),
    [
        (["permessage-deflate"], Deflate(15, False)),
        (["PerMessage-Deflate"], Deflate(15, False)),
        (["permessage-deflate; client_max_window_bits"], Deflate(15, False)),
        (["permessage-deflate; client_max_window_bits=9"], Deflate(15, False)),
        (["permessage-deflate; server_no_context_takeover"], Deflate(15, False)),
        (["permessage-deflate; client_no_context_takeover"], Deflate(15, False)),
        (["permessage-deflate; server_max_window_bits=10"], Deflate(10, True)),
        (['permessage-deflate; server_max_window_bits="12"'], Deflate(12, True)),
        (["permessage-deflate;server_max_window_bits = 15"], Deflate(15, True)),
        # The first acceptable offer wins; the ones before it are declined.
        (["permessage-deflate; server_max_window_bits=8, permessage-deflate"], Deflate(15, False)),
        (
            ["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=11"],
            Deflate(11, True),
        ),
        (["foo; bar=1, permessage-deflate; client_max_window_bits"], Deflate(15, False)),
        # Declined: no compression, and the handshake goes on.
        ([], None),
        (["x-webkit-deflate-frame"], None),
        (["permessage-deflate; server_max_window_bits"], None),  # needs a value
        (["permessage-deflate; server_max_window_bits=8"], None),  # zlib cannot
        (["permessage-deflate; server_max_window_bits=16"], None),
        (["permessage-deflate; client_max_window_bits=7"], None),
        (["permessage-deflate; client_max_window_bits=ten"], None),
        (["permessage-deflate; server_max_window_bits=١٢"], None),  # digits, but not ASCII
        (["permessage-deflate; server_max_window_bits=-9"], None),
        (["permessage-deflate; server_no_context_takeover=1"], None),
        (["permessage-deflate; client_no_context_takeover; client_no_context_takeover"], None),
        (["permessage-deflate; server_max_window_bits=9; server_max_window_bits=10"], None),
        (["permessage-deflate; mystery"], None),
        (["permessage-deflate-x"], None),
    ],
)
def test_negotiation_takes_the_first_acceptable_offer(
    offers: list[str], agreed: Deflate | None
) -> None:
    assert negotiate(offers) == agreed


def test_the_answer_asks_for_no_context_takeover_both_ways() -> None:
    assert Deflate(15, False).response == BASE
    assert Deflate(10, True).response == BASE + "; server_max_window_bits=10"


def test_the_setting_is_checked() -> None:
    with pytest.raises(LocalUsageError, match="permessage_deflate must be True or False"):
        SocketLimits(permessage_deflate="yes")  # type: ignore[arg-type]


def inflate(payload: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(payload + b"\x00\x00\xff\xff")


def test_a_deflated_frame_is_a_final_text_frame_with_rsv1_each_message_on_its_own() -> None:
    text = json.dumps({"type": "m", "payload": os.urandom(200).hex() * 3}).encode()
    frame = deflated_frame(text, 10)
    assert frame[0] == 0xC1  # FIN, RSV1, text
    assert frame[1] == 126
    (size,) = struct.unpack("!H", frame[2:4])
    assert size == len(frame) - 4 < len(text)
    assert inflate(frame[4:], 10) == text  # a fresh inflater: no context needed


# ------------------------------------------------------------- over sockets

DEFLATE = SocketLimits(permessage_deflate=True, max_message_bytes=64 * 1024)


def masked(first: int, payload: bytes) -> bytes:
    """A client frame with a random mask (any size)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes((first, 0x80 | size))
    elif size < 65536:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", size)
    else:
        head = bytes((first, 0x80 | 127)) + struct.pack("!Q", size)
    repeated = (mask * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")
    return head + mask + (body if size else b"")


def compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


async def raw_connect(port: int, path: str, offer: str | None) -> tuple[RawClient, bytes]:
    """A raw client and the head of the server's 101."""
    extension = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer is not None else ""
    client = await RawClient.connect(port, path, extension)
    return client, client.head


def echo(client: Any, text: str) -> None:
    client.send(f"{len(text)}:{text[:20]}")


@pytest.mark.anyio
async def test_off_by_default_a_compressing_client_gets_plain_frames() -> None:
    async with running_server() as (_server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&channels=c")
        assert ann.ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert ann.ws.protocol.extensions == []
        await ann.close()


@pytest.mark.anyio
async def test_websockets_as_a_compressing_client_both_ways() -> None:
    async with running_server(limits=DEFLATE, on_message=echo) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&channels=c")  # offers deflate
        assert ann.ws.response.headers["Sec-WebSocket-Extensions"] == BASE
        assert [type(e).__name__ for e in ann.ws.protocol.extensions] == ["PerMessageDeflate"]
        await wait_for(lambda: bool(server.roster("/ws")))
        payload = "presence " * 200
        for n in range(3):  # each on its own: no context taken over between them
            server.broadcast("/ws", "c", {"type": "m", "payload": f"{n}{payload}"})
            assert await ann.recv_json() == {"type": "m", "ns": "/ws", "payload": f"{n}{payload}"}
        await ann.send("hello " * 3000)  # compressed by the client, inflated within the limit
        assert await ann.recv() == "18000:hello hello hello he"
        await ann.close()


@pytest.mark.anyio
@pytest.mark.parametrize("bits", [9, 10, 12, 15])
async def test_websockets_asking_for_small_windows_both_ways(bits: int) -> None:
    factory = ClientPerMessageDeflateFactory(
        server_max_window_bits=bits, client_max_window_bits=bits
    )
    async with running_server(limits=DEFLATE, on_message=echo) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&channels=c", extensions=[factory])
        assert ann.ws.response.headers["Sec-WebSocket-Extensions"] == (
            BASE + f"; server_max_window_bits={bits}"
        )
        await wait_for(lambda: bool(server.roster("/ws")))
        payload = os.urandom(3000).hex()[:1000] * 20  # repeats past a small window
        server.broadcast("/ws", "c", {"type": "m", "payload": payload})
        assert (await ann.recv_json())["payload"] == payload
        await ann.send(payload)
        assert await ann.recv() == f"{len(payload)}:{payload[:20]}"
        await ann.close()


@pytest.mark.anyio
async def test_a_broadcast_is_compressed_once_for_everyone_that_agreed() -> None:
    async with running_server(limits=DEFLATE) as (server, url):
        port = int(url.rsplit(":", 1)[1])
        deflating = [
            await raw_connect(port, f"/ws?user=u{n}&channels=c", "permessage-deflate")
            for n in range(3)
        ]
        small, _ = await raw_connect(
            port, "/ws?user=s&channels=c", "permessage-deflate; server_max_window_bits=9"
        )
        plain, plain_head = await raw_connect(port, "/ws?user=p&channels=c", None)
        assert b"sec-websocket-extensions" not in plain_head.lower()
        assert (
            deflating[0][1].lower().count(b"sec-websocket-extensions: " + BASE.lower().encode())
            == 1
        )
        await wait_for(lambda: len(server.roster("/ws")) == 5)
        message = {"type": "m", "ns": "/ws", "payload": "abcdefgh" * 64}
        server.broadcast("/ws", "c", {"type": "m", "payload": message["payload"]})
        text = json.dumps(message, separators=(",", ":")).encode()
        frames = [await client.raw_frame() for client, _ in deflating]
        assert len({payload for _, payload in frames}) == 1  # the same bytes for all
        for first, payload in frames:
            assert first == 0xC1
            assert len(payload) < len(text) // 4
            assert json.loads(inflate(payload)) == message
        first, payload = await small.raw_frame()
        assert first == 0xC1
        assert json.loads(inflate(payload, 9)) == message
        first, payload = await plain.raw_frame()
        assert (first, json.loads(payload)) == (0x81, message)
        # A message that compression would not shrink goes out plain, to everyone.
        server.broadcast("/ws", "c", {"type": "n", "payload": 1})
        for client, _ in [*deflating, (small, b""), (plain, b"")]:
            first, payload = await client.raw_frame()
            assert (first, json.loads(payload)) == (0x81, {"type": "n", "ns": "/ws", "payload": 1})
        for client, _ in [*deflating, (small, b""), (plain, b"")]:
            await client.stream.aclose()


async def deflating_client(port: int, **options: Any) -> RawClient:
    client, _ = await raw_connect(port, "/ws?user=ann&channels=c", "permessage-deflate")
    return client


def text_of(payload: bytes) -> str:
    """What ``echo`` answers to ``payload``."""
    text = payload.decode()
    return f"{len(text)}:{text[:20]}"


@pytest.mark.anyio
async def test_compressed_fragments_with_a_ping_between_them() -> None:
    """Autobahn 12.x/13.x: one compressed message in several frames (RSV1 on the
    first only), a control frame among them, then plain and empty messages."""
    async with running_server(limits=DEFLATE, on_message=echo) as (_server, url):
        client = await deflating_client(int(url.rsplit(":", 1)[1]))
        text = os.urandom(400).hex().encode() * 3
        data = compress(text)
        parts = [data[i : i + 100] for i in range(0, len(data), 100)]
        assert len(parts) > 2
        stream = client.stream
        await stream.send(masked(0x41, parts[0]))  # text, RSV1, not final
        await stream.send(masked(0x89, b"mid"))  # a ping between fragments
        for part in parts[1:-1]:
            await stream.send(masked(0x00, part))
        await stream.send(masked(0x80, parts[-1]))
        assert await client.raw_frame() == (0x8A, b"mid")
        assert (await client.raw_frame())[1].decode() == text_of(text)
        await stream.send(masked(0x81, b"plain on a deflate connection"))
        assert (await client.raw_frame())[1].decode() == text_of(b"plain on a deflate connection")
        await stream.send(masked(0xC1, compress(b"")))  # an empty compressed message
        assert (await client.raw_frame())[1].decode() == "0:"
        await stream.send(masked(0xC1, b"\x00"))  # the RFC's other empty form
        assert (await client.raw_frame())[1].decode() == "0:"
        await stream.send(masked(0xC1, compress("é€😀".encode() * 10)))
        assert (await client.raw_frame())[1].decode() == text_of("é€😀".encode() * 10)
        await stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([masked(0x41, compress(b"ab")[:1]), masked(0x40, b"x")], 1002),  # RSV1 on a continuation
        ([masked(0xC9, b"")], 1002),  # RSV1 on a ping
        ([masked(0xC1, b"\xff\xff\xff\xff")], 1007),  # not deflate data
        ([masked(0xC1, compress(b"\xff\xfe not utf-8"))], 1007),
        ([masked(0xA1, b"x")], 1002),  # RSV2: no extension uses it
    ],
)
async def test_broken_compressed_frames_are_closed_with_their_code(
    frames: list[bytes], code: int
) -> None:
    async with running_server(limits=DEFLATE) as (_server, url):
        client = await deflating_client(int(url.rsplit(":", 1)[1]))
        await client.stream.send(b"".join(frames))
        with anyio.fail_after(5):
            assert await client.close_code() == code
        await client.stream.aclose()


@pytest.mark.anyio
async def test_rsv1_without_the_extension_is_a_protocol_error() -> None:
    async with running_server(limits=DEFLATE) as (_server, url):
        client, _ = await raw_connect(int(url.rsplit(":", 1)[1]), "/ws", None)
        await client.stream.send(masked(0xC1, compress(b"hello")))
        with anyio.fail_after(5):
            assert await client.close_code() == 1002
        await client.stream.aclose()


@pytest.mark.anyio
async def test_the_inflate_limit_is_the_message_limit() -> None:
    limit = DEFLATE.max_message_bytes
    async with running_server(limits=DEFLATE, on_message=echo) as (_server, url):
        client = await deflating_client(int(url.rsplit(":", 1)[1]))
        await client.stream.send(masked(0xC1, compress(b"a" * limit)))  # exactly the limit
        assert (await client.raw_frame())[1].decode() == f"{limit}:" + "a" * 20
        # One byte more, spread over fragments: 1009 with the limit's own reason.
        data = compress(b"a" * (limit + 1))
        await client.stream.send(masked(0x41, data[:10]) + masked(0x80, data[10:]))
        with anyio.fail_after(5):
            first, payload = await client.raw_frame()
        assert first == 0x88
        assert struct.unpack("!H", payload[:2])[0] == 1009
        assert payload[2:].decode() == f"message over {limit} bytes"
        await client.stream.aclose()


@pytest.mark.anyio
async def test_a_decompression_bomb_is_refused_before_memory_grows() -> None:
    bomb = compress(b"\x00" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000
    async with running_server(limits=DEFLATE) as (_server, url):
        client = await deflating_client(int(url.rsplit(":", 1)[1]))
        frame = masked(0xC1, bomb)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            await client.stream.send(frame)
            with anyio.fail_after(10):
                assert await client.close_code() == 1009
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Unbounded, this would inflate 64 MiB; bounded, at most the 64 KiB limit
        # (plus zlib's window and the frame being read).
        assert peak - before < 4 * 1024 * 1024
        await client.stream.aclose()
