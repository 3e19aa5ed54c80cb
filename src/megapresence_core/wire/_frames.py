"""Hub frames and cluster messages: typed frozen classes and their schemas.

Hub protocol (version 2; a hub still accepts version 1 bridges): JSON text
frames ``{"type": T, "payload": {...}}`` with camelCase fields, between a
bridge and the hub. Version 2 adds REGISTER ``channels`` (interest without a
member), SUBSCRIBE, UNSUBSCRIBE, PUBLISH and MEMBERS (never sent to a
version 1 bridge).

Batching is a capability, not a version: a link whose REGISTER and REGISTERED
both name ``batch`` may carry several frames in one WebSocket message after
REGISTERED (which travels alone), joined by a line feed. Compact JSON never
holds one (a line feed is only ever JSON whitespace, so a frame that holds one
travels with it replaced by a space), so splitting needs no parsing; every frame
keeps its own limit, and a whole batch is no larger than one frame may be.

Cluster protocol (version 1), between instances of one app over NATS: one
JSON object ``{"v": 1, "kind": K, "from": instanceId, "epoch": bootEpoch,
...}``. ``from`` lets the sender skip its own echo; ``epoch`` tells a
restarted instance from its previous incarnation. Fan-out kinds travel on the
app's ``fanout`` subject, member kinds on its ``members`` subject.

==============  =====================================================
``broadcast``   ``ns``, ``channel``, ``message``, ``except?``, ``by?``
``publish``     ``channel``, ``message``, ``except?``, ``by?: {userId, sessionId}``:
                to the channel's subscribers on every instance
``direct``      ``userId``, ``message``, ``by?``
``kick``        ``sessionId``, ``reason?``, ``requeue?``
``add``         ``ns``, ``member: {sessionId, userId, metadata?}``, ``channels?``,
                ``claim?``: the member's whole state (a join, a metadata change, a
                subscribe or an unsubscribe), so a lost one is healed by the next;
                ``claim`` ranks the sender's hold on the session against another's
``remove``      ``sessionId``
``heartbeat``   ``count``, ``digest``: what the sender holds (sessions, their channels
                and metadata), to spot a gap
``snapshot``    ``snap``, ``part``, ``parts``, ``members: [{ns, sessionId, userId,
                metadata?, channels?, claim?}]``: every member of the sender, in parts
``resync``      ``target``: an instance id, or ``"*"``: please send a snapshot
``bye``         the sender is stopping: forget its members now
==============  =====================================================
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias, final

import attrs

from .._values import (
    ENVELOPE_DEPTH,
    MAX_JSON_DEPTH,
    JsonObject,
    Member,
    Message,
    RemoteMember,
    Sender,
)
from ._codec import (
    Dialect,
    Field,
    check_count,
    check_flag,
    check_message,
    check_name,
    check_names,
    check_object,
    check_text,
    names,
    register,
)

__all__ = [
    "CLUSTER_DIALECT",
    "CLUSTER_KINDS",
    "CLUSTER_PROTOCOL_VERSION",
    "FRAME_TYPES",
    "HUB_BATCH",
    "HUB_BATCH_SEPARATOR",
    "HUB_DIALECT",
    "HUB_PROTOCOL_VERSION",
    "SUPPORTED_HUB_PROTOCOLS",
    "BroadcastFrame",
    "BulkLeaveFrame",
    "ClusterAdd",
    "ClusterBroadcast",
    "ClusterBye",
    "ClusterChannelPublish",
    "ClusterDirect",
    "ClusterHeartbeat",
    "ClusterKick",
    "ClusterMessage",
    "ClusterRemove",
    "ClusterRestored",
    "ClusterResync",
    "ClusterSnapshot",
    "DirectFrame",
    "DisconnectFrame",
    "ErrorFrame",
    "HeartbeatFrame",
    "HubFrame",
    "JoinFrame",
    "LeaveFrame",
    "MembersFrame",
    "MetadataFrame",
    "PublishFrame",
    "RegisterFrame",
    "RegisteredFrame",
    "RestoredFrame",
    "SubscribeFrame",
    "UnsubscribeFrame",
]

#: The hub protocol spoken by this release's bridges (REGISTER ``protocol``).
HUB_PROTOCOL_VERSION: Final = 2
#: The protocols a hub of this release accepts.
SUPPORTED_HUB_PROTOCOLS: Final = frozenset({1, 2})
#: The capability (REGISTER and REGISTERED ``capabilities``) of a link end that reads
#: several frames in one message, joined by :data:`HUB_BATCH_SEPARATOR`.
HUB_BATCH: Final = "batch"
HUB_BATCH_SEPARATOR: Final = "\n"
CLUSTER_PROTOCOL_VERSION: Final = 1

# ---------------------------------------------------------------- hub frames


@final
@attrs.frozen(kw_only=True)
class RegisterFrame:
    bridge_id: str
    instance_id: str
    capabilities: tuple[str, ...] = ()
    protocol: int
    #: Channels whose traffic the bridge wants without a member in them (version 2).
    channels: tuple[str, ...] = ()


@final
@attrs.frozen(kw_only=True)
class RegisteredFrame:
    hub_id: str
    heartbeat_interval: float
    #: What the hub can do beyond its protocol (``batch``); old bridges ignore it.
    capabilities: tuple[str, ...] = ()
    #: The hub's limits, for the bridge to pace what it sends (frames per second
    #: sustained, the burst above it, bytes per frame). Optional: an older hub says
    #: none, and an older bridge ignores them.
    max_frames_per_second: float | None = None
    frame_burst: float | None = None
    max_frame_bytes: int | None = None


@final
@attrs.frozen(kw_only=True)
class JoinFrame:
    user_id: str
    session_id: str
    channels: tuple[str, ...]
    metadata: JsonObject | None = attrs.field(default=None, hash=False)
    #: Version 2, on a resync: the session's socket closed and the bridge holds it for
    #: its leave grace; it never takes the session from a bridge that holds it now.
    lingering: bool = False
    #: The bridge refuses a second connection for a session (``REFUSE_NEW``): the hub
    #: refuses this JOIN (ERROR ``session_in_use``) while another bridge holds the
    #: session with an open connection, instead of moving it here.
    exclusive: bool = False
    #: Which of its bridge's connections holds the session (a number the bridge gives
    #: each join), so the hub can say which one a move supersedes.
    claim: int = 0
    #: Hub to the bridge the session moves away from: the ``claim`` of its connection
    #: that loses it. A bridge whose connection has a newer claim (its own JOIN crossed
    #: this one) keeps it: the hub will give the session back to it.
    supersedes: int = 0


@final
@attrs.frozen(kw_only=True)
class LeaveFrame:
    session_id: str


@final
@attrs.frozen(kw_only=True)
class BulkLeaveFrame:
    bridge_id: str
    session_ids: tuple[str, ...]


@final
@attrs.frozen(kw_only=True)
class MetadataFrame:
    session_id: str
    metadata: JsonObject = attrs.field(hash=False)


@final
@attrs.frozen(kw_only=True)
class BroadcastFrame:
    ns: str
    channel: str
    message: Message
    except_session_ids: tuple[str, ...] = ()
    author: Sender | None = None


@final
@attrs.frozen(kw_only=True)
class DirectFrame:
    user_id: str
    message: Message
    author: Sender | None = None


@final
@attrs.frozen(kw_only=True)
class DisconnectFrame:
    session_id: str
    reason: str | None = None
    requeue: bool = False


@final
@attrs.frozen(kw_only=True)
class SubscribeFrame:
    """A session of the sender's subscribed to one more channel (version 2)."""

    session_id: str
    user_id: str
    channel: str
    metadata: JsonObject | None = attrs.field(default=None, hash=False)


@final
@attrs.frozen(kw_only=True)
class UnsubscribeFrame:
    """A session of the sender's left one channel, and is still joined (version 2)."""

    session_id: str
    channel: str


@final
@attrs.frozen(kw_only=True)
class PublishFrame:
    """A message to a channel's subscribers on every bridge (version 2)."""

    channel: str
    message: Message
    except_session_ids: tuple[str, ...] = ()
    author: Sender | None = None


@final
@attrs.frozen(kw_only=True)
class MembersFrame:
    """Hub to bridge: part ``part`` of ``parts`` of a channel's members on other bridges,
    sent when the bridge starts to track the channel (version 2)."""

    channel: str
    part: int
    parts: int
    members: tuple[Member, ...]


@final
@attrs.frozen(kw_only=True)
class HeartbeatFrame:
    pass


@final
@attrs.frozen(kw_only=True)
class ErrorFrame:
    code: str
    message: str = ""
    #: The session the refusal belongs to: it costs that session, never the link.
    session_id: str | None = None


@final
@attrs.frozen(kw_only=True)
class RestoredFrame:
    """Hub to the bridge a session just moved to (a return within the grace, or a
    take-over): the channels the session keeps, its prior ones first."""

    session_id: str
    channels: tuple[str, ...]


HubFrame: TypeAlias = (
    RegisterFrame
    | RegisteredFrame
    | JoinFrame
    | LeaveFrame
    | BulkLeaveFrame
    | MetadataFrame
    | BroadcastFrame
    | DirectFrame
    | DisconnectFrame
    | HeartbeatFrame
    | ErrorFrame
    | SubscribeFrame
    | UnsubscribeFrame
    | PublishFrame
    | MembersFrame
    | RestoredFrame
)
#: Bounds of REGISTERED's ``heartbeatInterval`` (seconds): a hub asking for
#: beats faster than 50 ms would flood every bridge, one slower than an hour
#: would switch liveness off. Outside them the frame is refused as bad.
MIN_HEARTBEAT_INTERVAL: Final = 0.05
MAX_HEARTBEAT_INTERVAL: Final = 3600.0


def _positive_count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("must be a positive integer")


def _interval(value: Any) -> float:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and MIN_HEARTBEAT_INTERVAL <= value <= MAX_HEARTBEAT_INTERVAL
    ):
        return float(value)
    raise ValueError(
        f"must be a number of seconds from {MIN_HEARTBEAT_INTERVAL:g} to {MAX_HEARTBEAT_INTERVAL:g}"
    )


def _positive(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e12:
        return float(value)
    raise ValueError("must be a positive number")


def _member(value: Any) -> Member:
    obj = check_object(value)
    metadata = obj.get("metadata")
    return Member(
        session_id=check_name(obj.get("sessionId")),
        user_id=check_name(obj.get("userId")),
        metadata=None if metadata is None else check_object(metadata),
    )


def _member_list(value: Any) -> tuple[Member, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of members")
    return tuple(_member(item) for item in value)


def _sender(value: Any) -> Sender:
    obj = check_object(value)
    return Sender(
        user_id=check_name(obj.get("userId")), session_id=check_name(obj.get("sessionId"))
    )


HUB_DIALECT: Final = Dialect(
    what="hub frame", tag="type", nested="payload", max_depth=MAX_JSON_DEPTH + ENVELOPE_DEPTH
)
_H = HUB_DIALECT
# Fields both protocols carry, declared once.
_SESSION = Field("sessionId", "session_id", check_name)
_USER = Field("userId", "user_id", check_name)
_NS = Field("ns", "ns", check_name)
_CHANNEL = Field("channel", "channel", check_name)
_MESSAGE = Field("message", "message", check_message)
_REASON = Field("reason", "reason", check_text, None)
_REQUEUE = Field("requeue", "requeue", check_flag, False)
_CHANNELS = Field("channels", "channels", check_names, ())
_AUTHOR = Field("from", "author", _sender, None)

register(
    _H,
    "REGISTER",
    RegisterFrame,
    Field("bridgeId", "bridge_id", check_name),
    Field("instanceId", "instance_id", check_name),
    Field("capabilities", "capabilities", check_names, ()),
    Field("protocol", "protocol", _positive_count),
    _CHANNELS,
)
register(
    _H,
    "REGISTERED",
    RegisteredFrame,
    Field("hubId", "hub_id", check_name),
    Field("heartbeatInterval", "heartbeat_interval", _interval),
    Field("capabilities", "capabilities", check_names, ()),
    Field("maxFramesPerSecond", "max_frames_per_second", _positive, None),
    Field("frameBurst", "frame_burst", _positive, None),
    Field("maxFrameBytes", "max_frame_bytes", _positive_count, None),
)
register(
    _H,
    "JOIN",
    JoinFrame,
    _USER,
    _SESSION,
    Field("channels", "channels", check_names),
    Field("metadata", "metadata", check_object, None),
    Field("lingering", "lingering", check_flag, False),
    Field("exclusive", "exclusive", check_flag, False),
    Field("claim", "claim", check_count, 0),
    Field("supersedes", "supersedes", check_count, 0),
)
register(_H, "LEAVE", LeaveFrame, _SESSION)
register(
    _H,
    "BULK_LEAVE",
    BulkLeaveFrame,
    Field("bridgeId", "bridge_id", check_name),
    Field("sessionIds", "session_ids", check_names),
)
register(_H, "METADATA", MetadataFrame, _SESSION, Field("metadata", "metadata", check_object))
register(
    _H,
    "BROADCAST",
    BroadcastFrame,
    _NS,
    _CHANNEL,
    _MESSAGE,
    Field("exceptSessionIds", "except_session_ids", check_names, ()),
    _AUTHOR,
)
register(_H, "DIRECT", DirectFrame, _USER, _MESSAGE, _AUTHOR)
register(_H, "DISCONNECT", DisconnectFrame, _SESSION, _REASON, _REQUEUE)
register(_H, "HEARTBEAT", HeartbeatFrame)
register(
    _H,
    "ERROR",
    ErrorFrame,
    Field("code", "code", check_name),
    Field("message", "message", check_text, ""),
    Field("sessionId", "session_id", check_name, None),
)
register(_H, "RESTORED", RestoredFrame, _SESSION, Field("channels", "channels", check_names))
register(
    _H,
    "SUBSCRIBE",
    SubscribeFrame,
    _SESSION,
    _USER,
    _CHANNEL,
    Field("metadata", "metadata", check_object, None),
)
register(_H, "UNSUBSCRIBE", UnsubscribeFrame, _SESSION, _CHANNEL)
register(
    _H,
    "PUBLISH",
    PublishFrame,
    _CHANNEL,
    _MESSAGE,
    Field("exceptSessionIds", "except_session_ids", check_names, ()),
    _AUTHOR,
)
register(
    _H,
    "MEMBERS",
    MembersFrame,
    _CHANNEL,
    Field("part", "part", check_count),
    Field("parts", "parts", check_count),
    Field("members", "members", _member_list),
)

#: The frame type names, for fuzz dictionaries and error messages.
FRAME_TYPES: Final = names(_H)

# ---------------------------------------------------------- cluster messages


@final
@attrs.frozen(kw_only=True)
class ClusterBroadcast:
    sender: str
    epoch: int
    ns: str
    channel: str
    message: Message
    except_session_ids: tuple[str, ...] = ()
    author: Sender | None = None


@final
@attrs.frozen(kw_only=True)
class ClusterChannelPublish:
    sender: str
    epoch: int
    channel: str
    message: Message
    except_session_ids: tuple[str, ...] = ()
    #: Who published it (``by`` on the wire: ``from`` is the instance).
    author: Sender | None = None


@final
@attrs.frozen(kw_only=True)
class ClusterDirect:
    sender: str
    epoch: int
    user_id: str
    message: Message
    author: Sender | None = None


@final
@attrs.frozen(kw_only=True)
class ClusterKick:
    sender: str
    epoch: int
    session_id: str
    reason: str | None = None
    requeue: bool = False


@final
@attrs.frozen(kw_only=True)
class ClusterAdd:
    """A member joined the sender, or changed its metadata."""

    sender: str
    epoch: int
    ns: str
    member: Member
    channels: tuple[str, ...] = ()
    #: The sender's claim of the session (``RemoteMember.claim``).
    claim: int = 0


@final
@attrs.frozen(kw_only=True)
class ClusterRemove:
    sender: str
    epoch: int
    session_id: str


@final
@attrs.frozen(kw_only=True)
class ClusterHeartbeat:
    sender: str
    epoch: int
    count: int
    digest: int


@final
@attrs.frozen(kw_only=True)
class ClusterSnapshot:
    sender: str
    epoch: int
    snap: int
    part: int
    parts: int
    members: tuple[RemoteMember, ...]


@final
@attrs.frozen(kw_only=True)
class ClusterResync:
    sender: str
    epoch: int
    target: str  #: an instance id, or "*" for everyone


@final
@attrs.frozen(kw_only=True)
class ClusterRestored:
    """The sender held ``session_id`` in its leave grace and ``target`` took it over: the
    channels the session keeps (the cluster's RESTORED, for a target that had not heard)."""

    sender: str
    epoch: int
    target: str
    session_id: str
    channels: tuple[str, ...] = ()


@final
@attrs.frozen(kw_only=True)
class ClusterBye:
    sender: str
    epoch: int


ClusterMessage: TypeAlias = (
    ClusterBroadcast
    | ClusterChannelPublish
    | ClusterDirect
    | ClusterKick
    | ClusterAdd
    | ClusterRemove
    | ClusterHeartbeat
    | ClusterSnapshot
    | ClusterResync
    | ClusterRestored
    | ClusterBye
)


def _remote_member(value: Any) -> RemoteMember:
    obj = check_object(value)
    return RemoteMember(
        ns=check_name(obj.get("ns")),
        member=_member(obj),
        channels=check_names(obj.get("channels", [])),
        claim=check_count(obj.get("claim", 0)),
    )


def _members(value: Any) -> tuple[RemoteMember, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of members")
    return tuple(_remote_member(item) for item in value)


CLUSTER_DIALECT: Final = Dialect(
    what="cluster message",
    tag="kind",
    version=("v", CLUSTER_PROTOCOL_VERSION),
    header=(Field("from", "sender", check_name), Field("epoch", "epoch", check_count)),
    max_depth=MAX_JSON_DEPTH + ENVELOPE_DEPTH,
)
_K = CLUSTER_DIALECT
#: Who sent a client's message (``from`` is the instance here).
_BY = Field("by", "author", _sender, None)

register(
    _K,
    "broadcast",
    ClusterBroadcast,
    _NS,
    _CHANNEL,
    _MESSAGE,
    Field("except", "except_session_ids", check_names, ()),
    _BY,
)
register(
    _K,
    "publish",
    ClusterChannelPublish,
    _CHANNEL,
    _MESSAGE,
    Field("except", "except_session_ids", check_names, ()),
    _BY,
)
register(_K, "direct", ClusterDirect, _USER, _MESSAGE, _BY)
register(_K, "kick", ClusterKick, _SESSION, _REASON, _REQUEUE)
register(
    _K,
    "add",
    ClusterAdd,
    _NS,
    Field("member", "member", _member),
    _CHANNELS,
    Field("claim", "claim", check_count, 0),
)
register(_K, "remove", ClusterRemove, _SESSION)
register(
    _K,
    "heartbeat",
    ClusterHeartbeat,
    Field("count", "count", check_count),
    Field("digest", "digest", check_count),
)
register(
    _K,
    "snapshot",
    ClusterSnapshot,
    Field("snap", "snap", check_count),
    Field("part", "part", check_count),
    Field("parts", "parts", check_count),
    Field("members", "members", _members),
)
register(_K, "resync", ClusterResync, Field("target", "target", check_name))
register(
    _K, "restored", ClusterRestored, Field("target", "target", check_name), _SESSION, _CHANNELS
)
register(_K, "bye", ClusterBye)

#: The kinds, for fuzz dictionaries and tests.
CLUSTER_KINDS: Final = names(_K)
