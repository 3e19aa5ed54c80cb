"""Recovery after a blip, over real sockets: N subscribers of one channel on one server, all
cut off for 2 s while a publisher goes on, then all back with ``since``.

    .venv/bin/python benchmarks/recovery_storm.py --subscribers 10000   # ulimit -n >= N + 256

Two processes: the server (``server BACKEND``: a ``PresenceServer`` with its default
history, every client's session in channel ``c``) and this one, which holds every client
on one selector. Each subscriber subscribes to ``c`` and keeps the position of its
``subscribed``; then every subscriber's socket is reset at once (the server keeps
running, so the sessions wait out their 5 s leave grace), the publisher (one more
client, not cut) publishes ``--missed`` messages during the blip, and each subscriber
reconnects 2 s after the cut (plus a jitter drawn in [0, 0.5) s) and subscribes again:

- ``recover``: with ``since`` its position; it has recovered when ``subscribed`` says
  ``recovered: true`` and every missed message has come, each once, in offset order
  (any gap, duplicate or ``recovered: false`` is counted and reported). A channel
  message before that ``subscribed`` is live (the session rejoined its channel with the
  socket) and is dropped, as docs/protocol.md says: it is among the missed ones;
- ``fresh``: the peer without recovery, as an app that reloads from its own store
  would do: without ``since``; done at its ``subscribed`` (what the reload then costs
  the app's store is not counted).

Reported per backend and mode, medians of ``--runs``: *all recovered* (seconds from the
first reconnect to the last subscriber done), the server's CPU seconds from the cut to
then (user and system, ``/proc/PID/stat``) and this load client's, the server's peak
RSS, and the channel's history as
the server counts it (``megapresence_history_bytes`` from ``/metrics``: one channel,
``--missed`` messages of about 100 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from bench_client import frame_length, masked_text, upgrade_request  # noqa: E402
from bench_server import storm_settings  # noqa: E402
from reconnect_storm import SOURCES, peak_rss_mib, raise_file_limit  # noqa: E402

BACKENDS = ("asyncio", "trio")
MODES = ("recover", "fresh")
CHANNEL = "c"
BLIP, JITTER = 2.0, 0.5
PAYLOAD = {"text": "x" * 60}  # a chat line: about 100 bytes as a channel message


def serve(args: argparse.Namespace) -> None:
    raise_file_limit()
    import anyio

    from megapresence_anyio import HandshakeRequest, Identity, PresenceServer, handle_command

    limits, config = storm_settings()

    def login(request: HandshakeRequest) -> Identity:
        user = request.query["user"]
        return Identity(user_id=user, session_id=user, channels=(CHANNEL,))

    async def main() -> None:
        async with PresenceServer(
            login, paths=None, limits=limits, presence=config, on_message=handle_command
        ) as server:
            port = await server.listen(port=0, backlog=4096)
            print("READY", port, flush=True)
            await anyio.sleep_forever()

    anyio.run(main, backend=args.backend)


class Conn:
    """One client: its socket, its position in ``c``, and what it received since the cut."""

    __slots__ = (
        "answered",
        "buffer",
        "done",
        "epoch",
        "index",
        "offset",
        "offsets",
        "sock",
        "state",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.state = "idle"  # connecting, upgrading, open, waiting
        self.buffer = bytearray()
        self.offset, self.epoch = -1, ""
        #: The channel messages' offsets after the reconnect, and when it was done.
        self.offsets: list[int] = []
        self.done: float | None = None
        #: The subscribe sent after the reconnect was answered: a channel message before
        #: that is live, and among the missed ones that follow ``recovered: true``.
        self.answered = False


class Storm:
    def __init__(self, port: int, subscribers: int, missed: int, mode: str) -> None:
        self.port, self.missed, self.mode = port, missed, mode
        self.conns = [Conn(n) for n in range(subscribers + 1)]  # the last one publishes
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int]] = []
        self.rng = random.Random(1)
        self.subscribed = 0  # answers to the first subscribe
        self.unrecovered = 0
        self.cut_at: float | None = None

    def connect(self, conn: Conn) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((SOURCES[conn.index % len(SOURCES)], 0))
        sock.connect_ex(("127.0.0.1", self.port))
        conn.sock, conn.state = sock, "connecting"
        conn.buffer.clear()
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def send(self, conn: Conn, command: dict[str, Any]) -> None:
        assert conn.sock is not None
        conn.sock.send(masked_text(json.dumps(command)))

    def subscribe(self, conn: Conn) -> None:
        command: dict[str, Any] = {"op": "subscribe", "channel": CHANNEL}
        if self.cut_at is not None and self.mode == "recover":
            command["since"] = {"offset": conn.offset, "epoch": conn.epoch}
        self.send(conn, command)

    def event(self, conn: Conn) -> None:
        sock = conn.sock
        assert sock is not None
        if conn.state == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise RuntimeError("a connection was refused")
            sock.send(upgrade_request(self.port, f"/ws?user=u{conn.index}"))
            conn.state = "upgrading"
            self.selector.modify(sock, selectors.EVENT_READ, conn)
            return
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise RuntimeError(f"the server closed client {conn.index}")
        conn.buffer += data
        if conn.state == "upgrading":
            head, found, rest = bytes(conn.buffer).partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"refused: {head[:40]!r}")
            conn.buffer[:] = rest
            conn.state = "open"
            self.subscribe(conn)
        self.frames(conn)

    def frames(self, conn: Conn) -> None:
        buffer = conn.buffer
        while (length := frame_length(bytes(buffer[:10]))) is not None and len(buffer) >= length:
            size = buffer[1] & 0x7F
            payload = bytes(buffer[2 if size < 126 else (4 if size == 126 else 10) : length])
            del buffer[:length]
            if payload.startswith(b'{"type":"subscribed"'):
                self.answered(conn, json.loads(payload))
            elif payload.startswith(b'{"type":"n"') and conn.answered:
                # The offset without decoding the whole message: the client stays cheap.
                start = payload.index(b'"offset":') + 9
                conn.offsets.append(int(payload[start : payload.index(b",", start)]))
                if len(conn.offsets) == self.missed and conn.done is None:
                    conn.done = time.monotonic()

    def answered(self, conn: Conn, answer: dict[str, Any]) -> None:
        if self.cut_at is None:
            conn.offset, conn.epoch = answer["offset"], answer["epoch"]
            self.subscribed += 1
            return
        conn.answered = True
        if self.mode == "fresh":
            conn.done = time.monotonic()
        elif answer.get("recovered") is not True:
            self.unrecovered += 1
            conn.done = time.monotonic()

    def run_until(self, done: Any, deadline: float) -> None:
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError("the storm did not settle in time")
            while self.timers and self.timers[0][0] <= now:
                self.connect(self.conns[self.timers.pop(0)[1]])
            for key, _ in self.selector.select(0.01):
                self.event(key.data)

    def cut(self) -> None:
        """Reset every subscriber's socket at once; each reconnects after the blip."""
        self.cut_at = time.monotonic()
        for conn in self.conns[:-1]:
            assert conn.sock is not None
            self.selector.unregister(conn.sock)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.sock.close()
            conn.sock, conn.state = None, "waiting"
            self.timers.append((self.cut_at + BLIP + self.rng.random() * JITTER, conn.index))
        self.timers.sort()

    def close(self) -> None:
        for conn in self.conns:
            if conn.sock is not None:
                conn.sock.close()
        self.selector.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def history_bytes(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("megapresence_history_bytes "):
            return int(float(line.split()[1]))
    raise RuntimeError("no megapresence_history_bytes in /metrics")


def storm_once(backend: str, mode: str, subscribers: int, missed: int) -> dict[str, float]:
    served = subprocess.Popen(
        [sys.executable, __file__, "server", backend], stdout=subprocess.PIPE, text=True
    )
    assert served.stdout is not None
    port = int(served.stdout.readline().split()[1])
    storm = Storm(port, subscribers, missed, mode)
    try:
        start = time.monotonic()
        storm.timers = [(start + n / 2000, n) for n in range(len(storm.conns))]
        storm.run_until(lambda: storm.subscribed == len(storm.conns), start + 600)
        cpu, own = cpu_seconds(served.pid), cpu_seconds(os.getpid())
        storm.cut()
        publisher = storm.conns[-1]
        publish = {"op": "publish", "channel": CHANNEL, "type": "n", "payload": PAYLOAD}
        for n in range(missed):  # spread over the first half of the blip
            storm.run_until(lambda n=n: time.monotonic() >= storm.cut_at + n / missed, 1e18)
            storm.send(publisher, publish)
        waiting = storm.conns[:-1]
        storm.run_until(lambda: all(c.done is not None for c in waiting), time.monotonic() + 600)
        cpu, own = cpu_seconds(served.pid) - cpu, cpu_seconds(os.getpid()) - own
        assert storm.cut_at is not None
        first = storm.cut_at + BLIP
        wrong = sum(c.offsets != list(range(c.offset + 1, c.offset + 1 + missed)) for c in waiting)
        return {
            "recovered_s": max(c.done for c in waiting if c.done is not None) - first,
            "cpu_s": cpu,
            "client_cpu_s": own,
            "peak_rss_mib": peak_rss_mib(served.pid),
            "history_bytes": history_bytes(port),
            "not_exact": wrong if mode == "recover" else 0,
            "unrecovered": storm.unrecovered,
        }
    finally:
        storm.close()
        served.kill()
        served.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("server")
    server.add_argument("backend", choices=BACKENDS)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "server":
        serve(args)
        return 0
    raise_file_limit()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.runs):
        for backend in BACKENDS:  # interleaved, so the machine's load falls on all alike
            for mode in MODES:
                run = storm_once(backend, mode, args.subscribers, args.missed)
                print(backend, mode, json.dumps(run), flush=True)
                results.setdefault((backend, mode), []).append(run)
    print(
        f"\n{args.subscribers:,} subscribers, {args.missed} missed each, "
        f"{args.runs} runs: medians\n"
    )
    print(
        "| server | reconnect | all recovered, s | x fresh | server CPU, s | x fresh | "
        "client CPU, s | peak RSS, MiB | history of the channel, KiB | not exact | "
        "recovered: false |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (backend, mode), runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        fresh = results[(backend, "fresh")]
        base_time = statistics.median(r["recovered_s"] for r in fresh)
        base_cpu = statistics.median(r["cpu_s"] for r in fresh)
        print(
            f"| megapresence-{backend} | {mode} | {med('recovered_s'):.2f} | "
            f"{med('recovered_s') / base_time:.2f} | {med('cpu_s'):.2f} | "
            f"{med('cpu_s') / base_cpu:.2f} | {med('client_cpu_s'):.2f} | "
            f"{med('peak_rss_mib'):.0f} | "
            f"{med('history_bytes') / 1024:.1f} | {sum(r['not_exact'] for r in runs):.0f} | "
            f"{sum(r['unrecovered'] for r in runs):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
