"""One benchmark server, driven over stdin/stdout by run.py.

    python benchmarks/bench_server.py SYSTEM --clients N --messages M

Prints ``READY <port> <rss KiB>``, then ``CONNECTED <rss KiB>`` once N clients
are open; on ``GO`` it prints ``START <monotonic>`` and broadcasts M messages
of 100 bytes to all of them as fast as the system allows; on ``STOP`` it prints
``CPU <seconds of process CPU since GO>`` and exits. ``ops`` (megapresence
only) times direct messages and broadcasts with an except list instead.

``--burst K`` makes each turn of the event loop K broadcasts back to back (M
in all). ``--mode storm`` (megapresence and websockets): every client watches
channel ``c`` (mode users, window 0: every change is a diff at once), and each
turn makes K/2 metadata updates (a diff to every watcher each) and K/2
messages published to ``c``; websockets broadcasts the same kinds of JSON. A
storm ends with a sentinel message (``SENTINEL``), and the server prints
``DELIVERIES <n>`` before ``CPU``.

``--deflate`` (megapresence and websockets): permessage-deflate on, with each
system's defaults (megapresence: no context takeover, a broadcast compressed
once; websockets: context takeover, window 12 bits, compressed per
connection), and the broadcasts are ``chat_texts``: varied chat-like JSON of
about 300 bytes, the same for both.

Systems: megapresence-asyncio, megapresence-uvloop, megapresence-trio,
websockets (its broadcast()), socketio (python-socketio emit to a room, aiohttp),
bare-asyncio and bare-trio (wsproto handshakes, then one frame written to each
socket in place: the ceiling a Python server can reach). For the deployment
figures (``deploy_bench.py``): megapresence-asgi (the same server mounted as an
ASGI app under uvicorn), megapresence-tls and megapresence-tls-trio (its own
listener with TLS, on asyncio and on trio), websockets-tls (websockets serving
over TLS) and megapresence-uncounted (the counters of ``/metrics`` switched off,
to show what counting costs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PAYLOAD_BYTES = 100
PATH = "/ws/bench"
#: The last message of a storm: the load client stops when every socket has it.
SENTINEL = "END-OF-RUN"


def raise_file_limit() -> None:
    """As many open files as this process may have (the scale runs hold N sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def watching_hooks(channel: str) -> tuple[Callable[[Any], Any], Callable[[Any], None]]:
    """``login`` and ``on_open`` of the storms (``live_storm.py``, ``reconnect_storm.py``):
    a client with ``?watch`` joins nothing and watches ``channel`` in mode users; any other
    joins ``channel`` as its ``?user``, one session each."""
    from megapresence_anyio import Client, HandshakeRequest, Identity

    def login(request: HandshakeRequest) -> Identity:
        user = request.query["user"]
        channels = () if "watch" in request.query else (channel,)
        return Identity(user_id=user, session_id=user, channels=channels)

    def on_open(client: Client) -> None:
        if "watch" in client.request.query:
            client.server.subscribe(client, channel, "users")

    return login, on_open


def storm_settings() -> tuple[Any, Any]:
    """The ``SocketLimits`` and ``PresenceConfig`` of a storm's server (``reconnect_storm.py``,
    ``recovery_storm.py``): every client comes from 127.0.0.1-8, so the per-address caps
    would refuse most of them, and one channel holds them all."""
    from megapresence_anyio import SocketLimits
    from megapresence_core import Limits, PresenceConfig

    limits = SocketLimits(
        max_pending_per_address=1_000_000,
        max_pending_handshakes=1_000_000,
        max_connections=1_000_000,
        max_connections_per_address=1_000_000,
        ping_interval=3600,
    )
    return limits, PresenceConfig(limits=Limits(max_members_per_channel=1_000_000))


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say(*words: object) -> None:
    print(*words, flush=True)


async def measure(
    args: argparse.Namespace,
    readline: Callable[[], Awaitable[str]],
    broadcast_once: Callable[[], Awaitable[None]],
    finish: Callable[[], None] | None = None,
) -> None:
    """The protocol every system follows once its N clients are connected; ``finish``
    sends a storm's sentinel."""
    say("CONNECTED", rss_kib())
    await readline()
    if args.mode == "serve":
        return
    cpu = cpu_seconds()
    say("START", time.monotonic())
    for _ in range(args.messages // args.burst):
        await broadcast_once()
    if finish is not None:
        finish()
    await readline()
    say("CPU", cpu_seconds() - cpu)


async def measure_broadcasts(
    args: argparse.Namespace,
    readline: Callable[[], Awaitable[str]],
    broadcast: Callable[[], None],
    chat: Callable[[], None],
    sleep: Callable[[float], Awaitable[None]],
) -> bool:
    """Measure single broadcasts, bursts (``--burst``) or compressed chat messages
    (``--deflate``); False for a storm, which each system runs its own way."""
    burst = args.burst

    async def broadcast_once() -> None:
        for _ in range(burst):
            broadcast()
        await sleep(0)

    async def chat_once() -> None:
        chat()
        await sleep(0)

    if args.mode == "storm":
        return False
    await measure(args, readline, chat_once if args.deflate else broadcast_once)
    return True


def storm_texts(step: int, half: int) -> list[str]:
    """What websockets broadcasts in a storm turn: the JSON a presence diff and a
    channel message of the same shapes as megapresence's, encoded per message."""
    import json

    texts = []
    for k in range(half):
        member = {"sessionId": f"s{k}", "userId": f"u{k}", "metadata": {"n": step}}
        diff = {"type": "presence_diff", "channel": "c", "version": step * half + k}
        texts.append(json.dumps({**diff, "joins": [], "leaves": [], "updates": [member]}))
        texts.append(json.dumps({"type": "m", "channel": "c", "payload": "x" * 60}))
    return texts


def chat_texts(count: int = 64) -> list[str]:
    """Varied chat-like payloads (~300 bytes of JSON each), the same in every run."""
    rng = random.Random(7)
    words = [
        "presence",
        "online",
        "away",
        "typing",
        "joined",
        "left",
        "room",
        "lobby",
        "meeting",
        "call",
        "status",
        "busy",
        "hello",
        "thanks",
        "see",
        "you",
        "soon",
        "great",
        "idea",
        "let",
        "us",
        "ship",
        "it",
        "today",
        "tomorrow",
        "review",
    ]
    return [
        " ".join(rng.choice(words) for _ in range(40)) + f" #{n} {rng.getrandbits(64):x}"
        for n in range(count)
    ]


def text_of_size(prefix: str, suffix: str) -> str:
    """A payload making ``prefix + payload + suffix`` exactly PAYLOAD_BYTES long."""
    return "x" * (PAYLOAD_BYTES - len(prefix) - len(suffix))


# ------------------------------------------------------------------ megapresence


async def megapresence(args: argparse.Namespace, readline: Callable[[], Awaitable[str]]) -> None:
    import anyio

    from megapresence_anyio import Identity, PresenceServer, SocketLimits
    from megapresence_core import Limits, Message, PresenceConfig
    from megapresence_core.config import DEFAULT_PRESENCE_WINDOW
    from megapresence_core.events import PublishRequested, Subscribe

    # Every client of the load process comes from 127.0.0.1: the per-address caps
    # (made for clients on their own addresses) would refuse most of them.
    limits = SocketLimits(
        max_pending_per_address=512,
        max_connections_per_address=1_000_000,
        max_connections=1_000_000,
        **({"permessage_deflate": True} if args.deflate else {}),
    )

    counter = iter(range(10**9))

    def login(request: Any) -> Identity:
        n = next(counter)
        return Identity(user_id=f"u{n}", session_id=f"s{n}", channels=("c",))

    prefix = '{"type":"m","ns":"' + PATH + '","payload":"'
    message = Message(type="m", payload=text_of_size(prefix, '"}'))
    if args.system == "megapresence-uncounted":
        from megapresence_anyio._stats import Stats

        Stats.delivered = lambda self, targets, size: None  # type: ignore[method-assign]
    # A channel of every client: past the default cap of members per channel at scale.
    presence = PresenceConfig(
        presence_window=0 if args.mode == "storm" else DEFAULT_PRESENCE_WINDOW,
        limits=Limits(max_members_per_channel=1_000_000),
    )
    async with PresenceServer(login, paths=None, limits=limits, presence=presence) as server:
        if args.system == "megapresence-asgi":
            port = await asgi_listen(server)
        elif args.system.startswith("megapresence-tls"):
            port = await server.listen(port=0, ssl_context=tls_context())
        else:
            port = await server.listen(port=0)
        say("READY", port, rss_kib())
        while len(server.clients) < args.clients:
            await anyio.sleep(0.01)
        if args.mode == "ops":
            say("CONNECTED", rss_kib())
            await readline()
            await operations(server, args)
            return
        texts = iter(chat_texts() * (args.messages // 64 + 1))
        if await measure_broadcasts(
            args,
            readline,
            lambda: server.broadcast(PATH, "c", message),
            lambda: server.broadcast(PATH, "c", Message(type="m", payload=next(texts))),
            anyio.sleep,
        ):
            return
        burst = args.burst
        clients = sorted(server.clients, key=lambda c: int(c.user_id[1:]))
        for client in clients:
            server.dispatch(Subscribe(conn=client, channel="c", mode="users", now=0.0))
        while any(client.session.transport.queued for client in clients):  # the snapshots
            await anyio.sleep(0.05)
        await anyio.sleep(0.5)
        delivered = server.stats.deliveries
        half, step = burst // 2, 0
        published = Message(type="m", payload="x" * 60)

        async def storm_once() -> None:
            nonlocal step
            step += 1
            for k in range(half):
                server.update_metadata(f"s{k}", {"n": step})
                server.dispatch(PublishRequested(channel="c", message=published))
            await anyio.sleep(0)

        await measure(
            args,
            readline,
            storm_once,
            lambda: server.broadcast(PATH, "c", Message(type="end", payload=SENTINEL)),
        )
        say("DELIVERIES", server.stats.deliveries - delivered)


async def asgi_listen(server: Any) -> int:
    """Serve ``server`` as an ASGI app under uvicorn, in this event loop; return the port."""
    import anyio
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        server.asgi(), lifespan="off", log_level="warning", backlog=4096, ws_max_queue=1024
    )
    runner = uvicorn.Server(config)
    asyncio.get_running_loop().create_task(runner.serve(sockets=[sock]))
    while not runner.started:
        await anyio.sleep(0.01)
    return int(sock.getsockname()[1])


def tls_context() -> Any:
    """A server context with a certificate made now (the client does not verify it)."""
    import tempfile

    import trustme

    from megapresence_anyio import server_context

    cert = trustme.CA().issue_cert("127.0.0.1")
    path = tempfile.mkdtemp() + "/server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(path)
    return server_context(path)


async def operations(server: Any, args: argparse.Namespace) -> None:
    """Cost per call of a direct message and of a broadcast excepting 10% of sessions."""
    import anyio

    rng = random.Random(1)
    target = f"u{args.clients // 2}"  # one user among N, as an app messaging one person would
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        server.direct_to_user(target, {"type": "d", "payload": "x" * 60})
    direct = (time.perf_counter() - start) / calls
    await anyio.sleep(0.5)
    excepted = [f"s{n}" for n in rng.sample(range(args.clients), args.clients // 10)]
    calls = 50
    start = time.perf_counter()
    for _ in range(calls):
        server.broadcast(PATH, "c", {"type": "b", "payload": "x" * 60}, except_session_ids=excepted)
    excepting = (time.perf_counter() - start) / calls
    say("OPS", direct, excepting)


# -------------------------------------------------------------------- websockets


async def websockets_server(
    args: argparse.Namespace, readline: Callable[[], Awaitable[str]]
) -> None:
    from websockets.asyncio.server import broadcast, serve

    connections: set[Any] = set()

    async def handler(ws: Any) -> None:
        connections.add(ws)
        try:
            await ws.wait_closed()
        finally:
            connections.discard(ws)

    message = text_of_size("", "")
    texts = iter(
        json.dumps({"type": "m", "ns": PATH, "payload": text}, separators=(",", ":"))
        for text in chat_texts() * (args.messages // 64 + 1)
    )
    compression = "deflate" if args.deflate else None
    tls = tls_context() if args.system == "websockets-tls" else None
    async with serve(
        handler,
        "127.0.0.1",
        0,
        ping_interval=None,
        max_queue=None,
        compression=compression,
        ssl=tls,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        say("READY", port, rss_kib())
        while len(connections) < args.clients:
            await asyncio.sleep(0.01)

        if await measure_broadcasts(
            args,
            readline,
            lambda: broadcast(connections, message),
            lambda: broadcast(connections, next(texts)),
            asyncio.sleep,
        ):
            return
        burst = args.burst
        step = 0

        async def storm_once() -> None:
            nonlocal step
            step += 1
            for text in storm_texts(step, burst // 2):
                broadcast(connections, text)
            await asyncio.sleep(0)

        await measure(
            args,
            readline,
            storm_once,
            lambda: broadcast(connections, '{"type":"end","payload":"' + SENTINEL + '"}'),
        )
        turns = args.messages // burst
        say("DELIVERIES", len(connections) * (turns * 2 * (burst // 2) + 1))


# --------------------------------------------------------------------- socket.io


async def socketio_server(args: argparse.Namespace, readline: Callable[[], Awaitable[str]]) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=600, ping_timeout=600)
    app = web.Application()
    sio.attach(app)
    joined = 0

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: Any) -> None:
        nonlocal joined
        await sio.enter_room(sid, "r")
        joined += 1

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    say("READY", port, rss_kib())
    while joined < args.clients:
        await asyncio.sleep(0.01)
    message = text_of_size('42["m","', '"]')

    async def broadcast_once() -> None:
        await sio.emit("m", message, room="r")

    await measure(args, readline, broadcast_once)
    await runner.cleanup()


# ------------------------------------------------------------- bare wsproto ceilings


def _frame(text: str) -> bytes:
    data = text.encode()
    return (
        bytes((0x81, len(data))) + data
        if len(data) < 126
        else (bytes((0x81, 126)) + len(data).to_bytes(2, "big") + data)
    )


async def bare_asyncio(args: argparse.Namespace, readline: Callable[[], Awaitable[str]]) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request

    transports: list[asyncio.Transport] = []

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.ws = WSConnection(ConnectionType.SERVER)

        def data_received(self, data: bytes) -> None:
            # The fan-out clients send nothing after the handshake; the churn
            # clients a close frame, answered before the socket is closed.
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self.transport.write(self.ws.send(AcceptConnection()))  # type: ignore[attr-defined]
                    if args.mode != "serve":
                        transports.append(self.transport)  # type: ignore[arg-type]
                elif isinstance(event, CloseConnection):
                    self.transport.write(self.ws.send(event.response()))  # type: ignore[attr-defined]
                    self.transport.close()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Protocol, "127.0.0.1", 0, backlog=4096)
    say("READY", server.sockets[0].getsockname()[1], rss_kib())
    while len(transports) < args.clients:
        await asyncio.sleep(0.01)
    frame = _frame(text_of_size("", ""))

    async def broadcast_once() -> None:
        for transport in transports:
            transport.write(frame)
        await asyncio.sleep(0)

    await measure(args, readline, broadcast_once)


async def bare_trio(args: argparse.Namespace, readline: Callable[[], Awaitable[str]]) -> None:
    import trio
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request

    sockets: list[socket.socket] = []
    backlog: dict[socket.socket, bytearray] = {}

    async def handshake(sock: socket.socket) -> None:
        """The upgrade; in churn (``serve``) also the client's close, answered."""
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            await trio.lowlevel.wait_readable(sock)
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Request):
                    sock.sendall(ws.send(AcceptConnection()))
                    if args.mode != "serve":
                        sockets.append(sock)
                        return
                elif isinstance(event, CloseConnection):
                    sock.sendall(ws.send(event.response()))
                    sock.close()
                    return
            if not data:
                sock.close()
                return

    async def flush(sock: socket.socket) -> None:
        pending = backlog[sock]
        while pending:
            await trio.lowlevel.wait_writable(sock)
            sent = sock.send(pending)
            del pending[:sent]
        del backlog[sock]

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    say("READY", listener.getsockname()[1], rss_kib())

    async def accept(limit: float) -> None:
        accepted = 0
        while accepted < limit:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            accepted += 1
            conn.setblocking(False)
            # As every other system here: asyncio sets it on every transport, and
            # megapresence on every socket it accepts. Without it Nagle's algorithm
            # would merge frames (and delay them), and the ceiling would measure that.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handshake, conn)

    async with trio.open_nursery() as nursery:
        if args.mode == "serve":  # churn: accept until a line arrives
            nursery.start_soon(accept, float("inf"))
            await readline()
            nursery.cancel_scope.cancel()
            return
        await accept(args.clients)
        while len(sockets) < args.clients:
            await trio.sleep(0.01)
        frame = _frame(text_of_size("", ""))

        async def broadcast_once() -> None:
            for sock in sockets:
                if sock in backlog:
                    backlog[sock] += frame
                    continue
                try:
                    sent = sock.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent < len(frame):
                    backlog[sock] = bytearray(frame[sent:])
                    nursery.start_soon(flush, sock)
            await trio.lowlevel.checkpoint()

        await measure(args, readline, broadcast_once)


# --------------------------------------------------------------------------- hub


async def hub_server(args: argparse.Namespace, readline: Callable[[], Awaitable[str]]) -> None:
    """The hub, unthrottled (the per-bridge rate limit would otherwise be what is measured)."""
    from megapresence_anyio import HubServer
    from megapresence_core import HubConfig

    config = HubConfig(hub_id="bench", tokens=["bench"], max_frames_per_second=1e9, frame_burst=1e9)
    async with HubServer(config) as hub:
        say("READY", await hub.listen(), rss_kib())
        await readline()


# ----------------------------------------------------------------------------- main

ASYNCIO_SYSTEMS: dict[str, Callable[..., Awaitable[None]]] = {
    "websockets": websockets_server,
    "websockets-tls": websockets_server,
    "socketio": socketio_server,
    "bare-asyncio": bare_asyncio,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system")
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--burst", type=int, default=1, help="broadcasts per turn of the loop")
    parser.add_argument("--deflate", action="store_true", help="permessage-deflate on")
    parser.add_argument(
        "--mode",
        choices=["fanout", "ops", "serve", "storm"],
        default="fanout",
        help="serve: accept connections until a line arrives (churn)",
    )
    args = parser.parse_args()
    raise_file_limit()
    system = args.system
    if system.startswith("megapresence"):
        import anyio

        backend = "trio" if system.endswith("trio") else "asyncio"
        options = {"use_uvloop": True} if system.endswith("uvloop") else {}

        async def readline() -> str:
            return await anyio.to_thread.run_sync(sys.stdin.readline)

        main_task = hub_server if system == "megapresence-hub" else megapresence
        anyio.run(main_task, args, readline, backend=backend, backend_options=options)
    elif system == "bare-trio":
        import trio

        async def trio_readline() -> str:
            return await trio.to_thread.run_sync(sys.stdin.readline)

        trio.run(bare_trio, args, trio_readline)
    else:

        async def asyncio_readline() -> str:
            return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        asyncio.run(ASYNCIO_SYSTEMS[system](args, asyncio_readline))


if __name__ == "__main__":
    main()
