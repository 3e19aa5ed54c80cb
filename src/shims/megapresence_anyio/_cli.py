"""The ``megapresence`` command: ``serve`` (a presence server with a demo page) and ``hub``.

The global flags (``--backend``, ``--log-level``, ``--log-format``) may come before
or after the command. Tokens stay out of process listings when given through the
environment: ``MEGAPRESENCE_HUB_TOKENS`` (comma-separated) for ``hub``, and
``MEGAPRESENCE_HUB_TOKEN`` for ``serve --hub``.

A process that cannot start says why in one line on stderr (one JSON object with
``--log-format json``) and exits with a code of its own (``ExitCode``, listed by
``--help``); SIGTERM, SIGHUP or SIGINT drains it and it exits 0 (``serve`` first
hands its clients to the other servers: 4503, within ``--drain-timeout``; alone, 1001).
The listening options of both commands live in ``_listen_options`` and their failures
in ``_cannot_listen``.
"""

from __future__ import annotations

import argparse
import enum
import errno
import ipaddress
import logging
import math
import os
import signal
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Any, NamedTuple, NoReturn

import anyio
import attrs

from megapresence_core import (
    ClusterConfig,
    HubConfig,
    HubLinkConfig,
    LocalUsageError,
    LogLevel,
    PresenceConfig,
    StoreConfig,
    __version__,
)
from megapresence_core.config import DEFAULT_LEAVE_GRACE, DEFAULT_PRESENCE_WINDOW

from ._config import DEFAULT_HUB_LIMITS, DEFAULT_SOCKET_LIMITS, SocketLimits
from ._demo import DemoApp
from ._hub_server import HubServer
from ._jwt import JWT_ALGORITHMS, PUBLIC_KEY_ENV, SECRET_ENV, JwtAuthenticator, read_key
from ._logging import FORMATTERS, configure_logging, log_event
from ._ops import MetricsAccess
from ._server import PresenceServer
from ._tls import client_context, server_context
from ._types import Authenticator, ClusterBackend, RosterBackend, StreamStoreBackend

__all__ = ["ExitCode", "main"]

logger = logging.getLogger("megapresence")


class ExitCode(enum.IntEnum):
    """How ``megapresence`` ended; each failure to start has its own code."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    ADDRESS_IN_USE = 4
    CANNOT_LISTEN = 5
    UNKNOWN_HOST = 6
    NATS_UNREACHABLE = 7
    REDIS_UNREACHABLE = 8
    MISSING_EXTRA = 9
    INTERRUPTED = 130


#: How long ``serve`` waits, on SIGTERM, SIGHUP or SIGINT, for its clients' sessions to move to
#: the servers they reconnect to (a grace of 5 s, and time to spare), before it stops.
DEFAULT_DRAIN_TIMEOUT = 10.0

#: What each exit code means: printed by ``--help``, and the README's table.
EXIT_CODES = {
    ExitCode.OK: "stopped by SIGTERM, SIGHUP or SIGINT, after draining",
    ExitCode.INTERNAL: "a bug: the traceback is in the log",
    ExitCode.USAGE: "an unknown flag or a bad value (a port past 65535, an unknown --log-level)",
    ExitCode.CONFIG: "flags that make no valid configuration (no hub token, a bad --hub URL, "
    "the demo identity past loopback or behind --trusted-proxy without --demo)",
    ExitCode.ADDRESS_IN_USE: "another process listens on --host:--port",
    ExitCode.CANNOT_LISTEN: "--host is not an address of this machine, or the port needs "
    "privileges",
    ExitCode.UNKNOWN_HOST: "--host does not resolve",
    ExitCode.NATS_UNREACHABLE: "--nats: no NATS server answered in time",
    ExitCode.REDIS_UNREACHABLE: "--redis: no Redis server answered in time",
    ExitCode.MISSING_EXTRA: "--nats, --redis, --auth jwt or --backend trio without its extra: "
    "pip install 'megapresence[nats,redis,jwt,trio]'",
    ExitCode.INTERRUPTED: "SIGINT before the signal handlers were installed",
}


class StartupError(Exception):
    """The process cannot start; ``str(error)`` says why and what to change."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------- flags


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block: the usage is one ``--help`` away."""
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def _host(text: str) -> str:
    try:
        text.encode("idna")  # what the resolver will be given
    except UnicodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address") from None
    return text


def _seconds(text: str, *, zero: bool = False) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and (seconds > 0 or (zero and seconds == 0))):
        kind = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
    return seconds


def _seconds_or_zero(text: str) -> float:
    return _seconds(text, zero=True)


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 1 or more")
    return count


def _channels(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _exit_codes_help() -> str:
    lines = [f"  {int(code):>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "exit codes:\n" + "\n".join(lines)


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The flags every command takes, before or after its name.

    After the command they default to ``SUPPRESS``, so a value given before it stands.
    """

    def default(value: str) -> str:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default=default("asyncio"),
        help="event loop (default asyncio; --nats and --redis need asyncio)",
    )
    group.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        default=default("info"),
        help="least severe level logged (default info)",
    )
    group.add_argument(
        "--log-format",
        choices=tuple(FORMATTERS),
        default=default("text"),
        help="text: key=value lines; json: one JSON object a line (default text)",
    )


def _listen_options(parser: argparse.ArgumentParser, *, port: int) -> None:
    group = parser.add_argument_group("listening")
    group.add_argument(
        "--host", type=_host, default="127.0.0.1", help="address or name to listen on"
    )
    group.add_argument(
        "--port", type=_port, default=port, help=f"port (default {port}; 0 picks a free one)"
    )
    group.add_argument("--certfile", help="serve TLS with this certificate chain (PEM)")
    group.add_argument("--keyfile", help="its private key (PEM), if not in --certfile")
    group.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a reverse proxy (address or CIDR range) whose X-Forwarded-For or Forwarded "
        "header is believed for the per-address caps and the logs (repeatable)",
    )
    ops = parser.add_argument_group("metrics and health (/metrics, /healthz, /readyz)")
    ops.add_argument(
        "--metrics-port",
        type=_port,
        help="answer them on this port (plain HTTP) instead of the main one (which then "
        "answers them 404)",
    )
    ops.add_argument(
        "--metrics-token",
        default=os.environ.get("MEGAPRESENCE_METRICS_TOKEN"),
        help="a bearer token that may read /metrics from anywhere (or MEGAPRESENCE_METRICS_TOKEN)",
    )
    ops.add_argument(
        "--metrics-allow",
        action="append",
        default=None,
        metavar="ADDRESS",
        help="addresses or CIDR ranges that may read /metrics without the token "
        "(repeatable; default loopback only)",
    )


def _parser() -> argparse.ArgumentParser:
    epilog = _exit_codes_help()
    parser = _Parser(
        prog="megapresence",
        description="WebSocket presence: serve clients (serve) and link servers (hub).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"megapresence {__version__}")
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _global_options(sub, defaults=False)
        sub.add_argument(
            "--app",
            default="megapresence",
            help="the app's name, in every log line (serve: also its NATS subjects and Redis keys)",
        )
        return sub

    serve = command("serve", "a presence server, with a demo page at /")
    _listen_options(serve, port=8000)
    identity = serve.add_argument_group(
        "identity (default: the demo's ?user=, which lets anyone be anyone: loopback only, "
        "with no --trusted-proxy)"
    )
    identity.add_argument(
        "--auth",
        choices=("jwt",),
        help="jwt: admit only connections with a valid signed token (docs/deploy.md)",
    )
    identity.add_argument(
        "--demo",
        action="store_true",
        help="serve the demo identity (?user=) on an address other than loopback anyway",
    )
    identity.add_argument(
        "--jwt-algorithm",
        choices=JWT_ALGORITHMS,
        default="HS256",
        help=f"the tokens' algorithm (default HS256); the key is read from {SECRET_ENV} "
        f"(HS*) or {PUBLIC_KEY_ENV} (PEM), or --jwt-key-file",
    )
    identity.add_argument(
        "--jwt-key-file", metavar="PATH", help="read the secret or the public key (PEM) from here"
    )
    identity.add_argument("--jwt-audience", metavar="AUD", help="require this aud claim")
    identity.add_argument("--jwt-issuer", metavar="ISS", help="require this iss claim")
    identity.add_argument(
        "--jwt-leeway",
        type=_seconds_or_zero,
        default=0.0,
        metavar="S",
        help="clock skew allowed on exp, nbf and iat (default 0)",
    )
    serve.add_argument(
        "--no-page", action="store_true", help="serve no demo page at / (the JS client stays)"
    )
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
        help="browser origins allowed to connect (repeatable; default: any)",
    )
    serve.add_argument(
        "--channels",
        type=_channels,
        default=("lobby",),
        help="channels this server subscribes at the hub (comma-separated; default lobby)",
    )
    live = serve.add_argument_group("live presence")
    for flag, default, meaning in (
        (
            "--presence-window",
            DEFAULT_PRESENCE_WINDOW,
            "a channel's changes reach its watchers at most once per window; 0 sends them at once",
        ),
        (
            "--leave-grace",
            DEFAULT_LEAVE_GRACE,
            "a session whose socket closed stays listed this long, so a reload does not flap; "
            "0 disables it",
        ),
    ):
        live.add_argument(
            flag,
            type=_seconds_or_zero,
            default=default,
            metavar="S",
            help=f"{meaning} (default {default:g})",
        )
    live.add_argument(
        "--drain-timeout",
        type=_seconds_or_zero,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help="on SIGTERM, SIGHUP or SIGINT, clients are closed with 4503 and their sessions "
        "move to the servers they reconnect to (without --hub or --nats: 1001, nowhere to move); "
        f"wait at most this long for that, then stop (default {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    caps = serve.add_argument_group("connection caps")
    for flag, default, meaning in (
        ("--max-connections", DEFAULT_SOCKET_LIMITS.max_connections, "open sockets in all; 503"),
        (
            "--max-connections-per-address",
            DEFAULT_SOCKET_LIMITS.max_connections_per_address,
            "open sockets from one client address; 429",
        ),
    ):
        caps.add_argument(
            flag, type=_count, default=default, metavar="N", help=f"{meaning} (default {default})"
        )
    hub_link = serve.add_argument_group("hub link")
    hub_link.add_argument("--hub", metavar="URL", help="join a hub, e.g. ws://127.0.0.1:9000/")
    hub_link.add_argument(
        "--bridge-id",
        help="this server's id at the hub (default host:port; host:instance-id with --port 0)",
    )
    hub_link.add_argument(
        "--hub-token",
        default=os.environ.get("MEGAPRESENCE_HUB_TOKEN"),
        help="bearer token for the hub (or MEGAPRESENCE_HUB_TOKEN)",
    )
    hub_link.add_argument(
        "--hub-cafile", help="wss:// hubs: trust this CA (PEM) instead of the system's"
    )
    hub_link.add_argument(
        "--hub-certfile", help="wss:// hubs: present this client certificate (PEM)"
    )
    hub_link.add_argument("--hub-keyfile", help="its private key, if not in --hub-certfile")
    cluster = serve.add_argument_group("cluster (asyncio backend only)")
    cluster.add_argument(
        "--nats",
        metavar="URL",
        help="fan-out and cluster roster over NATS, e.g. nats://127.0.0.1:4222",
    )
    cluster.add_argument(
        "--redis",
        metavar="URL",
        help="per-channel roster and channel streams (history, publications) in Redis, "
        "e.g. redis://127.0.0.1:6379/0",
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
        "--history",
        choices=("redis", "jetstream", "local"),
        help="where channel history lives: redis (the default with --redis; a client "
        "recovers on any instance), jetstream (the default with --nats alone; local if "
        "the server has no JetStream) or local (each instance its own)",
    )
    for flag, default, meaning in (
        ("--cluster-heartbeat", 5.0, "seconds between cluster heartbeats"),
        ("--cluster-ttl", 15.0, "a silent instance's members go after this many seconds"),
        ("--roster-ttl", 60.0, "a Redis member expires after this many seconds unrefreshed"),
        ("--roster-refresh", 20.0, "seconds between Redis roster refreshes"),
    ):
        cluster.add_argument(
            flag,
            type=_seconds,
            default=default,
            metavar="S",
            help=f"{meaning} (default {default:g})",
        )

    hub = command("hub", "the hub that links servers")
    _listen_options(hub, port=9000)
    hub.add_argument(
        "--token",
        action="append",
        default=[],
        help="an accepted bearer token (repeatable; or MEGAPRESENCE_HUB_TOKENS, comma-separated)",
    )
    hub.add_argument(
        "--client-cafile",
        help="with --certfile: require bridges to present a certificate signed by this CA",
    )
    hub.add_argument(
        "--heartbeat",
        type=_seconds,
        default=15.0,
        metavar="S",
        help="heartbeat interval (default 15)",
    )
    return parser


# ------------------------------------------------------------ starting up


@contextmanager
def _config_errors() -> Iterator[None]:
    """A ``LocalUsageError`` while building from flags is a configuration error."""
    try:
        yield
    except LocalUsageError as exc:
        raise StartupError(ExitCode.CONFIG, str(exc)) from None


@contextmanager
def _needs_extra(flag: str, extra: str) -> Iterator[None]:
    try:
        yield
    except ModuleNotFoundError as exc:
        raise StartupError(
            ExitCode.MISSING_EXTRA,
            f"{flag} needs {exc.name}, which is not installed: pip install 'megapresence[{extra}]'",
        ) from None


def _cannot_listen(exc: OSError, host: str, port: int) -> StartupError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return StartupError(
            ExitCode.UNKNOWN_HOST, f"cannot listen on {where}: --host does not resolve ({exc})"
        )
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            ExitCode.ADDRESS_IN_USE,
            f"cannot listen on {where}: another process is listening there (choose another --port)",
        )
    return StartupError(ExitCode.CANNOT_LISTEN, f"cannot listen on {where}: {exc.strerror or exc}")


async def _listen(
    listen: Callable[..., Awaitable[int]], args: argparse.Namespace, **options: object
) -> int:
    try:
        return await listen(args.host, args.port, **options)
    except OSError as exc:
        raise _cannot_listen(exc, args.host, args.port) from None


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The listener's TLS context from --certfile/--keyfile (misuse if they cannot load)."""
    if args.certfile is None:
        if args.keyfile is not None or getattr(args, "client_cafile", None) is not None:
            raise LocalUsageError("--keyfile and --client-cafile need --certfile")
        return None
    context = server_context(args.certfile, args.keyfile)
    cafile = getattr(args, "client_cafile", None)
    if cafile is not None:
        try:
            context.load_verify_locations(cafile)
        except (OSError, ssl.SSLError) as exc:
            raise LocalUsageError(f"cannot load --client-cafile {cafile!r}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _metrics_access(args: argparse.Namespace) -> MetricsAccess:
    if args.metrics_allow is None:
        return MetricsAccess(token=args.metrics_token)
    return MetricsAccess(token=args.metrics_token, allow=args.metrics_allow)


async def _listen_all(
    listen: Callable[..., Awaitable[int]],
    listen_metrics: Callable[..., Awaitable[int]],
    args: argparse.Namespace,
    context: ssl.SSLContext | None,
    **options: object,
) -> tuple[str, str]:
    """Open the main port (and the metrics port): (the main URL's scheme and address,
    the metrics URL)."""
    port = await _listen(listen, args, ssl_context=context, **options)
    where = f"[{args.host}]" if ":" in args.host else args.host
    metrics = f"{where}:{port}"
    if args.metrics_port is not None:
        try:
            metrics_port = await listen_metrics(args.host, args.metrics_port)
        except OSError as exc:
            raise _cannot_listen(exc, args.host, args.metrics_port) from None
        metrics = f"{where}:{metrics_port}"
    return (
        f"{where}:{port}",
        f"{'https' if context and args.metrics_port is None else 'http'}://{metrics}/metrics",
    )


class _Backends(NamedTuple):
    cluster_config: ClusterConfig | None = None
    cluster: ClusterBackend | None = None
    roster_config: StoreConfig | None = None
    roster: RosterBackend | None = None
    #: Who numbers the channel streams for every instance (--history).
    stream_store: StreamStoreBackend | None = None
    #: The error each backend raises when its server cannot be reached at start.
    unreachable: tuple[tuple[type[Exception], ExitCode], ...] = ()


def _serve_backends(args: argparse.Namespace, instance_id: str, epoch: int) -> _Backends:
    backends = _Backends()
    if args.nats:
        with _needs_extra("--nats", "nats"):
            from megapresence_nats import ClusterUnavailableError, JetStreamHistory, NatsCluster
        cluster_config = ClusterConfig(
            app=args.app,
            instance_id=instance_id,
            epoch=epoch,
            sync_members=not args.fanout_only,
            heartbeat_interval=args.cluster_heartbeat,
            ttl=args.cluster_ttl,
        )
        backends = backends._replace(
            cluster_config=cluster_config,
            cluster=NatsCluster(args.nats, name=f"megapresence-{args.app}-{instance_id}"),
            unreachable=((ClusterUnavailableError, ExitCode.NATS_UNREACHABLE),),
        )
        if _history(args) == "jetstream":
            name = f"megapresence-{args.app}-{instance_id}-history"
            history = JetStreamHistory(args.nats, app=args.app, name=name)
            backends = backends._replace(stream_store=history)
    if args.redis:
        with _needs_extra("--redis", "redis"):
            from megapresence_redis import RedisRoster, RedisStreams, RosterUnavailableError
        backends = backends._replace(
            roster_config=StoreConfig(ttl=args.roster_ttl, refresh_interval=args.roster_refresh),
            roster=RedisRoster(args.redis, app=args.app, instance_id=instance_id, epoch=epoch),
            unreachable=(
                *backends.unreachable,
                (RosterUnavailableError, ExitCode.REDIS_UNREACHABLE),
            ),
        )
        if _history(args) == "redis":
            backends = backends._replace(stream_store=RedisStreams(args.redis, app=args.app))
    return backends


def _history(args: argparse.Namespace) -> str:
    """Where channel history lives: as ``--history`` says, else in Redis with ``--redis``
    (it numbers and carries the channel messages), else in JetStream (used with
    ``--nats`` only)."""
    if args.history is not None:
        return str(args.history)
    return "redis" if args.redis else "jetstream"


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (a name that does not
    resolve is left to the listener, which fails with its own exit code). An empty
    host names every interface."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return True
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def _authenticator(args: argparse.Namespace, app: DemoApp) -> Authenticator:
    """The identity the server believes: a signed token's, or the demo's ``?user=`` (on a
    loopback address with no proxy in front, or with ``--demo``)."""
    if args.auth is None and not args.demo:
        # A named proxy means the clients come from elsewhere, whatever the address.
        where = "--trusted-proxy" if args.trusted_proxy else f"--host {args.host}"
        if args.trusted_proxy or not _is_loopback(args.host):
            raise LocalUsageError(
                f"serve {where} would let anyone be anyone (the demo identity "
                "trusts ?user=): pass --auth jwt, or --demo to serve the demo there anyway"
            )
    if args.auth is None:
        app.warn_demo_identity()
        return app.authenticate
    if args.demo:
        raise LocalUsageError("--demo and --auth jwt contradict each other: choose one")
    if args.admin:
        raise LocalUsageError("--admin is the demo's: with --auth jwt, admin is a token claim")
    key = read_key(args.jwt_algorithm, args.jwt_key_file, os.environ)
    with _needs_extra("--auth jwt", "jwt"):
        return JwtAuthenticator(
            key=key,
            algorithm=args.jwt_algorithm,
            audience=args.jwt_audience,
            issuer=args.jwt_issuer,
            leeway=args.jwt_leeway,
            default_channels=args.channels,
        )


async def _start_serve(args: argparse.Namespace, instance_id: str, stack: AsyncExitStack) -> str:
    with _config_errors():
        context = _tls(args)  # before anything is logged: a bad file is a one-line failure
        hub_config = None
        hub_tls = None
        if args.hub:
            if not args.hub_token:
                raise LocalUsageError("serve --hub needs --hub-token or MEGAPRESENCE_HUB_TOKEN")
            hub_tls = None
            if args.hub.startswith("wss:"):
                hub_tls = client_context(args.hub_cafile, args.hub_certfile, args.hub_keyfile)
            elif args.hub_cafile or args.hub_certfile or args.hub_keyfile:
                raise LocalUsageError(
                    "--hub-cafile, --hub-certfile and --hub-keyfile need a wss:// hub"
                )
            hub_config = HubLinkConfig(
                # Unique per server: two servers on --port 0 must not share "host:0".
                bridge_id=args.bridge_id or f"{args.host}:{args.port or instance_id}",
                instance_id=uuid.uuid4().hex,  # new at every boot: the hub's incarnation check
                channels=args.channels,
                jitter_seed=uuid.uuid4().int & 0xFFFFFFFF,
            )
        epoch = time.time_ns() // 1_000_000  # a later boot of the same instance id is larger
        backends = _serve_backends(args, instance_id, epoch)
        limits = SocketLimits(  # before the identity: a bad address is named first
            allowed_origins=args.allowed_origin,
            trusted_proxies=args.trusted_proxy,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
        )
        app = DemoApp(admins=args.admin, default_channels=args.channels)
        server = PresenceServer(
            _authenticator(args, app),
            paths=("/ws/",),
            on_open=app.on_open,
            on_restored=app.on_open,
            on_message=app.on_message,
            presence=PresenceConfig(
                hub_link=hub_config,
                cluster=backends.cluster_config,
                store=backends.roster_config,
                presence_window=args.presence_window,
                leave_grace=args.leave_grace,
            ),
            limits=limits,
            hub_url=args.hub,
            hub_token=args.hub_token,
            cluster=backends.cluster,
            roster=backends.roster,
            stream_store=backends.stream_store,
            pages={} if args.no_page else app.pages,
            hub_ssl_context=hub_tls,
            metrics_access=_metrics_access(args),
        )
        app.server = server
    try:
        with _config_errors():  # a backend that cannot run on this event loop
            await stack.enter_async_context(server)  # connects to NATS and Redis first
            # On the way out, first hand the clients to the other servers (4503).
            stack.push_async_callback(server.drain, args.drain_timeout)
    except Exception as exc:
        for kind, code in backends.unreachable:
            if isinstance(exc, kind):
                raise StartupError(code, str(exc)) from None
        raise
    address, metrics = await _listen_all(
        server.listen, server.listen_metrics, args, context, reuse_port=args.reuse_port
    )
    url = f"{'https' if context else 'http'}://{address}/"
    log_event(
        logger,
        LogLevel.INFO,
        "server.listening",
        {"url": url, "metrics": metrics, "backend": args.backend, "version": __version__},
    )
    return f"megapresence serving on {url}"


async def _start_hub(args: argparse.Namespace, hub_id: str, stack: AsyncExitStack) -> str:
    env = os.environ.get("MEGAPRESENCE_HUB_TOKENS", "")
    tokens = [*args.token, *(t.strip() for t in env.split(",") if t.strip())]
    with _config_errors():
        if not tokens:
            raise LocalUsageError("hub needs at least one --token or MEGAPRESENCE_HUB_TOKENS")
        config = HubConfig(hub_id=hub_id, tokens=tokens, heartbeat_interval=args.heartbeat)
        context = _tls(args)
        server = HubServer(
            config,
            limits=attrs.evolve(DEFAULT_HUB_LIMITS, trusted_proxies=args.trusted_proxy),
            metrics_access=_metrics_access(args),
        )
    hub = await stack.enter_async_context(server)
    address, metrics = await _listen_all(hub.listen, hub.listen_metrics, args, context)
    url = f"{'wss' if context else 'ws'}://{address}/"
    log_event(
        logger,
        LogLevel.INFO,
        "hub.listening",
        {
            "url": url,
            "metrics": metrics,
            "hub_id": hub_id,
            "backend": args.backend,
            "version": __version__,
        },
    )
    return f"megapresence hub on {url} (hub id {hub_id})"


Start = Callable[[argparse.Namespace, str, AsyncExitStack], Awaitable[str]]


def _ignore_stop_signals() -> dict[int, Any]:
    """Ignore SIGTERM and SIGHUP; return the handlers they had."""
    return {
        number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGTERM, signal.SIGHUP)
    }


async def _run(start: Start, args: argparse.Namespace, instance: str) -> None:
    """Start, print the banner (stdout), run until SIGTERM, SIGHUP or SIGINT, then drain.

    Signals are watched from the first moment: one that arrives while the server is
    starting stops it as soon as it is up, and one during the drain changes nothing
    (SIGTERM and SIGHUP are ignored outside the receiver: trio hands a signal still
    pending when the receiver closes to the handler it found, and asyncio's receiver
    leaves the default handler behind; either would end the process with the signal).
    """
    found = _ignore_stop_signals()
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as signals:
            async with AsyncExitStack() as stack:  # leaving it drains the server
                banner = await start(args, instance, stack)
                print(banner, flush=True)
                async for received in signals:
                    name = signal.Signals(received).name
                    log_event(logger, LogLevel.INFO, "shutdown.started", {"signal": name})
                    break
            log_event(logger, LogLevel.INFO, "shutdown.done", {})
    except BaseException:
        for number, handler in found.items():  # it did not start: as it was
            signal.signal(number, handler)
        raise
    _ignore_stop_signals()  # asyncio's receiver leaves the default handler behind


def _startup_error(exc: BaseException) -> StartupError | None:
    """The ``StartupError`` in ``exc``, which a task group may have wrapped in a group."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
    return None


def _fail(failure: StartupError, log_format: str) -> int:
    if log_format == "json":
        log_event(
            logger,
            LogLevel.ERROR,
            "startup.failed",
            {"exit_code": failure.code, "error": str(failure)},
        )
    else:
        print(f"megapresence: {failure}", file=sys.stderr, flush=True)
    return failure.code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    instance = (
        args.instance_id if args.command == "serve" and args.instance_id else uuid.uuid4().hex
    )
    configure_logging(
        level=args.log_level, log_format=args.log_format, app=args.app, instance=instance
    )
    start: Start = _start_serve if args.command == "serve" else _start_hub
    try:
        if args.backend == "trio":
            with _needs_extra("--backend trio", "trio"):
                import trio  # noqa: F401 - anyio would fail inside its run, with a traceback
        anyio.run(_run, start, args, instance, backend=args.backend)
    except KeyboardInterrupt:
        return _fail(
            StartupError(ExitCode.INTERRUPTED, "interrupted while starting"), args.log_format
        )
    except BaseException as exc:
        failure = _startup_error(exc)
        if failure is None:
            logger.critical("megapresence stopped on an unexpected error", exc_info=exc)
            return ExitCode.INTERNAL
        return _fail(failure, args.log_format)
    return ExitCode.OK
