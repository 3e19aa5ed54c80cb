"""Reconnect storms: N clients connected to one server, then every one of them cut off
at once, reconnecting with the JavaScript client's backoff.

    .venv/bin/python benchmarks/reconnect_storm.py --clients 10000     # ulimit -n >= N + 500
    .venv/bin/python benchmarks/reconnect_storm.py --clients 2000 --runs 1 --cut drop

Two cuts: ``restart`` (the server process is killed and started again on the same
port) and ``drop`` (every client's socket is reset at once, as a network cut that
both sides notice; the server keeps running). Then each client reconnects as
``megapresence.js`` does after a lost connection: a first delay drawn in
[0.5, 1) s, then doubling per failed attempt (an HTTP refusal, a refused or reset
connection), capped at 30 s.

Two processes: the server (``server SYSTEM``) and this one, which holds every
client on one selector and counts. Systems: ``megapresence-asyncio`` and
``megapresence-trio`` (each client joins channel ``c`` with its own session;
``--watchers`` more connections watch ``c`` in the users view and decode every
presence message into a map), ``websockets`` (a client is admitted at its 101) and
``socketio`` (python-socketio on aiohttp: admitted when the namespace's ``40``
answer arrives); the last two do no presence work. Each server listens with
``--backlog`` (capped by ``net.core.somaxconn``).

Reported per system and cut, from the moment of the cut: *all admitted* (every
client upgraded, and joined for megapresence), *maps complete* (every watcher's
map holds every client; megapresence only), the server's peak RSS, the refusals
the clients received (HTTP answers other than 101), connection attempts refused
or reset, and the kernel's SYN drops (``ListenDrops`` of ``/proc/net/netstat``, which
counts a full accept queue's drops too; system-wide: other work on the machine adds
to them).
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import random
import resource
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import SOURCES, apply_diff, masked_text, take_frame, upgrade_request  # noqa: E402
from bench_server import raise_file_limit, storm_settings, watching_hooks  # noqa: E402

SYSTEMS = ("megapresence-asyncio", "megapresence-trio", "websockets", "socketio")
CHANNEL = "c"
#: megapresence.js: baseDelay 1 s (the first delay is drawn in [0.5, 1)), maxDelay 30 s.
BASE_DELAY, MAX_DELAY = 1.0, 30.0


# ------------------------------------------------------------------- servers


def megapresence_server(args: argparse.Namespace) -> None:
    import anyio

    from megapresence_anyio import PresenceServer

    limits, config = storm_settings()

    login, on_open = watching_hooks(CHANNEL)

    async def main() -> None:
        async with PresenceServer(
            login, paths=None, limits=limits, presence=config, on_open=on_open
        ) as server:
            port = await server.listen(port=args.port, backlog=args.backlog)
            print("READY", port, flush=True)
            await anyio.sleep_forever()

    anyio.run(main, backend="trio" if args.system.endswith("trio") else "asyncio")


def websockets_server(args: argparse.Namespace) -> None:
    import asyncio

    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await ws.wait_closed()

    async def main() -> None:
        async with serve(
            handler, "127.0.0.1", args.port, ping_interval=None, backlog=args.backlog
        ) as server:
            print("READY", next(iter(server.sockets)).getsockname()[1], flush=True)
            await asyncio.Future()

    asyncio.run(main())


def socketio_server(args: argparse.Namespace) -> None:
    import asyncio

    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=600, ping_timeout=600)
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: Any) -> None:
        await sio.enter_room(sid, "r")

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=args.backlog)
        await site.start()
        print("READY", site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.Future()

    asyncio.run(main())


def serve(args: argparse.Namespace) -> None:
    raise_file_limit()
    if args.system.startswith("megapresence"):
        megapresence_server(args)
    elif args.system == "websockets":
        websockets_server(args)
    else:
        socketio_server(args)


# ------------------------------------------------------------------- clients


class Conn:
    """One client: connect, upgrade (and for socket.io, the namespace), then held open."""

    __slots__ = ("attempt", "buffer", "index", "members", "sock", "state", "watcher")

    def __init__(self, index: int, watcher: bool) -> None:
        self.index = index
        self.watcher = watcher
        self.sock: socket.socket | None = None
        self.state = "idle"  # idle, connecting, upgrading, namespace, open, waiting
        self.attempt = 0
        self.buffer = bytearray()
        #: A watcher's map: the members of the channel, by key (None before its snapshot).
        self.members: dict[str, Any] | None = None


class Storm:
    def __init__(self, system: str, port: int, clients: int, watchers: int) -> None:
        self.system, self.port = system, port
        self.presence = system.startswith("megapresence")
        self.wanted = clients
        self.conns = [Conn(n, False) for n in range(clients)]
        if self.presence:
            self.conns += [Conn(clients + n, True) for n in range(watchers)]
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int]] = []
        self.open = 0
        self.refusals = self.failures = 0
        self.rng = random.Random(1)

    def path(self, conn: Conn) -> str:
        if self.system == "socketio":
            return "/socket.io/?EIO=4&transport=websocket"
        if conn.watcher:
            return f"/ws?user=w{conn.index}&watch=1"
        return f"/ws?user=u{conn.index}"

    def connect(self, conn: Conn) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((SOURCES[conn.index % len(SOURCES)], 0))
        sock.connect_ex(("127.0.0.1", self.port))
        conn.sock, conn.state = sock, "connecting"
        conn.buffer.clear()
        conn.members = None
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def drop(self, conn: Conn, *, reset: bool = False) -> None:
        """Close ``conn``'s socket (with a reset: a cut) and schedule its reconnect."""
        sock = conn.sock
        if sock is not None:
            self.selector.unregister(sock)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            conn.sock = None
        if conn.state == "open" and not conn.watcher:
            self.open -= 1
        conn.state = "waiting"
        conn.attempt += 1
        step = min(MAX_DELAY, BASE_DELAY * 2 ** (conn.attempt - 1))
        delay = step / 2 + self.rng.random() * step / 2
        heapq.heappush(self.timers, (time.monotonic() + delay, conn.index))

    def opened(self, conn: Conn) -> None:
        conn.state, conn.attempt = "open", 0
        if not conn.watcher:
            self.open += 1

    def event(self, conn: Conn) -> None:
        sock = conn.sock
        assert sock is not None
        if conn.state == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.failures += 1
                self.drop(conn)
                return
            sock.send(upgrade_request(self.port, self.path(conn)))
            conn.state = "upgrading"
            self.selector.modify(sock, selectors.EVENT_READ, conn)
            return
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            data = b""
        if not data:
            if conn.state != "open":
                self.failures += 1
            self.drop(conn)
            return
        conn.buffer += data
        if conn.state == "upgrading":
            head, found, rest = bytes(conn.buffer).partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.refusals += 1
                self.drop(conn)
                return
            conn.buffer[:] = rest
            if self.system == "socketio":
                conn.state = "namespace"
                sock.send(masked_text("40"))
            else:
                self.opened(conn)
        self.frames(conn)

    def frames(self, conn: Conn) -> None:
        while frame := take_frame(conn.buffer):
            _, payload, _ = frame
            if conn.state == "namespace" and payload.startswith(b"40"):
                self.opened(conn)
            elif conn.watcher:
                self.watch(conn, payload)

    def watch(self, conn: Conn, payload: bytes) -> None:
        if payload.startswith(b'{"type":"presence.state"'):
            conn.members = dict(json.loads(payload)["members"])
        elif payload.startswith(b'{"type":"presence.diff"') and conn.members is not None:
            apply_diff(conn.members, json.loads(payload))

    def complete(self) -> bool:
        return all(
            c.state == "open" and c.members is not None and len(c.members) >= self.wanted
            for c in self.conns
            if c.watcher
        )

    def settle(self, deadline: float) -> tuple[float | None, float | None]:
        """Run until every client is admitted and every map is complete: when each was."""
        admitted = complete = None
        while admitted is None or (complete is None and self.presence):
            now = time.monotonic()
            if now > deadline:
                break
            while self.timers and self.timers[0][0] <= now:
                _, index = heapq.heappop(self.timers)
                self.connect(self.conns[index])
            wait = min(0.05, max(0.0, self.timers[0][0] - now)) if self.timers else 0.05
            for key, _ in self.selector.select(wait):
                self.event(key.data)
            now = time.monotonic()
            if admitted is None and self.open == self.wanted:
                admitted = now
            if complete is None and self.presence and admitted is not None and self.complete():
                complete = now
        return admitted, complete

    def start_all(self, per_second: float) -> None:
        """The first connections, paced (this is not the storm)."""
        start = time.monotonic()
        for n, conn in enumerate(self.conns):
            heapq.heappush(self.timers, (start + n / per_second, conn.index))

    def close(self) -> None:
        for conn in self.conns:
            if conn.sock is not None:
                self.selector.unregister(conn.sock)
                conn.sock.close()
                conn.sock = None
        self.selector.close()

    def cut(self) -> None:
        for conn in self.conns:
            conn.attempt = 0
            self.drop(conn, reset=True)


def listen_drops() -> int:
    """The kernel's ``ListenDrops``: SYNs and handshakes a listening socket dropped, its
    full accept queue (``ListenOverflows``, counted in both) among them."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    names, values = lines[0].split(), lines[1].split()
    return int(values[names.index("ListenDrops")])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(system: str, port: int, backlog: int) -> subprocess.Popen[str]:
    served = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "server",
            system,
            "--port",
            str(port),
            "--backlog",
            str(backlog),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert served.stdout is not None
    line = served.stdout.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"{system} did not start")
    return served


def storm_once(
    system: str, cut: str, clients: int, watchers: int, backlog: int
) -> dict[str, float]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    served = start_server(system, port, backlog)
    storm = Storm(system, port, clients, watchers)
    try:
        storm.start_all(per_second=2000)
        admitted, complete = storm.settle(time.monotonic() + 600)
        if admitted is None or (storm.presence and complete is None):
            raise RuntimeError(f"{system}: the first connections did not settle")
        storm.refusals = storm.failures = 0
        drops = listen_drops()
        started = time.monotonic()
        if cut == "restart":
            served.kill()
            served.wait()
            storm.cut()  # the clients see the kill as a lost connection (1006)
            served = start_server(system, port, backlog)
        else:
            storm.cut()
        admitted, complete = storm.settle(started + 600)
        return {
            "admitted_s": (admitted or float("nan")) - started,
            "complete_s": (complete or float("nan")) - started,
            "peak_rss_mib": peak_rss_mib(served.pid),
            "refusals": storm.refusals,
            "failures": storm.failures,
            "syn_drops": listen_drops() - drops,
        }
    finally:
        storm.close()
        served.kill()
        served.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("server")
    server.add_argument("system", choices=SYSTEMS)
    server.add_argument("--port", type=int, default=0)
    server.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--cut", choices=["restart", "drop", "both"], default="both")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    args = parser.parse_args()
    if args.command == "server":
        serve(args)
        return 0
    raise_file_limit()
    need = args.clients + args.watchers + 256
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        sys.exit(f"this needs an open-file limit of at least {need} (ulimit -n)")
    cuts = ["restart", "drop"] if args.cut == "both" else [args.cut]
    systems = args.systems.split(",")
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {s: [] for s in systems} for c in cuts
    }
    for _ in range(args.runs):
        for cut in cuts:
            for system in systems:  # interleaved, so the machine's load falls on all alike
                run = storm_once(system, cut, args.clients, args.watchers, args.backlog)
                print(cut, system, json.dumps(run), flush=True)
                results[cut][system].append(run)
    print(
        f"\nN = {args.clients:,} clients ({args.watchers} watchers for megapresence), "
        f"backlog {args.backlog}, {args.runs} runs: medians\n"
    )
    print(
        "| cut | system | all admitted, s | maps complete, s | x websockets (admitted) | "
        "peak RSS, MiB | refusals | failed attempts | SYN drops |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cut in cuts:
        base = statistics.median(
            r["admitted_s"]
            for r in results[cut].get("websockets", []) or [{"admitted_s": float("nan")}]
        )
        for system in systems:
            runs = results[cut][system]

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            last = med("complete_s") if system.startswith("megapresence") else med("admitted_s")
            print(
                f"| {cut} | {system} | {med('admitted_s'):.2f} | "
                f"{med('complete_s'):.2f} | {last / base:.2f} | {med('peak_rss_mib'):.0f} | "
                f"{med('refusals'):.0f} | {med('failures'):.0f} | {med('syn_drops'):.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
