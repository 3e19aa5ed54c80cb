"""``Backends``: a server's cluster, roster and stream store, checked, started and stopped in order.

Each backend comes with the part of ``PresenceConfig`` that makes the core use it,
or neither does: the pair is checked when the server is built. They start before
the server takes a connection, so a wrong URL fails the start rather than the
first join, and one that fails to start closes those started before it. They stop
after the core's shutdown, in the core's order: the hub link is closed, the
cluster has said goodbye, the roster removals are queued; then they go out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

from megapresence_core import Event, LocalUsageError, Presence, PresenceConfig

from ._background import Background
from ._types import ClusterBackend, RosterBackend, StreamStoreBackend

__all__ = ["Backends"]


@final
class Backends:
    """The cluster, roster and stream store of one server, each optional."""

    __slots__ = ("cluster", "roster", "stream_store")

    def __init__(
        self,
        config: PresenceConfig,
        *,
        cluster: ClusterBackend | None,
        roster: RosterBackend | None,
        stream_store: StreamStoreBackend | None,
        hub_url: str | None,
    ) -> None:
        """Check that each backend (and the hub's URL) comes with its part of ``config``."""
        if (config.store is None) != (roster is None):
            raise LocalUsageError(
                "PresenceServer: give a roster backend (megapresence_redis.RedisRoster) together "
                "with PresenceConfig.store, or neither"
            )
        if (config.cluster is None) != (cluster is None):
            raise LocalUsageError(
                "PresenceServer: give a cluster backend (megapresence_nats.NatsCluster) together "
                "with PresenceConfig.cluster, or neither"
            )
        if (config.hub_link is None) != (hub_url is None):
            raise LocalUsageError(
                "PresenceServer: give hub_url together with PresenceConfig.hub_link (bridge id, "
                "instance id, channels), or neither"
            )
        self.cluster = cluster
        self.roster = roster
        self.stream_store = stream_store

    async def start(self, presence: Presence, dispatch: Callable[[Event], None]) -> None:
        """Start each backend, reporting to ``dispatch``; on a failure, close those started."""
        if self.roster is not None:
            await self.roster.start()
        if self.cluster is not None:
            try:
                await self.cluster.start(dispatch, presence.cluster_subjects)
            except BaseException:
                if self.roster is not None:
                    await self.roster.aclose()
                raise
        if self.stream_store is not None:
            history = presence.config.history
            assert history is not None  # the server always keeps history
            try:
                await self.stream_store.start(dispatch, history)
            except BaseException:
                for backend in (self.cluster, self.roster):
                    if backend is not None:
                        await backend.aclose()
                raise

    def run(self, background: Background) -> None:
        """Run each backend's task as a service (its fault makes the server not ready)."""
        if self.cluster is not None:
            background.service("cluster", self.cluster.run)
        if self.roster is not None:
            background.service("roster", self.roster.run)
        if self.stream_store is not None:
            background.service("stream store", self.stream_store.run)

    async def aclose(self) -> None:
        """Let out what each backend still holds, and close it."""
        if self.cluster is not None:
            await self.cluster.aclose()
        if self.roster is not None:
            await self.roster.aclose()
        if self.stream_store is not None:
            await self.stream_store.aclose()
