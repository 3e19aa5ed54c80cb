"""``Performers``: what each of the core's actions does on a ``PresenceServer``'s sockets and links.

The core returns actions; the server performs them in order, each through one
table keyed by the action's exact type (no ``if`` ladder, no decision of its
own): a delivery is written to its sockets, a hub frame to the hub link, a
roster entry to the roster backend, and so on. An action for a backend the
server does not have cannot come (the core is configured with the same
backends), so its absence is a bug, asserted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, final

import anyio

from megapresence_core import Action, CloseConnection, Deliver, Log
from megapresence_core.actions import (
    ChannelsRestored,
    CloseHubLink,
    ClusterPublish,
    ConnectHub,
    RequestRefused,
    SendHubFrame,
    StoreDelete,
    StorePut,
    StoreRefresh,
    StreamAppend,
    StreamRead,
)

from ._health import Health
from ._hub_client import HubClient
from ._logging import log_action
from ._outgoing import Outgoing
from ._stats import Stats
from ._ticker import Ticker
from ._types import ClusterBackend, RosterBackend, StreamStoreBackend

__all__ = ["Performers"]

logger = logging.getLogger("megapresence")


@final
class Performers:
    """Performs the core's actions for one server (see the module docstring)."""

    def __init__(
        self,
        *,
        stats: Stats,
        health: Health,
        ticker: Ticker,
        hub: HubClient | None,
        cluster: ClusterBackend | None,
        roster: RosterBackend | None,
        stream_store: StreamStoreBackend | None,
        on_restored: Callable[[Any], None] | None,
    ) -> None:
        self._stats = stats
        self._health = health
        self._ticker = ticker
        self._hub = hub
        self._cluster = cluster
        self._roster = roster
        self._stream_store = stream_store
        self._on_restored = on_restored
        self._table: dict[type[Any], Callable[[Any], None]] = {
            Deliver: self._deliver,
            RequestRefused: self._refused,
            CloseConnection: self._close_connection,
            ChannelsRestored: self._channels_restored,
            ConnectHub: self._connect_hub,
            SendHubFrame: self._send_hub_frame,
            CloseHubLink: self._close_hub_link,
            ClusterPublish: self._publish,
            StreamAppend: self._stream_append,
            StreamRead: self._stream_read,
            StorePut: self._roster_put,
            StoreRefresh: self._roster_refresh,
            StoreDelete: self._roster_delete,
            Log: log_action,
        }

    def perform(self, actions: list[Action]) -> None:
        """Perform ``actions`` in order; then the ticker looks at the core's next deadline."""
        table = self._table
        for action in actions:
            table[type(action)](action)
        self._ticker.reschedule()

    def _deliver(self, action: Deliver) -> None:
        """One message to many sockets: encoded, framed and compressed once for all."""
        message = Outgoing(action.text, compress=True)
        now = anyio.current_time()
        conns = action.conns
        self._stats.delivered(len(conns), message.frame_size)  # per delivery, not per socket
        for client in conns:
            client.session.send(message, now)  # type: ignore[attr-defined]

    def _refused(self, action: RequestRefused) -> None:
        action.conn.send(action.text)  # type: ignore[attr-defined]

    def _channels_restored(self, action: ChannelsRestored) -> None:
        if self._on_restored is None:
            return
        try:
            self._on_restored(action.conn)
        except Exception as exc:  # the application's: logged, the presence goes on
            logger.error(
                "the on_restored hook failed: %s: %s", type(exc).__name__, exc, exc_info=exc
            )

    def _close_connection(self, action: CloseConnection) -> None:
        session = action.conn.session  # type: ignore[attr-defined]
        session.close(action.code, action.reason, anyio.current_time())

    def _connect_hub(self, action: ConnectHub) -> None:
        assert self._hub is not None
        self._health.hub_attempts += 1
        self._hub.connect()

    def _send_hub_frame(self, action: SendHubFrame) -> None:
        assert self._hub is not None
        self._hub.send(action.data, batch=action.batch)

    def _close_hub_link(self, action: CloseHubLink) -> None:
        assert self._hub is not None
        self._hub.close(action.code, action.reason)

    def _publish(self, action: ClusterPublish) -> None:
        assert self._cluster is not None
        self._cluster.publish(action.subject, action.data)

    def _stream_append(self, action: StreamAppend) -> None:
        assert self._stream_store is not None
        self._stream_store.append(action.channel, action.data)

    def _stream_read(self, action: StreamRead) -> None:
        assert self._stream_store is not None
        self._stream_store.read(action.request, action.channel, action.since, action.limit)

    def _roster_put(self, action: StorePut) -> None:
        assert self._roster is not None
        self._roster.put(action.channel, action.session_id, action.member, action.ttl)

    def _roster_refresh(self, action: StoreRefresh) -> None:
        assert self._roster is not None
        self._roster.refresh(action.entries, action.ttl)

    def _roster_delete(self, action: StoreDelete) -> None:
        assert self._roster is not None
        self._roster.delete(action.channel, action.session_id)
