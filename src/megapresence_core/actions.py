"""Actions: what ``Presence.handle`` and ``Hub.handle`` return for the shim to do, in order.

Reprs stay short (targets and texts are cut) so a failing hypothesis example
prints a list a person can read.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import TypeAlias, final

import attrs

from ._values import Member, StoreEntry, StreamPosition

__all__ = [
    "AcceptBridge",
    "Action",
    "ChannelsRestored",
    "CloseBridge",
    "CloseConnection",
    "CloseHubLink",
    "ClusterPublish",
    "ConnectHub",
    "Deliver",
    "HubAction",
    "Log",
    "LogLevel",
    "PauseBridge",
    "RefuseBridge",
    "RequestRefused",
    "SendBridgeFrame",
    "SendHubFrame",
    "StoreDelete",
    "StoreEntry",
    "StorePut",
    "StoreRefresh",
    "StreamAppend",
    "StreamRead",
]


def short_text(text: str | bytes, limit: int = 48) -> str:
    """``text`` cut to ``limit`` characters, with its full length when cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)})"


def short_conns(conns: tuple[Hashable, ...], limit: int = 4) -> str:
    if len(conns) <= limit:
        return repr(conns)
    shown = ", ".join(repr(conn) for conn in conns[:limit])
    return f"({shown}, …+{len(conns) - limit})"


@final
@attrs.frozen(kw_only=True)
class Deliver:
    """Write ``text`` to every connection in ``conns``: framed once, written N times."""

    conns: tuple[Hashable, ...] = attrs.field(repr=short_conns)
    text: str = attrs.field(repr=short_text)


@final
@attrs.frozen(kw_only=True)
class CloseConnection:
    """Close one client connection with a code and a reason already cut to 123 bytes."""

    conn: Hashable
    code: int
    reason: str


@final
@attrs.frozen(kw_only=True)
class RequestRefused:
    """A client's (or the embedding program's) request could not be done, for a reason
    nobody could check beforehand (``channel_full``, ``too_many_channels``,
    ``not_joined``, ``not_subscribed``...): nothing changed.

    ``text`` is the client error message ``{"type": "error", "payload": {"code",
    "message", "channel"?}}``, already encoded: a shim writes it to ``conn``, and
    an embedding API may also return the refusal to its caller.
    """

    conn: Hashable
    code: str
    message: str
    channel: str | None = None
    text: str = attrs.field(repr=False)


@final
@attrs.frozen(kw_only=True)
class ChannelsRestored:
    """``conn``'s session, taken over from another server after its join, kept its
    ``channels`` there and is in them here now (mode ``none``): what its connection was
    told when it opened did not list them, so a shim tells its application (the demo's
    ``welcome`` is sent again)."""

    conn: Hashable
    channels: tuple[str, ...]


@final
@attrs.frozen(kw_only=True)
class ConnectHub:
    """Open the hub transport; report ``HubConnected`` or ``HubLost``."""


@final
@attrs.frozen(kw_only=True)
class SendHubFrame:
    """Send one encoded frame on the hub link.

    ``batch``: the link batches, so the frame may share one WebSocket message with
    the frames sent after it in the same turn (joined by a line feed, up to the
    frame limit in all, order kept); otherwise it travels alone, after them."""

    batch: bool = False
    data: str = attrs.field(repr=short_text)


@final
@attrs.frozen(kw_only=True)
class CloseHubLink:
    """Close the hub transport; report ``HubLost`` once it is closed."""

    code: int
    reason: str


@final
@attrs.frozen(kw_only=True)
class ClusterPublish:
    """Publish one encoded cluster message on ``subject`` (best-effort, at most once)."""

    subject: str
    data: str = attrs.field(repr=short_text)


@final
@attrs.frozen(kw_only=True)
class StreamAppend:
    """Append a publication to ``channel``'s stream in the stream store: it takes the
    stream's next offset (1 under a new epoch if the stream has none) and reaches every
    process as ``StreamPublished`` with ``data`` as it is here (see ``_stream_store``)."""

    channel: str
    data: str = attrs.field(repr=short_text)


@final
@attrs.frozen(kw_only=True)
class StreamRead:
    """Read ``channel``'s stream in the stream store: answer ``StreamReadDone`` with its
    position (a stream with none gets an epoch now, at offset 0) and, when ``since`` is of
    that epoch and at most ``limit`` behind, the entries after it that are kept."""

    request: int
    channel: str
    since: StreamPosition | None
    limit: int


@final
@attrs.frozen(kw_only=True)
class StorePut:
    """Add or refresh a member of a channel in the shared store for ``ttl`` seconds."""

    channel: str
    session_id: str
    member: Member
    ttl: float


@final
@attrs.frozen(kw_only=True)
class StoreRefresh:
    """Re-put every member of this process for ``ttl`` more seconds (the store's heartbeat)."""

    entries: tuple[StoreEntry, ...] = attrs.field(repr=lambda entries: f"<{len(entries)} entries>")
    ttl: float


@final
@attrs.frozen(kw_only=True)
class StoreDelete:
    """Remove a member of this process from a channel in the shared store."""

    channel: str
    session_id: str


class LogLevel(enum.IntEnum):
    """Levels with the numeric values of the ``logging`` module."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


@final
@attrs.frozen(kw_only=True)
class Log:
    """Something worth a line in the server's log; ``event`` is a stable dotted name."""

    level: LogLevel = attrs.field(repr=lambda level: level.name)
    event: str
    fields: Mapping[str, object] = attrs.field(factory=dict, hash=False)


Action: TypeAlias = (
    Deliver
    | RequestRefused
    | CloseConnection
    | ChannelsRestored
    | ConnectHub
    | SendHubFrame
    | CloseHubLink
    | ClusterPublish
    | StreamAppend
    | StreamRead
    | StorePut
    | StoreRefresh
    | StoreDelete
    | Log
)


@final
@attrs.frozen(kw_only=True)
class AcceptBridge:
    """Complete the upgrade; frames may flow."""

    bridge: Hashable


@final
@attrs.frozen(kw_only=True)
class RefuseBridge:
    """Answer the upgrade with an HTTP error; no state was created."""

    bridge: Hashable
    status: int
    reason: str


@final
@attrs.frozen(kw_only=True)
class SendBridgeFrame:
    """Send one encoded frame to each bridge in ``bridges``; ``batch`` as for
    :class:`SendHubFrame` (every bridge of the action batches, or none does)."""

    bridges: tuple[Hashable, ...] = attrs.field(repr=short_conns)
    batch: bool = False
    data: str = attrs.field(repr=short_text)


@final
@attrs.frozen(kw_only=True)
class CloseBridge:
    """Close a bridge's transport, then report ``BridgeClosed``."""

    bridge: Hashable
    code: int
    reason: str


@final
@attrs.frozen(kw_only=True)
class PauseBridge:
    """Read nothing more from a bridge until ``until`` (monotonic seconds): it sent over
    the hub's frame rate, and back-pressure (TCP's) slows it instead of a refusal.
    Frames already read were handled; a later ``PauseBridge`` for it moves ``until``."""

    bridge: Hashable
    until: float


HubAction: TypeAlias = (
    AcceptBridge | RefuseBridge | SendBridgeFrame | CloseBridge | PauseBridge | Log
)
