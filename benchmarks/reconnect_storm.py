"""Reconnect storms: N clients connected to one server, then every one of them cut off
at once, reconnecting with the JavaScript client's backoff.

    .venv/bin/python benchmarks/reconnect_storm.py --clients 10000     # ulimit -Hn >= N + 300
    .venv/bin/python benchmarks/reconnect_storm.py --clients 2000 --cut drop --socketio

Two cuts: ``restart`` (the server process is killed and started again on the same
port) and ``drop`` (every client's socket is reset at once, as a network cut that
both sides notice; the server keeps running). Then each client reconnects as
``megapresence.js`` does after a lost connection: a first delay drawn in
[0.5, 1) s, then doubling per failed attempt (an HTTP refusal, a refused or reset
connection), capped at 30 s.

The server runs in one process (``server SYSTEM``) and the clients in ``--procs``
load processes (``driver``), each holding its slice of the clients (and of the
watchers) on its own selector, so no one Python loop paces the storm; this process
starts them, makes the cut and gathers when each slice was back, on the one
monotonic clock they share. Systems: ``megapresence-asyncio`` and
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
or reset, the kernel's SYN drops (``ListenDrops`` of ``/proc/net/netstat``, which
counts a full accept queue's drops too; system-wide: other work on the machine adds
to them) and the load processes' CPU (if near the storm's time times their number,
the load, not the server, set the pace).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import os
import random
import resource
import select
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
#: Load processes: each holds N / LOAD_PROCS clients on its own selector, so one
#: Python loop's latency does not pace the storm.
LOAD_PROCS = 4
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

    __slots__ = ("attempt", "buffer", "due", "index", "members", "sock", "state", "watcher")

    def __init__(self, index: int, watcher: bool) -> None:
        self.index = index
        self.watcher = watcher
        self.sock: socket.socket | None = None
        self.state = "idle"  # idle, connecting, upgrading, namespace, open, waiting
        self.attempt = 0
        #: When its one pending reconnect is due: a timer for any other time is stale
        #: (a cut reschedules a client the server's kill had already scheduled).
        self.due = 0.0
        self.buffer = bytearray()
        #: A watcher's map: the members of the channel, by key (None before its snapshot).
        self.members: dict[str, Any] | None = None


class Storm:
    """One load process's slice of the clients (and of the watchers) on one selector."""

    def __init__(
        self, system: str, port: int, clients: range, watchers: list[int], total: int
    ) -> None:
        self.system, self.port = system, port
        self.presence = system.startswith("megapresence")
        self.wanted = len(clients)
        #: Every watcher's map is complete when it holds this many members.
        self.total = total
        self.conns = {n: Conn(n, False) for n in clients}
        if self.presence:
            self.conns.update((n, Conn(n, True)) for n in watchers)
        self.watching = any(conn.watcher for conn in self.conns.values())
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int]] = []
        self.open = 0
        self.refusals = self.failures = 0
        self.rng = random.Random(clients.start)

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
        conn.due = time.monotonic() + delay
        heapq.heappush(self.timers, (conn.due, conn.index))

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
            c.state == "open" and c.members is not None and len(c.members) >= self.total
            for c in self.conns.values()
            if c.watcher
        )

    def serve(self) -> None:
        """The load process's loop, driven over stdin: after the first connections and
        after each ``cut``, print ``DONE <admitted> <complete> <refusals> <failures>
        <CPU s>`` once this slice's clients are all admitted and its watchers' maps
        complete (monotonic times, one clock for every process); ``quit`` ends it."""
        commands = sys.stdin.buffer.fileno()
        self.selector.register(commands, selectors.EVENT_READ, None)
        pending = b""
        admitted: float | None = None
        reported = False
        cpu = time.process_time()
        while True:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                due, index = heapq.heappop(self.timers)
                if self.conns[index].due == due:
                    self.connect(self.conns[index])
            wait = min(0.05, max(0.0, self.timers[0][0] - now)) if self.timers else 0.05
            for key, _ in self.selector.select(wait):
                if key.data is not None:
                    self.event(key.data)
                    continue
                data = os.read(commands, 4096)
                if not data:  # the coordinator is gone
                    return
                pending += data
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    if line.strip() == b"quit":
                        return
                    if line.strip() == b"cut":
                        self.refusals = self.failures = 0
                        admitted, reported, cpu = None, False, time.process_time()
                        self.cut()
            now = time.monotonic()
            if admitted is None and self.open == self.wanted:
                admitted = now
            if reported or admitted is None or (self.watching and not self.complete()):
                continue
            reported = True
            print(
                "DONE",
                admitted,
                now if self.watching else admitted,
                self.refusals,
                self.failures,
                time.process_time() - cpu,
                flush=True,
            )

    def start_all(self, per_second: float) -> None:
        """The first connections, paced (this is not the storm)."""
        start = time.monotonic()
        for n, conn in enumerate(self.conns.values()):
            conn.due = start + n / per_second
            heapq.heappush(self.timers, (conn.due, conn.index))

    def close(self) -> None:
        for conn in self.conns.values():
            if conn.sock is not None:
                self.selector.unregister(conn.sock)
                conn.sock.close()
                conn.sock = None
        self.selector.close()

    def cut(self) -> None:
        for conn in self.conns.values():
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


def booting_env() -> dict[str, str]:
    """The server's environment, with bytecode caching on: an installed package (the
    peers in site-packages, megapresence from a wheel) boots from its cached bytecode,
    so a restart measures that boot, not a compile of every module."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


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
        env=booting_env(),
    )
    assert served.stdout is not None
    line = served.stdout.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"{system} did not start")
    return served


class Load:
    """One load process (``driver``) holding a slice of the clients, over its pipes."""

    def __init__(self, args: argparse.Namespace, system: str, port: int, procs: int, k: int):
        share, extra = divmod(args.clients, procs)
        first = k * share + min(k, extra)
        count = share + (k < extra)
        watchers = [args.clients + w for w in range(args.watchers) if w % procs == k]
        self.popen = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "driver",
                system,
                "--port",
                str(port),
                "--first",
                str(first),
                "--count",
                str(count),
                "--total",
                str(args.clients),
                "--watcher-ids",
                ",".join(map(str, watchers)),
                "--rate",
                str(args.rate / procs),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def done(self, deadline: float) -> list[float]:
        """The slice's ``DONE`` figures: admitted, complete, refusals, failures, CPU."""
        assert self.popen.stdout is not None
        ready, _, _ = select.select(
            [self.popen.stdout], [], [], max(0.0, deadline - time.monotonic())
        )
        line = self.popen.stdout.readline() if ready else ""
        if not line.startswith("DONE"):
            raise RuntimeError(f"a load process did not finish: {line.strip() or 'timeout'}")
        return [float(word) for word in line.split()[1:]]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.send("quit")
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


def storm_once(system: str, cut: str, args: argparse.Namespace) -> dict[str, float]:
    """One storm: connect every client, cut them all off, and time their return."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    served = start_server(system, port, args.backlog)
    loads: list[Load] = []
    try:
        loads = [Load(args, system, port, args.procs, k) for k in range(args.procs)]
        deadline = time.monotonic() + args.timeout
        for load in loads:
            load.done(deadline)  # the first connections: not the storm
        drops = listen_drops()
        started = time.monotonic()
        if cut == "restart":
            served.kill()
            served.wait()
            for load in loads:  # the clients see the kill as a lost connection (1006)
                load.send("cut")
            served = start_server(system, port, args.backlog)
        else:
            for load in loads:
                load.send("cut")
        slices = [load.done(started + args.timeout) for load in loads]
        admitted = max(s[0] for s in slices)
        return {
            "admitted_s": admitted - started,
            "complete_s": max(admitted, *(s[1] for s in slices)) - started,
            "peak_rss_mib": peak_rss_mib(served.pid),
            "refusals": sum(s[2] for s in slices),
            "failures": sum(s[3] for s in slices),
            "syn_drops": listen_drops() - drops,
            "load_cpu_s": sum(s[4] for s in slices),
        }
    finally:
        for load in loads:
            load.close()
        served.kill()
        served.wait()


def drive(args: argparse.Namespace) -> None:
    """A load process: its slice of the clients, paced in, then cut when told."""
    raise_file_limit()
    watchers = [int(n) for n in args.watcher_ids.split(",") if n]
    clients = range(args.first, args.first + args.count)
    storm = Storm(args.system, args.port, clients, watchers, args.total)
    try:
        storm.start_all(per_second=args.rate)
        storm.serve()
    finally:
        storm.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("server")
    server.add_argument("system", choices=SYSTEMS)
    server.add_argument("--port", type=int, default=0)
    server.add_argument("--backlog", type=int, default=4096)
    driver = sub.add_parser("driver")
    driver.add_argument("system", choices=SYSTEMS)
    driver.add_argument("--port", type=int, required=True)
    driver.add_argument("--first", type=int, required=True)
    driver.add_argument("--count", type=int, required=True)
    driver.add_argument("--total", type=int, required=True)
    driver.add_argument("--watcher-ids", default="")
    driver.add_argument("--rate", type=float, default=500)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1, help="repetitions, interleaved")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--cut", choices=["restart", "drop", "both"], default="both")
    parser.add_argument("--systems", default=",".join(SYSTEMS[:3]))
    parser.add_argument("--socketio", action="store_true", help="add socketio (slow)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a storm may take")
    parser.add_argument(
        "--procs", type=int, default=LOAD_PROCS, help="load processes, each with N / procs"
    )
    parser.add_argument(
        "--rate", type=float, default=2000, help="first connections per second (all processes)"
    )
    args = parser.parse_args()
    if args.command == "server":
        serve(args)
        return 0
    if args.command == "driver":
        drive(args)
        return 0
    raise_file_limit()
    need = args.clients + args.watchers + 256
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        sys.exit(f"this needs an open-file limit of at least {need} (ulimit -n)")
    cuts = ["restart", "drop"] if args.cut == "both" else [args.cut]
    systems = args.systems.split(",") + (["socketio"] if args.socketio else [])
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {s: [] for s in systems} for c in cuts
    }
    began = time.monotonic()
    for _ in range(args.runs):
        for cut in cuts:
            for system in systems:  # interleaved, so the machine's load falls on all alike
                try:
                    run = storm_once(system, cut, args)
                except RuntimeError as exc:
                    print(cut, system, "failed:", exc, flush=True)
                    continue
                print(cut, system, json.dumps(run), flush=True)
                results[cut][system].append(run)
    print(
        f"\nN = {args.clients:,} clients ({args.watchers} watchers for megapresence), "
        f"backlog {args.backlog}, {args.procs} load processes, {args.runs} runs: medians; "
        f"{time.monotonic() - began:.0f} s in all\n"
    )
    print(markdown(results, cuts, systems))
    return 0


def markdown(
    results: dict[str, dict[str, list[dict[str, float]]]], cuts: list[str], systems: list[str]
) -> str:
    """Medians per cut and system; *x websockets* is megapresence's maps complete (the
    others' all admitted) over websockets' all admitted: issue 19 asks for <= 0.75."""
    lines = [
        "| cut | system | all admitted, s | maps complete, s | x websockets | "
        "server peak RSS, MiB | refusals | failed attempts | SYN drops | load CPU, s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cut in cuts:
        runs = results[cut].get("websockets") or [{"admitted_s": float("nan")}]
        base = statistics.median(r["admitted_s"] for r in runs)
        for system in systems:
            if not results[cut][system]:
                lines.append(f"| {cut} | {system} | failed | | | | | | | |")
                continue

            def med(key: str, runs: list[dict[str, float]] = results[cut][system]) -> float:
                return statistics.median(r[key] for r in runs)

            presence = system.startswith("megapresence")
            last = med("complete_s") if presence else med("admitted_s")
            complete = f"{med('complete_s'):.2f}" if presence else ""
            lines.append(
                f"| {cut} | {system} | {med('admitted_s'):.2f} | {complete} | "
                f"{last / base:.2f} | {med('peak_rss_mib'):.0f} | {med('refusals'):,.0f} | "
                f"{med('failures'):,.0f} | {med('syn_drops'):,.0f} | {med('load_cpu_s'):.1f} |"
            )
    for cut in cuts:
        if results[cut].get("websockets"):
            drops = statistics.median(r["syn_drops"] for r in results[cut]["websockets"])
            lines.append(
                f"\nIssue 19, {cut}: maps complete <= 0.75 x websockets and SYN drops <= "
                f"websockets' ({drops:,.0f})."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
