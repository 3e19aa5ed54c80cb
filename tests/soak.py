"""The chaos soak (issue 17): churning clients while the processes of two deployments die.

Two deployments of ``megapresence serve`` (the demo app, path ``/ws/chat``) run as real
processes on loopback:

- **hub**: a ``megapresence hub`` and two servers linked to it, one on asyncio and one
  on trio;
- **nats**: a ``nats-server`` and a pair of asyncio servers clustered over it.

A few hundred clients (``megapresence_client.PresenceClient``, half on each deployment)
churn for ``--duration`` seconds (600 by default): they subscribe and unsubscribe in
random presence modes, publish numbered messages, change their metadata, drop their
connection (a blip), and leave and come back, each time to a random server of their
deployment with the same session id. Meanwhile a chaos loop kills (``kill -9`` or
SIGTERM) a random process (the hub, a server, NATS) every few seconds and starts it
again on the same port. One watcher per server subscribes to every channel in the
sessions view.

Then everything is left alone and a convergence checker requires, within ``--settle``
seconds after the leave grace:

- every client that was not stopped for good to be connected, with every subscription
  answered;
- every watcher's map of every channel to equal the truth (the connected clients'
  sessions, their subscriptions and their metadata, as the clients themselves hold
  them), which also says every server agrees on every session;
- each server's ``roster`` to list exactly its deployment's sessions (over NATS: every
  session; through the hub: its own, the two servers' rosters disjoint and together
  every session), and the hub's ``/presence`` to list every session under the server
  the client is connected to;
- every server's ``/readyz`` to say ready (no link left refused), no process to have
  died on its own, no watcher to have received a channel message twice.

It prints its figures and every divergence as one JSON object (and exits 1 if anything
diverged). Run it from the repository (``nats-server`` on the PATH or in /usr/sbin)::

    python -m tests.soak                       # ten minutes, 300 clients
    python -m tests.soak --duration 60 --clients 120 --seed 7

``tests/test_soak.py`` runs a short soak in the test suite (and so under CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from megapresence_client import (
    Backoff,
    ChannelMessage,
    PresenceClient,
    ServerError,
    Subscription,
)

from .servers import find_binary, free_port, wait_for_port

TOKEN = "soak-token"
CHANNELS = ("lobby", "c1", "c2", "c3")
MODES = ("none", "users", "sessions", "count")
PATH = "/ws/chat"
#: The demo app's metadata of a session that never set any.
DEMO_METADATA = {"status": "online", "admin": False}


# ------------------------------------------------------------------ processes


class StartError(Exception):
    """A process did not listen on its port (another program took it, or it failed)."""


@dataclass
class Proc:
    """One process of the deployment, killed and started again on the same port."""

    name: str
    argv: list[str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    #: Times it was found dead without the chaos loop killing it.
    crashes: int = 0

    def start(self) -> None:
        env = {**os.environ, "MEGAPRESENCE_HUB_TOKEN": TOKEN, "MEGAPRESENCE_HUB_TOKENS": TOKEN}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.starts += 1
        deadline = time.monotonic() + 30
        while True:
            try:
                wait_for_port(self.port, timeout=0.5)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise StartError(f"{self.name} did not start on {self.port}: {tail}") from None

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def megapresence(*args: str) -> list[str]:
    return [sys.executable, "-m", "megapresence_anyio", *args]


@dataclass
class Deployment:
    name: str
    #: The hub or NATS.
    middle: Proc
    servers: list[Proc]

    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{s.port}{PATH}" for s in self.servers]

    def procs(self) -> list[Proc]:
        return [self.middle, *self.servers]


def deployments(log_dir: Path, grace: float, log_level: str) -> list[Deployment]:
    common = ("--leave-grace", str(grace), "--channels", "lobby", "--log-level", log_level)
    hub_port = free_port()
    hub = Proc("hub", megapresence("hub", "--port", str(hub_port)), hub_port, log_dir / "hub.log")
    hub_servers = []
    for name, backend in (("A", "asyncio"), ("B", "trio")):
        port = free_port()
        argv = megapresence(
            "--backend",
            backend,
            "serve",
            "--port",
            str(port),
            "--hub",
            f"ws://127.0.0.1:{hub_port}/",
            "--bridge-id",
            name,
            *common,
        )
        hub_servers.append(Proc(name, argv, port, log_dir / f"{name}.log"))
    nats_port = free_port()
    nats = Proc(
        "nats",
        [find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(nats_port)],
        nats_port,
        log_dir / "nats.log",
    )
    nats_servers = []
    for name in ("C", "D"):
        port = free_port()
        argv = megapresence(
            "serve",
            "--port",
            str(port),
            "--nats",
            f"nats://127.0.0.1:{nats_port}",
            "--instance-id",
            name,
            "--app",
            "soak",
            *common,
        )
        nats_servers.append(Proc(name, argv, port, log_dir / f"{name}.log"))
    return [Deployment("hub", hub, hub_servers), Deployment("nats", nats, nats_servers)]


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"null")
        except ValueError:
            return error.code, body.decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return 0, str(error)


# ------------------------------------------------------------------ clients


@dataclass
class Actor:
    """One churning client: its session, and what it did."""

    index: int
    deployment: Deployment
    user: str
    rng: random.Random
    generation: int = 0
    client: PresenceClient | None = None
    sent: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    #: What it did lately, and the errors its servers answered (for the report of a
    #: session that diverged).
    history: deque[str] = field(default_factory=lambda: deque(maxlen=60))

    @property
    def session(self) -> str:
        return f"s{self.index}.{self.generation}"

    def truth(self) -> dict[str, Any] | None:
        """What every watcher should see of this session: channels and metadata
        (None when it is not connected, or stopped for good)."""
        client = self.client
        if client is None or not client.connected or client.detached is not None:
            return None
        metadata = client._metadata if client._metadata is not None else DEMO_METADATA
        return {
            "user": self.user,
            "metadata": metadata,
            "channels": set(client.subscriptions) | {"lobby"},
            "url": client.url,
        }


@dataclass
class Watcher:
    """A client of one server that watches every channel in the sessions view."""

    server: Proc
    deployment: Deployment
    client: PresenceClient | None = None
    seen: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    received: int = 0

    @property
    def session(self) -> str:
        return f"watch-{self.server.name}"


class Soak:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.log_dir = log_dir
        self.deployments = deployments(log_dir, args.grace, args.log_level)
        self.actors = [
            Actor(
                i,
                self.deployments[i % 2],
                user=f"u{i // 3}",
                rng=random.Random(self.rng.random()),
            )
            for i in range(args.clients)
        ]
        self.watchers: list[Watcher] = []
        self.churning = True
        self.chaos_log: list[str] = []
        self.started = time.monotonic()
        #: The wall-clock time of ``started``: the processes' logs say wall-clock times.
        self.started_utc = datetime.now(UTC).isoformat(timespec="milliseconds")

    # -------------------------------------------------------------- run

    @property
    def procs(self) -> list[Proc]:
        return [p for d in self.deployments for p in d.procs()]

    async def start(self) -> None:
        """Start every process; a free port taken meanwhile by another program means
        new ports for everything (they are in each other's command lines)."""
        for attempt in range(3):
            try:
                for proc in self.procs:
                    await anyio.to_thread.run_sync(proc.start)
                break
            except StartError:
                for proc in self.procs:
                    proc.stop()
                if attempt == 2:
                    raise
                self.deployments = deployments(self.log_dir, self.args.grace, self.args.log_level)
        for actor in self.actors:
            actor.deployment = self.deployments[actor.index % 2]
        self.watchers = [Watcher(s, d) for d in self.deployments for s in d.servers]

    async def restart(self, proc: Proc) -> None:
        """Start ``proc`` again on its port (retrying while another program holds it)."""
        for _ in range(10):
            try:
                await anyio.to_thread.run_sync(proc.start)
                return
            except StartError as exc:
                self.chaos_log.append(f"{time.monotonic() - self.started:.1f}s {exc}")
                await anyio.sleep(1.0)
        raise StartError(f"{proc.name} could not start again on {proc.port}")

    async def run(self) -> dict[str, Any]:
        await self.start()
        # Let the servers link up before the clients come.
        await anyio.sleep(1.0)
        try:
            async with anyio.create_task_group() as group:
                for watcher in self.watchers:
                    group.start_soon(self.watch, watcher)
                for actor in self.actors:
                    group.start_soon(self.churn, actor)
                with anyio.move_on_after(self.args.duration):
                    await self.chaos()
                self.churning = False
                report = await self.converge()
                group.cancel_scope.cancel()
        finally:
            for proc in self.procs:
                proc.stop()
        return report

    async def chaos(self) -> None:
        rng = self.rng
        order: list[Proc] = []
        while True:
            await anyio.sleep(rng.uniform(self.args.chaos_min, self.args.chaos_max))
            await self.revive()
            if not order:  # every process in turn, the hub and NATS first, then the servers
                servers = [p for d in self.deployments for p in d.servers]
                middles = [d.middle for d in self.deployments]
                order = rng.sample(servers, len(servers)) + rng.sample(middles, len(middles))
            victim = order.pop()
            how = rng.choice(("kill", "kill", "term"))
            self.chaos_log.append(f"{time.monotonic() - self.started:.1f}s {how} {victim.name}")
            victim.kills += 1
            with anyio.CancelScope(shield=True):  # the end of the soak waits for the restart
                await anyio.to_thread.run_sync(
                    victim.stop, signal.SIGKILL if how == "kill" else signal.SIGTERM
                )
                await anyio.sleep(rng.uniform(0.2, 2.0))
                await self.restart(victim)

    async def revive(self) -> None:
        """Start again any process that died on its own (counted as a crash)."""
        for proc in self.procs:
            if not proc.alive():
                proc.crashes += 1
                self.chaos_log.append(f"{time.monotonic() - self.started:.1f}s CRASH {proc.name}")
                await self.restart(proc)

    def backoff(self, rng: random.Random) -> Backoff:
        return Backoff(first=0.5, first_back_off=2.0, cap=4.0, random=rng.random)

    async def watch(self, watcher: Watcher) -> None:
        url = f"ws://127.0.0.1:{watcher.server.port}{PATH}"
        query = {"user": "watcher", "session": watcher.session}
        async with PresenceClient(
            url, query=query, wait_open=False, backoff=self.backoff(self.rng)
        ) as client:
            watcher.client = client
            for channel in CHANNELS:
                client.subscribe(channel, "sessions", recover=True)
            async for event in client:
                if isinstance(event, ChannelMessage) and isinstance(event.payload, dict):
                    watcher.received += 1
                    key = (event.channel, str(event.payload.get("s")), event.payload.get("n", -1))
                    watcher.seen[key] += 1

    async def churn(self, actor: Actor) -> None:
        rng = actor.rng
        await anyio.sleep(rng.uniform(0, 2))
        while True:
            urls = actor.deployment.urls()
            query = {"user": actor.user, "session": actor.session}
            async with (
                PresenceClient(
                    lambda urls=urls, rng=rng: rng.choice(urls),
                    query=query,
                    wait_open=False,
                    backoff=self.backoff(rng),
                ) as client,
                anyio.create_task_group() as reader,
            ):
                actor.client = client
                actor.stats["sessions"] += 1
                reader.start_soon(self.record_errors, actor, client)
                steps = rng.randint(5, 40)
                while self.churning and steps > 0:
                    steps -= 1
                    await self.step(actor, client, rng)
                    await anyio.sleep(rng.uniform(0.1, self.args.pause))
                if not self.churning:
                    await anyio.sleep_forever()  # stay as it is for the checker
                reader.cancel_scope.cancel()
                actor.stats["leaves"] += 1
                actor.history.append(f"{time.monotonic() - self.started:.1f}s leaves")
            actor.client = None
            # Come back as a new session: one that came back within the grace would be
            # restored with the channels it had, which its new client does not know of.
            actor.generation += 1
            await anyio.sleep(rng.uniform(0, 1.5))

    async def record_errors(self, actor: Actor, client: PresenceClient) -> None:
        """Each ``error`` a server answers ``actor``'s client goes into its history (a
        refused command changed nothing there: a ``busy`` unsubscribe, say)."""
        async for event in client:
            if isinstance(event, ServerError):
                actor.stats[f"error {event.code}"] += 1
                channel = f" {event.channel}" if event.channel else ""
                up = client.url if client.connected else "down"
                actor.history.append(
                    f"{time.monotonic() - self.started:.1f}s {actor.session}"
                    f" error {event.code}{channel} [{up}]"
                )

    async def step(self, actor: Actor, client: PresenceClient, rng: random.Random) -> None:
        action = rng.choices(
            ("subscribe", "unsubscribe", "publish", "metadata", "drop"),
            weights=(3, 2, 4, 2, 1),
        )[0]
        actor.stats[action] += 1
        note = f"{time.monotonic() - self.started:.1f}s {actor.session} {action}"
        up = client.url if client.connected else "down"
        try:
            if action == "subscribe":
                channel, mode = rng.choice(CHANNELS), rng.choice(MODES)
                note += f" {channel} {mode}"
                client.subscribe(channel, mode, recover=True)
            elif action == "unsubscribe":
                left = [c for c in client.subscriptions if c != "lobby"]
                if left:
                    channel = rng.choice(left)
                    note += f" {channel}"
                    await client.unsubscribe(channel)
            elif action == "publish":
                channel = rng.choice(["lobby", *client.subscriptions])
                actor.sent += 1
                await client.publish(channel, "soak", {"s": actor.session, "n": actor.sent})
            elif action == "metadata":
                await client.set_metadata({"v": rng.randint(0, 1000), "by": actor.session})
            else:
                await client.drop()
        except ConnectionError:
            actor.stats["refused_while_down"] += 1
            note += " (refused: not connected)"
        actor.history.append(f"{note} [{up}]")

    # -------------------------------------------------------------- convergence

    async def converge(self) -> dict[str, Any]:
        quiet_at = time.monotonic()
        await self.revive()
        await anyio.sleep(self.args.grace + 1.0)
        deadline = time.monotonic() + self.args.settle
        problems: list[str] = []
        while True:
            problems = await self.check()
            if not problems or time.monotonic() > deadline:
                break
            await anyio.sleep(1.0)
        settle = time.monotonic() - quiet_at
        if problems:
            problems += await self.second_look()
        return self.report(problems, settle)

    def truth(self, deployment: Deployment) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for actor in self.actors:
            if actor.deployment is deployment and (truth := actor.truth()) is not None:
                found[actor.session] = truth
        for watcher in self.watchers:
            client = watcher.client
            if watcher.deployment is deployment and client is not None and client.connected:
                found[watcher.session] = {
                    "user": "watcher",
                    "metadata": DEMO_METADATA,
                    "channels": set(CHANNELS),
                    "url": client.url,
                }
        return found

    async def check(self) -> list[str]:
        problems: list[str] = []
        for proc in self.procs:
            if not proc.alive():
                problems.append(f"{proc.name}: the process is not running")
        for actor in self.actors:
            client = actor.client
            if client is None:
                problems.append(f"{actor.session}: no client (between sessions)")
            elif client.closed is not None:
                problems.append(f"{actor.session}: stopped for good: {client.closed}")
            elif not client.connected:
                problems.append(f"{actor.session}: not connected")
            elif client.detached is not None:
                problems.append(f"{actor.session}: detached: {client.detached}")
            else:
                pending = sorted(c for c, s in client.subscriptions.items() if s.answer is None)
                if pending:
                    problems.append(f"{actor.session}: subscriptions not answered: {pending}")
        for deployment in self.deployments:
            problems += await self.check_deployment(deployment)
        for watcher in self.watchers:
            twice = sorted(k for k, n in watcher.seen.items() if n > 1)
            if twice:
                problems.append(
                    f"{watcher.session}: {len(twice)} channel messages received more than once,"
                    f" e.g. {twice[:3]}"
                )
        return problems

    async def check_deployment(self, deployment: Deployment) -> list[str]:
        problems: list[str] = []
        truth = self.truth(deployment)
        everyone = set(truth)
        for watcher in self.watchers:
            if watcher.deployment is not deployment:
                continue
            client = watcher.client
            if client is None or not client.connected:
                problems.append(f"{watcher.session}: not connected")
                continue
            for channel in CHANNELS:
                subscription = client.subscriptions.get(channel)
                expected = self.expected(truth, channel)
                problems += self.compare_map(watcher, channel, subscription, expected)
            try:
                roster = await client.roster(timeout=5)
            except (ConnectionError, TimeoutError) as exc:
                problems.append(f"{watcher.session}: no roster: {exc!r}")
                continue
            listed = {m.get("sessionId") for m in roster.get("members", [])}
            if deployment.name == "nats":
                wanted = everyone
            else:
                here = f":{watcher.server.port}{PATH}"
                wanted = {s for s, t in truth.items() if str(t["url"]).endswith(here)}
            if listed != wanted:
                problems.append(
                    f"{watcher.server.name} roster: missing {sorted(wanted - listed)[:8]},"
                    f" extra {sorted(str(s) for s in listed - wanted)[:8]}"
                    f" ({len(listed)} listed, {len(wanted)} true)"
                )
        for server in deployment.servers:
            status, body = await anyio.to_thread.run_sync(
                http_get, f"http://127.0.0.1:{server.port}/readyz"
            )
            if status != 200:
                problems.append(f"{server.name} /readyz: {status} {body}")
        if deployment.name == "hub":
            problems += await self.check_hub(deployment, truth)
        return problems

    @staticmethod
    def expected(truth: dict[str, dict[str, Any]], channel: str) -> dict[str, Any]:
        """A sessions view of ``channel`` as the truth says it."""
        return {
            s: {"sessionId": s, "userId": t["user"], "metadata": t["metadata"]}
            for s, t in truth.items()
            if channel in t["channels"]
        }

    async def second_look(self) -> list[str]:
        """After a divergence, each diverging map's fresh snapshot (``sync``): whether the
        server's state is wrong, or only the diffs its watcher was sent."""
        looks: list[tuple[Watcher, str, Subscription, dict[str, Any]]] = []
        for watcher in self.watchers:
            client = watcher.client
            if client is None or not client.connected:
                continue
            truth = self.truth(watcher.deployment)
            for channel, subscription in client.subscriptions.items():
                expected = self.expected(truth, channel)
                if self.compare_map(watcher, channel, subscription, expected):
                    with contextlib.suppress(ConnectionError):
                        await client.sync(channel)
                        looks.append((watcher, channel, subscription, expected))
        await anyio.sleep(2.0)  # every snapshot asked for has come
        notes = []
        for watcher, channel, subscription, expected in looks:
            where = f"{watcher.session} {channel}"
            again = self.compare_map(watcher, channel, subscription, expected)
            verdict = again[0].removeprefix(f"{where}: ") if again else "equals the truth"
            notes.append(f"{where}: a fresh snapshot: {verdict}")
        return notes

    def compare_map(
        self,
        watcher: Watcher,
        channel: str,
        subscription: Subscription | None,
        expected: dict[str, Any],
    ) -> list[str]:
        where = f"{watcher.session} {channel}"
        if subscription is None or not subscription.in_sync:
            return [f"{where}: the map is not in sync"]
        members = subscription.members
        if members == expected:
            return []
        missing = sorted(set(expected) - set(members))
        extra = sorted(set(members) - set(expected))
        wrong = sorted(k for k in set(members) & set(expected) if members[k] != expected[k])
        detail = ""
        if wrong:
            key = wrong[0]
            detail = f"; {key}: has {members[key]}, truth {expected[key]}"
        return [
            f"{where}: missing {missing[:8]} ({len(missing)}), extra {extra[:8]} ({len(extra)}),"
            f" different {wrong[:8]} ({len(wrong)}){detail}"
        ]

    async def check_hub(self, deployment: Deployment, truth: dict[str, Any]) -> list[str]:
        status, body = await anyio.to_thread.run_sync(
            lambda: http_get(
                f"http://127.0.0.1:{deployment.middle.port}/presence",
                {"Authorization": f"Bearer {TOKEN}"},
            )
        )
        if status != 200 or not isinstance(body, dict):
            return [f"hub /presence: {status} {body}"]
        ports = {f":{s.port}{PATH}": s.name for s in deployment.servers}
        wanted = set()
        for session, t in truth.items():
            for suffix, name in ports.items():
                if str(t["url"]).endswith(suffix):
                    wanted.add((name, session))
        listed = {(m.get("bridgeId"), m.get("sessionId")) for m in body.get("members", [])}
        if listed == wanted:
            return []
        return [
            f"hub /presence: missing {sorted(wanted - listed)[:8]} ({len(wanted - listed)}),"
            f" extra {sorted(listed - wanted)[:8]} ({len(listed - wanted)})"
        ]

    # -------------------------------------------------------------- report

    def report(self, problems: list[str], settle: float) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        for actor in self.actors:
            totals.update(actor.stats)
        reconnects = sum(max(0, (a.client.connections if a.client else 0) - 1) for a in self.actors)
        refused_logs = {
            proc.name: proc.log.read_text(errors="replace").count("hub.link.refused")
            for proc in self.procs
            if proc.log.exists()
        }
        return {
            "converged": not problems,
            "seed": self.args.seed,
            "started_utc": self.started_utc,
            "duration_s": self.args.duration,
            "clients": self.args.clients,
            "settle_s": round(settle, 1),
            "operations": dict(sorted(totals.items())),
            "sessions_checked": {d.name: len(self.truth(d)) for d in self.deployments},
            "published": sum(a.sent for a in self.actors),
            "watcher_messages": sum(w.received for w in self.watchers),
            "reconnects_of_current_clients": reconnects,
            "kills": {p.name: p.kills for p in self.procs},
            "crashes": {p.name: p.crashes for p in self.procs},
            "hub_link_refused_log_lines": refused_logs,
            "chaos": self.chaos_log,
            "problems": problems,
            # Every generation of a client that diverged (a ghost is often an earlier one).
            "histories": {
                a.session: list(a.history)
                for a in self.actors
                if any(re.search(rf"\bs{a.index}\.\d+\b", p) for p in problems)
            },
            "logs": str(self.log_dir),
        }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=600, help="chaos time, s (600)")
    parser.add_argument("--clients", type=int, default=300, help="churning clients (300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grace", type=float, default=2.0, help="the servers' leave grace, s")
    parser.add_argument("--settle", type=float, default=30.0, help="time to converge, s")
    parser.add_argument("--pause", type=float, default=2.0, help="longest pause between steps")
    parser.add_argument("--chaos-min", type=float, default=3.0, help="shortest calm, s")
    parser.add_argument("--chaos-max", type=float, default=8.0, help="longest calm, s")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the process logs here")
    parser.add_argument("--log-level", default="warning", help="the servers' log level")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="megapresence-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = anyio.run(Soak(args, log_dir).run)
    return report


def main(argv: list[str] | None = None) -> int:
    report = run(parse(argv))
    print(json.dumps(report, indent=2))
    return 0 if report["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
