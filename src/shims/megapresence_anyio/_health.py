"""What a presence server says of itself: each link's state, readiness and metrics.

``on_link_state`` is told of every link whose state changed; ``/readyz`` says
whether to send the server traffic (running, its hub link registered, NATS
connected, Redis answering, no essential task failed); ``/metrics`` reads the
counters, the sockets' queued bytes, the core's sessions and history, and what
each backend declares (``ClusterBackend``, ``RosterBackend``: ``errors``,
``queued``, ``healthy``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable
from typing import Protocol, final

from megapresence_core import Presence
from megapresence_core.lifecycle import ClusterLinkState, ConnectionState, HubLinkState

from ._admission import Admission
from ._background import Background
from ._hub_client import HubClient
from ._ops import Readiness
from ._session import Session
from ._stats import Metric, Stats, counter, gauge, held_bytes, state_gauge
from ._ticker import Ticker
from ._types import ClusterBackend, Identity, RosterBackend, StreamStoreBackend

__all__ = ["Health"]

logger = logging.getLogger("megapresence")

#: The state of each link that makes a server ready.
_READY: dict[str, str] = {
    "hub": HubLinkState.REGISTERED.value,
    "cluster": ClusterLinkState.CONNECTED.value,
    "roster": "ok",
    "streams": "ok",
}


class _Socket(Hashable, Protocol):
    """What health reads of a client socket (``Client``)."""

    session: Session
    identity: Identity | None


@final
class Health:
    """Links, readiness and metrics of one ``PresenceServer`` (see the module docstring)."""

    __slots__ = (
        "_admission",
        "_background",
        "_clients",
        "_cluster",
        "_hub",
        "_links",
        "_on_link_state",
        "_presence",
        "_roster",
        "_stats",
        "_stream_store",
        "_ticker",
        "hub_attempts",
    )

    def __init__(
        self,
        presence: Presence,
        *,
        hub: HubClient | None,
        cluster: ClusterBackend | None,
        roster: RosterBackend | None,
        stream_store: StreamStoreBackend | None,
        clients: Collection[_Socket],
        stats: Stats,
        admission: Admission,
        background: Background,
        ticker: Ticker,
        on_link_state: Callable[[str, str], None] | None,
    ) -> None:
        self._presence = presence
        self._hub = hub
        self._cluster = cluster
        self._roster = roster
        self._stream_store = stream_store
        self._clients = clients
        self._stats = stats
        self._admission = admission
        self._background = background
        self._ticker = ticker
        self._on_link_state = on_link_state
        self._links: dict[str, str] = {}
        #: Connection attempts to the hub (the server counts each ``ConnectHub``).
        self.hub_attempts = 0

    def link_states(self) -> dict[str, str]:
        """The state of each link this server has: ``hub`` (the core's hub link state),
        ``cluster`` (NATS), ``roster`` (Redis: ``ok`` or ``failing``) and ``streams`` (a
        stream store: ``ok``, or ``failing`` while it is out of reach)."""
        links: dict[str, str] = {}
        hub_state = self._presence.hub_link_state
        if hub_state is not None:
            faulted = self._hub is not None and self._hub.faulted
            links["hub"] = "faulted" if faulted else hub_state.value
        cluster_state = self._presence.cluster_link_state
        if cluster_state is not None:
            links["cluster"] = cluster_state.value
        if self._roster is not None:
            links["roster"] = "ok" if self._roster.healthy else "failing"
        if self._stream_store is not None:
            links["streams"] = "ok" if self._stream_store.healthy else "failing"
        return links

    def check_links(self) -> None:
        """Tell ``on_link_state`` of every link whose state changed since last asked."""
        links = self.link_states()
        if links == self._links:
            return
        changed = [(name, state) for name, state in links.items() if self._links.get(name) != state]
        self._links = links
        if self._on_link_state is None:
            return
        for name, state in changed:
            try:
                self._on_link_state(name, state)
            except Exception as exc:
                logger.error(
                    "the on_link_state hook failed: %s: %s", type(exc).__name__, exc, exc_info=exc
                )

    def readiness(self, server: str) -> Readiness:
        """``server`` is ``running``, ``stopping`` or ``stopped``; ready when running, every
        link in its ready state and no essential task failed."""
        checks: dict[str, str] = {"server": server}
        ready = server == "running"
        for name, state in self.link_states().items():
            checks[name] = state
            ready = ready and state == _READY[name]
        tasks_well = self._background.check(checks, ticker_failing=self._ticker.failing)
        return Readiness(ready and tasks_well, checks)

    def metrics(self) -> list[Metric]:
        clients = list(self._clients)
        presence = self._presence
        metrics = self._stats.metrics(
            connections=self._admission.open,
            pending=self._admission.pending,
            queued=held_bytes(client.session.transport for client in clients),
        )
        joined = sum(
            1
            for client in clients
            if client.identity is not None
            and presence.connection_state(client) is ConnectionState.JOINED
        )
        metrics.append(gauge("megapresence_sessions", "Sessions joined on this process.", joined))
        metrics.append(
            gauge(
                "megapresence_history_bytes",
                "Bytes of channel history kept for recovery (texts plus a fixed cost each).",
                presence.history_bytes,
            )
        )
        links = self.link_states()
        if "hub" in links:
            metrics += [
                state_gauge(
                    "megapresence_hub_link_state",
                    "The hub link's state (1 for the current one).",
                    [*(s.value for s in HubLinkState), "faulted"],
                    links["hub"],
                ),
                counter(
                    "megapresence_hub_link_connects",
                    "Connection attempts to the hub (the first, then every reconnect).",
                    self.hub_attempts,
                ),
                gauge(
                    "megapresence_hub_link_held_frames",
                    "Frames the hub link holds to stay within the hub's frame rate.",
                    presence.hub_link_held,
                ),
            ]
        backends: list[tuple[str, ClusterBackend | RosterBackend | StreamStoreBackend, list[str]]]
        backends = []
        if self._cluster is not None:
            backends.append(("cluster", self._cluster, [s.value for s in ClusterLinkState]))
        if self._roster is not None:
            backends.append(("roster", self._roster, ["ok", "failing"]))
        if self._stream_store is not None:
            backends.append(("streams", self._stream_store, ["ok", "failing"]))
        for name, backend, states in backends:
            metrics += [
                state_gauge(
                    f"megapresence_{name}_link_state",
                    f"The {name} link's state (1 for the current one).",
                    states,
                    links[name],
                ),
                counter(
                    f"megapresence_{name}_errors",
                    f"Errors the {name} backend met (connects, writes, reads).",
                    backend.errors,
                ),
                gauge(
                    f"megapresence_{name}_queued",
                    f"Writes queued for the {name} backend.",
                    backend.queued,
                ),
            ]
        return metrics
