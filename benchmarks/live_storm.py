"""The join storm over real sockets: J sessions join one channel within a second while W
connections watch it (users view), with the presence window at its default and at 0.

.venv/bin/python benchmarks/live_storm.py                      # the table of the README
.venv/bin/python benchmarks/live_storm.py --joins 2000 --watchers 200 --window 0

Three processes: the server (``PresenceServer`` on asyncio; each watcher is subscribed in
``on_open``, each joiner joins the channel with its identity), the joiners (open J sockets
paced over one second, read their 101s, hold them) and the watchers (this process: W
sockets on one selector, every frame decoded and applied to the watcher's map). Reported
per watcher: the messages and bytes received after its snapshot; the server's CPU time
(user + system, from /proc) per join, from the first join to the last watcher's complete
map; when the joiners had read every 101; and when every watcher's map held every member,
counted from the first join request and from the last one.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import apply_diff, take_frame, upgrade_request
from bench_server import watching_hooks

CHANNEL = "room"


# ------------------------------------------------------------------- server


def server(args: argparse.Namespace) -> None:
    import anyio

    from megapresence_anyio import PresenceServer, SocketLimits
    from megapresence_core import Limits, PresenceConfig

    # Every client comes from 127.0.0.1; the channel holds the watchers and the joiners;
    # no keepalive pings during a run (the watchers' reader may lag by more than 20 s).
    limits = SocketLimits(
        max_pending_per_address=1024,
        max_connections=30_000,
        max_connections_per_address=30_000,
        ping_interval=3600,
    )
    config = PresenceConfig(
        presence_window=args.window, limits=Limits(max_members_per_channel=50_000)
    )

    login, on_open = watching_hooks(CHANNEL)

    async def main() -> None:
        async with PresenceServer(
            login, paths=None, limits=limits, presence=config, on_open=on_open
        ) as presence:
            print("READY", await presence.listen(port=0), flush=True)
            await anyio.sleep_forever()

    anyio.run(main)


# ------------------------------------------------------------------ joiners


def joiners(args: argparse.Namespace) -> None:
    """Open ``--joins`` sockets over one second, in 20 waves; read every 101; hold them."""
    waves, held = 20, []
    print("GO", time.monotonic(), flush=True)
    start = time.monotonic()
    for wave in range(waves):
        for n in range(wave * args.joins // waves, (wave + 1) * args.joins // waves):
            sock = socket.create_connection(("127.0.0.1", args.port))
            sock.sendall(upgrade_request(args.port, f"/ws?user=j{n}"))
            held.append(sock)
        time.sleep(max(0.0, start + (wave + 1) / waves - time.monotonic()))
    print("SENT", time.monotonic(), flush=True)
    for sock in held:
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101"), answer[:80]
    print("JOINED", time.monotonic(), flush=True)
    sys.stdin.readline()  # hold the sockets until told


# ----------------------------------------------------------------- watchers


class Watcher:
    """One watcher's socket. A ``full`` watcher decodes every message into its map; the
    others count members by their ``"userId"`` keys (one per member in the users view;
    nobody leaves or changes in this storm), which the full ones check."""

    __slots__ = ("buffer", "bytes", "complete_at", "count", "full", "members", "messages", "sock")

    def __init__(self, sock: socket.socket, full: bool) -> None:
        self.sock = sock
        self.full = full
        self.buffer = bytearray()
        self.members: dict[str, Any] = {}
        self.count = -1  # members; -1 until the snapshot
        self.messages = self.bytes = 0
        self.complete_at: float | None = None

    def feed(self, data: bytes, now: float, wanted: int) -> None:
        buffer = self.buffer
        buffer += data
        while frame := take_frame(buffer):
            opcode, payload, length = frame
            if opcode == 9:  # a keepalive ping: answer it (masked with zeros)
                self.sock.sendall(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                continue
            if opcode != 1:
                raise ConnectionError(f"a watcher got a frame of opcode {opcode}: {payload[:80]!r}")
            if payload.startswith(b'{"type":"presence.state"'):
                self.count = payload.count(b'"userId"')
                if self.full:
                    self.members = dict(json.loads(payload)["members"])
            elif payload.startswith(b'{"type":"presence.diff"') and self.count >= 0:
                self.messages += 1
                self.bytes += length
                self.count += payload.count(b'"userId"')
                if self.full:
                    message = json.loads(payload)
                    apply_diff(self.members, message)
                    assert (len(self.members), message["leaves"]) == (self.count, {})
            if self.complete_at is None and self.count >= wanted:
                self.complete_at = now


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def storm(joins: int, watchers: int, window: float) -> dict[str, float]:
    here = [sys.executable, __file__]
    served = subprocess.Popen(
        [*here, "server", "--window", str(window)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert served.stdout is not None
        port = int(served.stdout.readline().split()[1])
        selector = selectors.DefaultSelector()
        watching = []
        for n in range(watchers):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(upgrade_request(port, f"/ws?user=w{n}&watch=1"))
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            sock.setblocking(False)
            watcher = Watcher(sock, full=n < 5)
            watcher.feed(rest, time.monotonic(), 0)
            selector.register(sock, selectors.EVENT_READ, watcher)
            watching.append(watcher)
        wanted = watchers + joins

        def pump(timeout: float) -> None:
            for key, _ in selector.select(timeout):
                watcher: Watcher = key.data
                watcher.feed(key.fileobj.recv(1 << 20), time.monotonic(), wanted)  # type: ignore[union-attr]

        while not all(w.count == watchers for w in watching):
            pump(1)
        for watcher in watching:
            watcher.messages = watcher.bytes = 0
        cpu = cpu_of(served.pid)
        joining = subprocess.Popen(
            [*here, "joiners", "--port", str(port), "--joins", str(joins)],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
        )
        assert joining.stdout is not None
        assert joining.stdin is not None
        go = float(joining.stdout.readline().split()[1])
        os.set_blocking(joining.stdout.fileno(), False)
        joined: float | None = None
        sent = go
        deadline = time.monotonic() + 600
        while joined is None or not all(w.complete_at for w in watching):
            assert time.monotonic() < deadline, "the storm did not settle in 10 minutes"
            assert joining.poll() is None, "the joiners failed"
            pump(0.05)
            line = joining.stdout.readline()
            if line.startswith("SENT"):
                sent = float(line.split()[1])
            if line.startswith("JOINED"):
                joined = float(line.split()[1])
        cpu = cpu_of(served.pid) - cpu
        joining.stdin.write("\n")
        joining.stdin.close()
        joining.wait()
        last = max(w.complete_at or 0.0 for w in watching)
        return {
            "messages": statistics.mean(w.messages for w in watching),
            "max_messages": max(w.messages for w in watching),
            "kib": statistics.mean(w.bytes for w in watching) / 1024,
            "cpu_us_per_join": cpu / joins * 1e6,
            "complete_s": last - go,
            "joined_s": (joined or go) - go,
            "after_sent_s": last - sent,
        }
    finally:
        served.terminate()
        served.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "server", "joiners"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--joins", type=int)
    parser.add_argument("--watchers", type=int)
    parser.add_argument("--window", type=float)
    args = parser.parse_args()
    if args.role == "server":
        server(args)
        return
    if args.role == "joiners":
        joiners(args)
        return
    sizes = [(args.joins, args.watchers)] if args.joins else [(2_000, 200), (10_000, 1_000)]
    windows = [args.window] if args.window is not None else [0.05, 0.0]
    print(
        "| joins | watchers | window | messages per watcher (max) | KiB per watcher "
        "| server CPU µs per join | every 101 read, s | every map complete, s "
        "(after the last request) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for joins, watchers in sizes:
        for window in windows:
            r = storm(joins, watchers, window)
            print(
                f"| {joins:,} | {watchers:,} | {window * 1000:g} ms | {r['messages']:,.0f} "
                f"({r['max_messages']:,.0f}) | {r['kib']:,.0f} | {r['cpu_us_per_join']:,.0f} "
                f"| {r['joined_s']:.2f} | {r['complete_s']:.2f} ({r['after_sent_s']:.2f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
