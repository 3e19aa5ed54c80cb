"""Events: what the shim feeds to ``Presence.handle`` and ``Hub.handle``.

Each event validates itself when built, so a bad value fails where the shim
or the embedding program creates it, with a ``LocalUsageError`` naming the
field, and the machine never sees it. Connections and bridges are opaque
hashable ids chosen by the shim. ``now`` is monotonic seconds read by the
shim: a finite number. Bytes from the network (``data``) must be ``str`` or
``bytes``; what they say is checked by the machine, never here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, TypeAlias, final

import attrs

from ._values import (
    JsonObject,
    Message,
    PresenceMode,
    Sender,
    StreamPosition,
    freeze_json,
    non_empty_str,
    str_tuple,
    utf8_len,
)
from .errors import LocalUsageError

__all__ = [
    "BridgeClosed",
    "BridgeConnecting",
    "BridgeFrameReceived",
    "BroadcastRequested",
    "ClusterConnected",
    "ClusterLost",
    "ClusterMessageReceived",
    "CommandReceived",
    "ConnectionClosed",
    "ConnectionOpened",
    "DirectRequested",
    "DrainRequested",
    "Event",
    "HubConnected",
    "HubEvent",
    "HubFrameReceived",
    "HubLinkStarted",
    "HubLost",
    "KickRequested",
    "MetadataUpdated",
    "PositionCheck",
    "PresenceSync",
    "PublishRequested",
    "RosterRequested",
    "SessionJoined",
    "ShutdownRequested",
    "StreamPosition",
    "StreamPublished",
    "StreamReadDone",
    "StreamStoreChanged",
    "StreamStoreState",
    "Subscribe",
    "Tick",
    "Unsubscribe",
]

#: Metadata and messages are checked against the configured limits inside
#: ``handle``; this bound only stops a runaway value before it is copied.
_ABSOLUTE_MAX_JSON_BYTES: Final = 16 * 1024 * 1024


def hashable_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: connection and bridge ids are any hashable value but None."""
    if value is None or not isinstance(value, Hashable):
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be a hashable id, not {value!r}"
        )


def optional_conn(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a hashable id, or None."""
    if value is not None:
        hashable_id(instance, attribute, value)


def _name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    non_empty_str(type(instance).__name__, attribute.name, value)


def monotonic_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a finite number of seconds, never NaN, an infinity or a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be monotonic seconds, got {value!r}"
        )


def _of_type(kind: type, *, optional: bool = False) -> Callable[[Any, Any, Any], None]:
    """Validator: an instance of ``kind`` (or None when ``optional``), else ``LocalUsageError``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (value is None and optional) or (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ):
            return
        wanted = f"{kind.__name__} or None" if optional else kind.__name__
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be {wanted}, "
            f"not {type(value).__name__}"
        )

    return check


def received_data(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: what arrived from the network, as text or bytes (checked later)."""
    if not isinstance(value, (str, bytes)):
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be str or bytes, "
            f"not {type(value).__name__}"
        )


def _data_repr(data: str | bytes) -> str:
    return f"<{len(data)} chars>"


def _channels(value: Any) -> tuple[str, ...]:
    return str_tuple("SessionJoined", "channels", value)


def _except_ids(value: Any) -> frozenset[str]:
    return frozenset(str_tuple("BroadcastRequested", "except_session_ids", value))


def _publish_except_ids(value: Any) -> frozenset[str]:
    return frozenset(str_tuple("PublishRequested", "except_session_ids", value))


def _sender_or_conn(owner: str, sender: Sender | None, conn: Hashable | None) -> None:
    if sender is not None and conn is not None:
        raise LocalUsageError(
            f"{owner}: give sender or conn, not both (with conn the sender is that "
            "connection's session)"
        )


def _mode(value: Any) -> PresenceMode:
    return PresenceMode.coerce("Subscribe", value)


def _freeze_metadata(event: Any, owner: str, *, required: bool) -> None:
    """Replace ``event.metadata`` by a private copy and set ``metadata_bytes``, from one
    encoding of it: the copy is parsed back from the text whose size is counted."""
    value = event.metadata
    frozen: JsonObject | None = None
    size = 0
    if value is not None:
        if not isinstance(value, Mapping):
            raise LocalUsageError(
                f"{owner}: metadata must be a mapping, not {type(value).__name__}"
            )
        frozen, text = freeze_json(
            dict(value), what=f"{owner}: metadata", max_bytes=_ABSOLUTE_MAX_JSON_BYTES
        )
        size = utf8_len(text)
    elif required:
        raise LocalUsageError(f"{owner}: metadata must be a mapping, not None")
    object.__setattr__(event, "metadata", frozen)
    object.__setattr__(event, "metadata_bytes", size)


def _any_metadata(value: Mapping[str, Any] | None) -> Any:
    """The metadata as given (frozen once the event is built: :func:`_freeze_metadata`);
    typed as the embedding program may give it."""
    return value


@final
@attrs.frozen(kw_only=True)
class ConnectionOpened:
    """A WebSocket was accepted on path ``ns``; it receives broadcasts of that ns."""

    conn: Hashable = attrs.field(validator=hashable_id)
    ns: str = attrs.field(validator=_name)


@final
@attrs.frozen(kw_only=True)
class SessionJoined:
    """The embedding program authenticated ``conn`` as ``user_id``/``session_id``."""

    conn: Hashable = attrs.field(validator=hashable_id)
    user_id: str = attrs.field(validator=_name)
    session_id: str = attrs.field(validator=_name)
    channels: tuple[str, ...] = attrs.field(default=(), converter=_channels)
    metadata: JsonObject | None = attrs.field(default=None, hash=False, converter=_any_metadata)
    now: float = attrs.field(validator=monotonic_seconds)
    metadata_bytes: int = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        _freeze_metadata(self, "SessionJoined", required=False)


@final
@attrs.frozen(kw_only=True)
class ConnectionClosed:
    """The socket is gone (either side closed it, or a write failed).

    A joined session whose socket closed on its own stays listed for the leave
    grace (``PresenceConfig.leave_grace``); one that was kicked leaves at once.
    """

    conn: Hashable = attrs.field(validator=hashable_id)
    now: float = attrs.field(validator=monotonic_seconds)


def _message(value: Message | Mapping[str, Any]) -> Message:
    return Message.coerce(value)


@final
@attrs.frozen(kw_only=True)
class BroadcastRequested:
    """Send ``message`` to every connection of ``ns``, here and on every peer.

    ``channel`` routes the broadcast between processes (the hub sends it to
    the bridges with a member in the channel, the cluster to every instance);
    it does not filter local delivery, which reaches every connection of
    ``ns``, joined or not (the seed's rule: channel-scoped delivery is a
    separate request).

    The message carries its sender as ``from`` when there is one: with ``conn``
    (a client broadcast) the sender is that connection's session, and a
    connection without one is told ``not_joined``; the embedding program may
    instead name a ``sender`` itself, or none (a server message). ``conn`` is
    also told if it is refused (``busy``: the hub link holds too much to take it).
    """

    ns: str = attrs.field(validator=_name)
    channel: str = attrs.field(validator=_name)
    message: Message = attrs.field(converter=_message)
    except_session_ids: frozenset[str] = attrs.field(
        default=frozenset(),
        converter=_except_ids,
    )
    sender: Sender | None = attrs.field(default=None, validator=_of_type(Sender, optional=True))
    conn: Hashable | None = attrs.field(default=None, validator=optional_conn)

    def __attrs_post_init__(self) -> None:
        _sender_or_conn("BroadcastRequested", self.sender, self.conn)


@final
@attrs.frozen(kw_only=True)
class DirectRequested:
    """Send ``message`` to every connection of ``user_id``, here and on every peer.

    ``conn``, when a client asked, gets a ``direct.result`` reply saying whether
    the user was found (as far as this process knows: its own sessions, the
    channel rosters it holds, the cluster's roster). The message carries its
    sender as ``from`` as a broadcast does: the session of ``conn``, or
    ``sender``, or none.
    """

    user_id: str = attrs.field(validator=_name)
    message: Message = attrs.field(converter=_message)
    conn: Hashable | None = attrs.field(default=None, validator=optional_conn)
    sender: Sender | None = attrs.field(default=None, validator=_of_type(Sender, optional=True))

    def __attrs_post_init__(self) -> None:
        _sender_or_conn("DirectRequested", self.sender, self.conn)


@final
@attrs.frozen(kw_only=True)
class PublishRequested:
    """Send ``message`` to exactly the subscribers of ``channel``, here and on every peer.

    Unlike a broadcast, this reaches sessions subscribed to the channel (in any
    presence mode), whatever their path, and nobody else. The message carries
    its sender when there is one: with ``conn`` (a client published) the sender
    is that connection's session, and the session must be subscribed to the
    channel, else the client is told ``not_subscribed``; the embedding program
    may instead name a ``sender`` itself, or none.
    """

    channel: str = attrs.field(validator=_name)
    message: Message = attrs.field(converter=_message)
    except_session_ids: frozenset[str] = attrs.field(
        default=frozenset(), converter=_publish_except_ids
    )
    sender: Sender | None = attrs.field(default=None, validator=_of_type(Sender, optional=True))
    conn: Hashable | None = attrs.field(default=None, validator=optional_conn)

    def __attrs_post_init__(self) -> None:
        _sender_or_conn("PublishRequested", self.sender, self.conn)


@final
@attrs.frozen(kw_only=True)
class Subscribe:
    """Subscribe the session of ``conn`` to ``channel``, or change its presence ``mode``.

    The connection is told ``subscribed``, then (mode users or sessions) a
    snapshot or (mode count) the counts. Refusals a caller cannot check
    beforehand (the channel is full, the session has too many channels, the
    connection holds no session) are a ``RequestRefused`` action, not an error.
    ``denied`` is the shim's permission hook's verdict: with a reason there, the
    connection is refused ``forbidden`` with it and nothing changes.
    """

    conn: Hashable = attrs.field(validator=hashable_id)
    channel: str = attrs.field(validator=_name)
    mode: PresenceMode = attrs.field(default=PresenceMode.NONE, converter=_mode)
    now: float = attrs.field(validator=monotonic_seconds)
    denied: str | None = attrs.field(default=None, validator=_of_type(str, optional=True))
    #: The last position the client holds (``subscribe``'s ``since``): answer whether
    #: the publications after it can be recovered, and send them.
    since: StreamPosition | None = attrs.field(
        default=None, validator=_of_type(StreamPosition, optional=True)
    )


@final
@attrs.frozen(kw_only=True)
class Unsubscribe:
    """The session of ``conn`` leaves ``channel`` at once (no grace); it is told so."""

    conn: Hashable = attrs.field(validator=hashable_id)
    channel: str = attrs.field(validator=_name)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class PresenceSync:
    """A watcher asks for a fresh snapshot (or count) of ``channel``."""

    conn: Hashable = attrs.field(validator=hashable_id)
    channel: str = attrs.field(validator=_name)


@final
@attrs.frozen(kw_only=True)
class PositionCheck:
    """A client confirms the ``position`` it holds in ``channel`` (its periodic check,
    which catches a loss nothing else showed). Nothing is sent when the stream here
    has reached it under the same epoch (what lies between is on its way, or was not
    for this session); else the connection is sent ``stream.missed``."""

    conn: Hashable = attrs.field(validator=hashable_id)
    channel: str = attrs.field(validator=_name)
    position: StreamPosition = attrs.field(validator=_of_type(StreamPosition))


@final
@attrs.frozen(kw_only=True)
class RosterRequested:
    """A client asked for the roster of ``ns`` (its ``roster`` command): the core answers
    ``conn`` with the members and which of them is in each channel."""

    conn: Hashable = attrs.field(validator=hashable_id)
    ns: str = attrs.field(validator=_name)


@final
@attrs.frozen(kw_only=True)
class CommandReceived:
    """A client connection sent a command: it counts against the connection's rate
    (``Limits.command_rate`` and ``command_burst``). Answered with nothing when the
    command may go on, or a ``RequestRefused`` (``rate_limited``) when it must not
    be handled. A snapshot the connection is then sent (``sync``, ``subscribe``) costs
    one command more per ``config.SNAPSHOT_CHARS_PER_COMMAND`` characters of it."""

    conn: Hashable = attrs.field(validator=hashable_id)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class MetadataUpdated:
    """Replace the metadata of a local session (kept for resync, sent to peers).
    ``conn``, when a client asked, is told if it is refused: ``busy``, or ``not_joined``
    when it does not hold the session (a newer connection took it)."""

    session_id: str = attrs.field(validator=_name)
    metadata: JsonObject = attrs.field(hash=False, converter=_any_metadata)
    now: float = attrs.field(validator=monotonic_seconds)
    conn: Hashable | None = attrs.field(default=None, validator=optional_conn)
    metadata_bytes: int = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        _freeze_metadata(self, "MetadataUpdated", required=True)


@final
@attrs.frozen(kw_only=True)
class KickRequested:
    """Close a session wherever it lives: 1008 (do not return) or 4503 (requeue)."""

    session_id: str = attrs.field(validator=_name)
    reason: str | None = attrs.field(default=None, validator=_of_type(str, optional=True))
    requeue: bool = attrs.field(default=False, validator=_of_type(bool))


@final
@attrs.frozen(kw_only=True)
class HubLinkStarted:
    """Start the hub link: the machine answers with ``ConnectHub``."""

    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class HubConnected:
    """The hub transport is open (the upgrade was accepted)."""

    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class HubFrameReceived:
    """A text frame arrived on the hub link; the machine validates it."""

    data: str | bytes = attrs.field(repr=_data_repr, validator=received_data)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class HubLost:
    """The hub transport closed or could not be opened; ``code`` is None without a close
    frame. ``status`` is the HTTP status of a refused upgrade: 401 (a bad token) is the
    one refusal the link does not retry; after anything else it backs off and retries."""

    now: float = attrs.field(validator=monotonic_seconds)
    code: int | None = attrs.field(default=None, validator=_of_type(int, optional=True))
    reason: str = attrs.field(default="", validator=_of_type(str))
    status: int | None = attrs.field(default=None, validator=_of_type(int, optional=True))


@final
@attrs.frozen(kw_only=True)
class ClusterConnected:
    """The cluster client connected or reconnected: treated as a possible gap."""

    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class ClusterLost:
    """The cluster client lost its connection (it keeps trying on its own)."""

    now: float = attrs.field(validator=monotonic_seconds)


class StreamStoreState(enum.Enum):
    """Where a shim's stream store (JetStream, Redis Streams) stands (see ``_stream_store``)."""

    #: It numbers every channel's stream for the whole deployment.
    READY = "ready"
    #: It is configured but out of reach: a publish is ``unavailable`` meanwhile.
    DOWN = "down"
    #: There is none (or the server lacks it): each process numbers its own streams.
    ABSENT = "absent"


def _offset(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be an int >= 0, got {value!r}"
        )


def _entries(value: Any) -> tuple[tuple[int, str | bytes], ...]:
    entries = tuple(value)
    for entry in entries:
        if (
            not isinstance(entry, tuple)
            or len(entry) != 2
            or isinstance(entry[0], bool)
            or not isinstance(entry[0], int)
            or not isinstance(entry[1], (str, bytes))
        ):
            raise LocalUsageError(
                f"StreamReadDone: entries must be (offset, data) pairs, got {entry!r}"
            )
    return entries


@final
@attrs.frozen(kw_only=True)
class StreamStoreChanged:
    """The shim's stream store became ``state`` (at start, and at every change): while
    ``READY`` it numbers the channel streams, so publications and recoveries go to it."""

    state: StreamStoreState = attrs.field(validator=_of_type(StreamStoreState))
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class StreamPublished:
    """The stream store numbered a publication (a ``StreamAppend``'s ``data``, from any
    process): ``channel``'s publications arrive in offset order, each once."""

    channel: str = attrs.field(validator=_name)
    offset: int = attrs.field(validator=_offset)
    epoch: str = attrs.field(validator=_name)
    data: str | bytes = attrs.field(repr=_data_repr, validator=received_data)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class StreamReadDone:
    """The stream store's answer to ``StreamRead`` ``request``: the stream's position and
    the ``entries`` (offset, data) after the read's ``since`` it still keeps, oldest first;
    ``position`` None when the store could not be read (answered from this process)."""

    request: int = attrs.field(validator=_offset)
    position: StreamPosition | None = attrs.field(validator=_of_type(StreamPosition, optional=True))
    entries: tuple[tuple[int, str | bytes], ...] = attrs.field(default=(), converter=_entries)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class ClusterMessageReceived:
    """A message arrived on one of the cluster's subjects; the machine validates it."""

    data: str | bytes = attrs.field(repr=_data_repr, validator=received_data)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class Tick:
    """Time passed: heartbeats, timeouts and reconnects are due on ticks."""

    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class DrainRequested:
    """Hand every client to another server before a shutdown: each connection is closed
    with 4503 (reconnect now), so each session lingers for its leave grace and moves with
    its client to the server it reconnects to; a join from now on is closed with 4503 too.
    The hub and cluster links stay up; ``Presence.drained`` says when every session has
    moved or left. Without a hub or a cluster no other server could take a session, so
    the closes are 1001 (going away) and ``drained`` waits for the sockets only. Then
    ``ShutdownRequested``."""


@final
@attrs.frozen(kw_only=True)
class ShutdownRequested:
    """Stop in order: hub link, cluster, roster, then the client connections (1001)."""


Event: TypeAlias = (
    ConnectionOpened
    | SessionJoined
    | ConnectionClosed
    | BroadcastRequested
    | PublishRequested
    | DirectRequested
    | MetadataUpdated
    | Subscribe
    | Unsubscribe
    | PresenceSync
    | PositionCheck
    | RosterRequested
    | CommandReceived
    | KickRequested
    | HubLinkStarted
    | HubConnected
    | HubFrameReceived
    | HubLost
    | ClusterConnected
    | ClusterLost
    | ClusterMessageReceived
    | StreamStoreChanged
    | StreamPublished
    | StreamReadDone
    | Tick
    | DrainRequested
    | ShutdownRequested
)


@final
@attrs.frozen(kw_only=True)
class BridgeConnecting:
    """An upgrade request reached the hub; ``authorization`` is its header, if any."""

    bridge: Hashable = attrs.field(validator=hashable_id)
    authorization: str | None = attrs.field(repr=False, validator=_of_type(str, optional=True))
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class BridgeFrameReceived:
    """A text frame arrived from a bridge; the hub validates it."""

    bridge: Hashable = attrs.field(validator=hashable_id)
    data: str | bytes = attrs.field(repr=_data_repr, validator=received_data)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class BridgeClosed:
    """The bridge's transport is gone, whoever closed it."""

    bridge: Hashable = attrs.field(validator=hashable_id)
    now: float = attrs.field(validator=monotonic_seconds)


HubEvent: TypeAlias = (
    BridgeConnecting | BridgeFrameReceived | BridgeClosed | Tick | ShutdownRequested
)
