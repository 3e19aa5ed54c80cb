"""What a server counts as it runs: plain integers, read when someone asks.

Counting must not cost the fan-out path: one ``Deliver`` action adds its number
of targets and bytes once (two integer additions per broadcast, whatever N),
and nothing is counted per socket write. A connection is counted once, when it
ends (its refusal status, or its close code and who closed). Gauges (open
sockets, queue depths, link states) are not kept at all: they are read from the
server when metrics are scraped. ``_ops.py`` turns the figures into Prometheus
metrics; without ``prometheus_client`` they are still kept, for nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sized
from typing import Any, Final, final

import attrs

from megapresence_core import CloseCode

from ._session import Session
from ._transport import Outlet

__all__ = ["Metric", "Stats", "held_bytes"]


@final
@attrs.frozen
class Metric:
    """One metric family, free of any client library: what ``_ops.py`` exposes."""

    name: str
    kind: str  #: "counter" or "gauge"
    help: str
    labels: tuple[str, ...] = ()
    #: (label values, value) pairs; one ``((), value)`` for a metric without labels.
    samples: tuple[tuple[tuple[str, ...], float], ...] = ()


def gauge(name: str, help: str, value: float) -> Metric:
    return Metric(name, "gauge", help, (), (((), value),))


def counter(name: str, help: str, value: float) -> Metric:
    return Metric(name, "counter", help, (), (((), value),))


def state_gauge(name: str, help: str, states: Iterable[str], current: str | None) -> Metric:
    """One sample per possible state, 1 for the current one (the Prometheus enum form)."""
    return Metric(
        name, "gauge", help, ("state",), tuple(((s,), float(s == current)) for s in states)
    )


def held_bytes(outlets: Iterable[Outlet[Any]]) -> int:
    """The bytes send queues keep alive, each buffer once: the rest of a frame the
    kernel took in part keeps the whole frame alive, and a broadcast frame queued
    for many sockets is one buffer."""
    buffers = {id(buffer): buffer for outlet in outlets for buffer in outlet.held()}
    return sum(len(buffer) for buffer in buffers.values() if isinstance(buffer, Sized))


_SLOW: Final = (int(CloseCode.TRY_AGAIN_LATER), "server")


@final
class Stats:
    """The counters of one server."""

    __slots__ = ("accept_failures", "closes", "delivered_bytes", "deliveries", "faults", "refusals")

    def __init__(self) -> None:
        #: Messages handed to sockets: each ``Deliver`` adds its number of targets.
        self.deliveries = 0
        #: Their bytes on the wire (frame header included), added the same way.
        self.delivered_bytes = 0
        #: HTTP error statuses answered (a refused upgrade, a bad request, a cap).
        self.refusals: Counter[int] = Counter()
        #: Ended sessions by close code and by who closed first ("server", "client").
        self.closes: Counter[tuple[int, str]] = Counter()
        #: Faults caught by a background task's boundary, by task.
        self.faults: Counter[str] = Counter()
        #: Accepts that failed (EMFILE: out of file descriptors), by errno name.
        self.accept_failures: Counter[str] = Counter()

    def delivered(self, targets: int, size: int) -> None:
        self.deliveries += targets
        self.delivered_bytes += targets * size

    def ended(self, answered: int | None, session: Session | None) -> None:
        """A connection ended: count its close code, or its HTTP error status."""
        if session is not None:
            code = session.close_code if session.close_code is not None else 1006
            self.closes[(code, "server" if session.closed_here else "client")] += 1
        elif answered is not None and answered >= 400:
            self.refusals[answered] += 1

    def metrics(self, *, connections: int, pending: int, queued: int) -> list[Metric]:
        """The families every server exposes, with the gauges it reads itself."""
        return [
            gauge(
                "megapresence_connections", "Open (upgraded) WebSocket connections.", connections
            ),
            gauge(
                "megapresence_handshakes_pending",
                "Sockets accepted and still in their handshake.",
                pending,
            ),
            counter(
                "megapresence_deliveries",
                "Messages handed to sockets (one per target of a delivery).",
                self.deliveries,
            ),
            counter(
                "megapresence_delivered_bytes",
                "Bytes of those messages on the wire, frame headers included.",
                self.delivered_bytes,
            ),
            counter(
                "megapresence_slow_consumer_closes",
                "Sockets closed with 1013 because their send queue was full.",
                self.closes[_SLOW],
            ),
            Metric(
                "megapresence_closes",
                "counter",
                "Ended WebSocket sessions by close code and by who closed first.",
                ("code", "by"),
                tuple(((str(code), by), n) for (code, by), n in sorted(self.closes.items())),
            ),
            Metric(
                "megapresence_refusals",
                "counter",
                "Requests answered with an HTTP error status, by status.",
                ("status",),
                tuple(((str(status),), n) for status, n in sorted(self.refusals.items())),
            ),
            gauge(
                "megapresence_send_queue_bytes",
                "Bytes held for sockets the kernel did not take at once (whole buffers, each "
                "once: the rest of a frame keeps all of it alive), all sockets.",
                queued,
            ),
            Metric(
                "megapresence_accept_failures",
                "counter",
                "Accepts that failed, by errno (EMFILE: out of file descriptors).",
                ("error",),
                tuple(((name,), n) for name, n in sorted(self.accept_failures.items())),
            ),
            Metric(
                "megapresence_background_faults",
                "counter",
                "Faults caught by a background task's boundary, by task.",
                ("task",),
                tuple(((task,), n) for task, n in sorted(self.faults.items())),
            ),
        ]
