"""The shim's shared words: what the hooks answer and what a backend must offer.

``Identity`` and ``Refusal`` are what ``authenticate`` and ``authorize_subscription``
answer; ``ClusterBackend``, ``RosterBackend`` and ``StreamStoreBackend`` are what
``PresenceServer`` needs of a cluster transport, a shared roster and a stream store,
health included (``/readyz`` and
``/metrics`` read ``healthy``, ``errors`` and ``queued``). They live apart from
``_server.py`` so that the modules ``PresenceServer`` is built from (the
permission gate, the opening, the backends, the JWT authenticator, the CLI) need not
import it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, final

import attrs

from megapresence_core import Event, LocalUsageError, Member
from megapresence_core.actions import StoreEntry
from megapresence_core.config import HistoryConfig
from megapresence_core.events import StreamPosition

from ._http import HandshakeRequest

__all__ = [
    "AuthResult",
    "Authenticator",
    "ChannelStats",
    "ClusterBackend",
    "Identity",
    "Refusal",
    "RosterBackend",
    "StreamStoreBackend",
    "Verdict",
]


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):  # would become one channel per character
        raise LocalUsageError(
            f"Identity: channels must be a list of channel names, not {type(value).__name__} "
            f"{value!r}; write [{value!r}]"
        )
    return tuple(value)


@final
@attrs.frozen(kw_only=True)
class Identity:
    """Who an authenticated connection is; becomes the core's ``SessionJoined``."""

    user_id: str
    session_id: str
    channels: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    metadata: Mapping[str, Any] | None = attrs.field(default=None, hash=False)


@final
@attrs.frozen(kw_only=True)
class Refusal:
    """Refuse the upgrade with an HTTP status (401, 403, ...) and a short body; from
    ``authorize_subscription``, refuse a subscription with ``reason`` (the status is unused)."""

    status: int = 403
    reason: str = "forbidden"


#: What ``authorize_subscription`` answers: allow, refuse, or refuse saying why.
Verdict = bool | Refusal
#: What ``authenticate`` answers: who it is, why not, or None (an anonymous socket).
AuthResult = Identity | Refusal | None
#: ``authenticate(request)``, sync or async.
Authenticator = Callable[[HandshakeRequest], AuthResult | Awaitable[AuthResult]]


class ClusterBackend(Protocol):
    """What the server needs from a cluster transport (``megapresence_nats.NatsCluster``)."""

    #: Errors met since start (connects, publishes): ``/metrics``.
    errors: int

    @property
    def queued(self) -> int:
        """Messages waiting to be published: ``/metrics``."""
        ...

    async def start(self, dispatch: Callable[[Event], None], subjects: tuple[str, ...]) -> None: ...

    async def run(self) -> None: ...

    def publish(self, subject: str, data: str) -> None: ...

    async def aclose(self) -> None: ...


class RosterBackend(Protocol):
    """What the server needs from a shared roster (``megapresence_redis.RedisRoster``)."""

    #: Failed writes and reads since start: ``/metrics``.
    errors: int

    @property
    def healthy(self) -> bool:
        """False while writes fail: ``/readyz`` says not ready."""
        ...

    @property
    def queued(self) -> int:
        """Writes waiting to be made: ``/metrics``."""
        ...

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    def put(self, channel: str, session_id: str, member: Member, ttl: float) -> None: ...

    def refresh(self, entries: Iterable[StoreEntry], ttl: float) -> None: ...

    def delete(self, channel: str, session_id: str) -> None: ...

    async def members(self, channels: Iterable[str]) -> list[Member]: ...

    async def aclose(self) -> None: ...


class StreamStoreBackend(Protocol):
    """What the server needs from a stream store (``megapresence_nats.JetStreamHistory``,
    ``megapresence_redis.RedisStreams``): it performs ``StreamAppend`` and ``StreamRead``
    and reports as ``megapresence_core``'s ``_stream_store`` says."""

    #: Failed writes, reads and reconnects since start: ``/metrics``.
    errors: int

    @property
    def healthy(self) -> bool:
        """False while the store is configured but out of reach: ``/readyz``."""
        ...

    @property
    def queued(self) -> int:
        """Appends and reads waiting to be made: ``/metrics``."""
        ...

    async def start(self, dispatch: Callable[[Event], None], history: HistoryConfig) -> None: ...

    async def run(self) -> None: ...

    def append(self, channel: str, data: str) -> None: ...

    def read(
        self, request: int, channel: str, since: StreamPosition | None, limit: int
    ) -> None: ...

    async def aclose(self) -> None: ...


class ChannelStats(NamedTuple):
    """``presence_stats(channel)``: sessions and distinct users in the channel."""

    sessions: int
    users: int
