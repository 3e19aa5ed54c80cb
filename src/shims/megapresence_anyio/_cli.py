"""The ``megapresence`` command: ``serve`` (the demo server) and ``hub``.

Tokens stay out of process listings when given through the environment:
``MEGAPRESENCE_HUB_TOKENS`` (comma-separated) for ``hub``, and
``MEGAPRESENCE_HUB_TOKEN`` for ``serve --hub``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence

import anyio

from megapresence_core import (
    ClusterConfig,
    HubConfig,
    HubLinkConfig,
    LocalUsageError,
    PresenceConfig,
    StoreConfig,
)

from ._config import SocketLimits
from ._demo import DemoApp
from ._hub_server import HubServer
from ._server import PresenceServer

__all__ = ["main"]

logger = logging.getLogger("megapresence")


def _channels(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megapresence", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="presence server with a demo page at /")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="USER",
        help="a user allowed to kick (repeatable)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="browser origins allowed to connect (default: any)",
    )
    serve.add_argument("--hub", metavar="URL", help="join a hub, e.g. ws://127.0.0.1:9000/")
    serve.add_argument("--bridge-id", help="this server's id at the hub (default: host:port)")
    serve.add_argument(
        "--channels",
        type=_channels,
        default=("lobby",),
        help="channels this bridge subscribes at the hub (comma-separated)",
    )
    serve.add_argument(
        "--hub-token",
        default=os.environ.get("MEGAPRESENCE_HUB_TOKEN"),
        help="bearer token for the hub (or MEGAPRESENCE_HUB_TOKEN)",
    )
    cluster = serve.add_argument_group("cluster (asyncio backend only)")
    cluster.add_argument(
        "--nats",
        metavar="URL",
        help="fan-out and cluster roster over NATS, e.g. nats://127.0.0.1:4222",
    )
    cluster.add_argument(
        "--redis", metavar="URL", help="per-channel roster in Redis, e.g. redis://127.0.0.1:6379/0"
    )
    cluster.add_argument(
        "--app",
        default="megapresence",
        help="names the NATS subjects and Redis keys shared by one app",
    )
    cluster.add_argument("--instance-id", help="this instance's id (default: random per boot)")
    cluster.add_argument(
        "--reuse-port",
        action="store_true",
        help="share --port with other serve processes (SO_REUSEPORT)",
    )
    cluster.add_argument(
        "--fanout-only", action="store_true", help="NATS fan-out without a cluster roster"
    )
    cluster.add_argument(
        "--cluster-heartbeat",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between cluster heartbeats (default 5)",
    )
    cluster.add_argument(
        "--cluster-ttl",
        type=float,
        default=15.0,
        metavar="S",
        help="a silent instance's members go after this (default 15)",
    )
    cluster.add_argument(
        "--roster-ttl",
        type=float,
        default=60.0,
        metavar="S",
        help="a Redis member expires after this without refresh (default 60)",
    )
    cluster.add_argument(
        "--roster-refresh",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds between Redis roster refreshes (default 20)",
    )

    hub = commands.add_parser("hub", help="the hub that bridges servers")
    hub.add_argument("--host", default="127.0.0.1")
    hub.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    hub.add_argument(
        "--token",
        action="append",
        default=[],
        help="an accepted bearer token (repeatable; or MEGAPRESENCE_HUB_TOKENS)",
    )
    hub.add_argument("--heartbeat", type=float, default=15.0, help="heartbeat interval, s")
    return parser


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            logger.info("received %s: shutting down", signal.Signals(received).name)
            return


async def _serve(args: argparse.Namespace) -> None:
    app = DemoApp(admins=args.admin, default_channels=args.channels)
    hub_config = None
    if args.hub:
        if not args.hub_token:
            raise LocalUsageError("serve --hub needs --hub-token or MEGAPRESENCE_HUB_TOKEN")
        hub_config = HubLinkConfig(
            bridge_id=args.bridge_id or f"{args.host}:{args.port}",
            instance_id=uuid.uuid4().hex,
            channels=args.channels,
            jitter_seed=uuid.uuid4().int & 0xFFFFFFFF,
        )
    instance_id = args.instance_id or uuid.uuid4().hex
    epoch = time.time_ns() // 1_000_000  # a later boot of the same instance id is larger
    cluster_config, cluster, roster_config, roster = None, None, None, None
    if args.nats:
        from megapresence_nats import NatsCluster

        cluster_config = ClusterConfig(
            app=args.app,
            instance_id=instance_id,
            epoch=epoch,
            sync_members=not args.fanout_only,
            heartbeat_interval=args.cluster_heartbeat,
            ttl=args.cluster_ttl,
        )
        cluster = NatsCluster(args.nats, name=f"megapresence-{args.app}-{instance_id}")
    if args.redis:
        from megapresence_redis import RedisRoster

        roster_config = StoreConfig(ttl=args.roster_ttl, refresh_interval=args.roster_refresh)
        roster = RedisRoster(args.redis, app=args.app, instance_id=instance_id, epoch=epoch)
    server = PresenceServer(
        app.authenticate,
        paths=("/ws/",),
        on_open=app.on_open,
        on_message=app.on_message,
        on_close=app.on_close,
        presence=PresenceConfig(hub_link=hub_config, cluster=cluster_config, store=roster_config),
        limits=SocketLimits(allowed_origins=args.allowed_origin),
        hub_url=args.hub,
        hub_token=args.hub_token,
        cluster=cluster,
        roster=roster,
        pages=app.pages,
    )
    app.server = server
    async with server:
        port = await server.listen(args.host, args.port, reuse_port=args.reuse_port)
        print(f"megapresence serving on http://{args.host}:{port}/", flush=True)
        await _until_signal()


async def _hub(args: argparse.Namespace) -> None:
    env = os.environ.get("MEGAPRESENCE_HUB_TOKENS", "")
    tokens = [*args.token, *(t.strip() for t in env.split(",") if t.strip())]
    if not tokens:
        raise LocalUsageError("hub needs at least one --token or MEGAPRESENCE_HUB_TOKENS")
    config = HubConfig(hub_id=uuid.uuid4().hex, tokens=tokens, heartbeat_interval=args.heartbeat)
    async with HubServer(config) as hub:
        port = await hub.listen(args.host, args.port)
        print(f"megapresence hub on ws://{args.host}:{port}/ (hub id {config.hub_id})", flush=True)
        await _until_signal()
        logger.info("draining bridges with 4503")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run = _serve if args.command == "serve" else _hub
    try:
        anyio.run(run, args, backend=args.backend)
    except LocalUsageError as exc:
        print(f"megapresence: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"megapresence: {exc}", file=sys.stderr)
        return 1
    return 0
