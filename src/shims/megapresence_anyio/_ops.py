"""``/metrics``, ``/healthz`` and ``/readyz``: what an operator asks a running server.

Both servers answer them on their main port (and the ASGI adapter on its app),
or, once given a port of their own (:class:`OpsListener`), there only: the main
port then answers them 404 (and the ASGI adapter leaves them to the other app).
``/healthz`` says the process answers (200 while it serves); ``/readyz`` says
whether it should be sent traffic (200, or 503 with the check that fails), as
JSON. Neither needs a password: a load balancer asks them. ``/metrics`` is Prometheus' text format,
behind :class:`MetricsAccess` (loopback only unless told otherwise), and needs
``prometheus_client`` (the ``metrics`` extra): without it the server serves
on and ``/metrics`` answers 501 saying what to install.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple, final

import anyio.lowlevel
import attrs

from ._admission import Admission
from ._config import Network, SocketLimits, networks
from ._guard import Guard
from ._http import HandshakeRequest
from ._stats import Metric, Stats
from ._transport import SocketTransport, Transport
from ._upgrade import read_upgrade

__all__ = [
    "DEFAULT_METRICS_ACCESS",
    "MetricsAccess",
    "OpsEndpoints",
    "OpsListener",
    "Readiness",
    "Response",
]

LOOPBACK: Final = ("127.0.0.0/8", "::1/128")


def _networks(value: Any) -> frozenset[Network]:
    return networks(value, what="MetricsAccess: allow")


@final
@attrs.frozen(kw_only=True)
class MetricsAccess:
    """Who may read ``/metrics``: a client from ``allow``, or one showing ``token``.

    The default lets loopback clients only (a Prometheus on the same host, or a
    sidecar). Set ``token`` for a scraper elsewhere (``Authorization: Bearer
    <token>``, compared in constant time), or widen ``allow`` (addresses or CIDR
    ranges); ``allow=()`` with a token makes the token the only way in."""

    token: str | None = attrs.field(default=None, repr=False)
    allow: frozenset[Network] = attrs.field(default=LOOPBACK, converter=_networks)

    def allows(self, request: HandshakeRequest) -> bool:
        if self.token is not None:
            given = request.header("authorization") or ""
            if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return True
        if request.remote is None:
            return False
        try:
            address = ipaddress.ip_address(request.remote[0])
        except ValueError:
            return False
        return any(address in network for network in self.allow)


DEFAULT_METRICS_ACCESS: Final = MetricsAccess()


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class Readiness(NamedTuple):
    """Whether to send this server traffic, and each check's word."""

    ready: bool
    checks: Mapping[str, str]


def exposition(metrics: list[Metric]) -> Response:
    """The Prometheus text format of ``metrics``; 501 without ``prometheus_client``."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ModuleNotFoundError:
        return Response(
            501, b"metrics need prometheus_client: pip install 'megapresence[metrics]'\n"
        )

    class _Collector:
        def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
            for metric in metrics:
                kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                family = kind(metric.name, metric.help, labels=metric.labels)
                for labels, value in metric.samples:
                    family.add_metric(list(labels), value)
                yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)


@final
class OpsEndpoints:
    """Answers the three paths for one server, from what it reports when asked."""

    PATHS: Final = frozenset({"/metrics", "/healthz", "/readyz"})

    def __init__(
        self,
        access: MetricsAccess,
        metrics: Callable[[], list[Metric]],
        readiness: Callable[[], Readiness],
    ) -> None:
        self._access = access
        self._metrics = metrics
        self._readiness = readiness
        #: Answered on a port of their own (an :class:`OpsListener`), not the main one.
        self.own_port = False

    def answers(self, path: str) -> bool:
        """Whether the main port (or the ASGI app) answers ``path``: one of the three,
        and no port of their own."""
        return path in self.PATHS and not self.own_port

    def answer(self, request: HandshakeRequest, *, own_port: bool = False) -> Response | None:
        """The response to ``request`` on the main port (``own_port``: on theirs), or
        None if its path is none of the three or they are answered on the other port."""
        path = request.path
        if path not in self.PATHS or own_port != self.own_port:
            return None
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"")
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            ready = self._readiness()
            body = json.dumps({"ready": ready.ready, "checks": dict(ready.checks)}).encode()
            return Response(200 if ready.ready else 503, body + b"\n", "application/json")
        if not self._access.allows(request):
            return Response(403, b"metrics: not from this address without the token\n")
        metrics = self._metrics()
        ready = self._readiness()
        metrics.append(
            Metric(
                "megapresence_ready",
                "gauge",
                "1 while /readyz says ready.",
                (),
                (((), ready.ready),),
            )
        )
        return exposition(metrics)


#: Starts ``function(*args)`` in the server's task group.
Spawn = Callable[..., None]


@final
class OpsListener:
    """A port that answers the three paths and nothing else (``--metrics-port``)."""

    def __init__(
        self,
        endpoints: OpsEndpoints,
        limits: SocketLimits,
        spawn: Spawn,
    ) -> None:
        endpoints.own_port = True  # the main port answers them no more
        self._endpoints = endpoints
        self._limits = limits
        self._admission = Admission(limits, Stats())
        self._spawn = spawn

    def on_accept(self, sock: socket.socket, remote: tuple[str, int] | None) -> None:
        transport = SocketTransport(
            sock, spawn=self._spawn, max_buffer=self._limits.max_send_buffer
        )
        guard: Guard[Transport] = Guard(transport, remote)
        self._spawn(self._serve, guard, self._admission.begin(guard))

    async def _serve(self, guard: Guard[Transport], refused: int | None) -> None:
        try:
            if refused is not None:
                guard.respond(refused)
            elif await read_upgrade(guard, self._limits, self._answer) is not None:
                guard.refuse(404, "no WebSocket on the metrics port")
        except Exception as exc:
            guard.fault(exc)
        finally:
            await self._admission.finish(guard, anyio.lowlevel.checkpoint)

    def _answer(self, guard: Guard[Transport], request: HandshakeRequest) -> None:
        answer = self._endpoints.answer(request, own_port=True)
        respond_with(guard, request, answer or Response(404, b""))


def respond_with(guard: Guard[Any], request: HandshakeRequest, response: Response) -> None:
    """Write ``response`` to ``request`` (its body left out for a HEAD)."""
    guard.respond(
        response.status,
        response.body,
        response.content_type,
        head=request.method == "HEAD",
        headers=response.headers,
    )
