"""Everything that travels: hub frames, cluster messages, browser commands and client frames.

One engine (:mod:`._codec`) encodes and decodes all of them (and the typed
server-to-browser presence messages of :mod:`._messages`) from their schemas;
this package is their public home::

    from megapresence_core.wire import BroadcastFrame, decode_hub_frame, encode

``encode(obj)`` gives the wire text of any frame, cluster message or command.
The ``decode_*`` functions check the size first, then strict JSON (no NaN or
infinities, no duplicate keys, no unpaired surrogates), then every known
field's type, and raise ``PeerError`` naming the field at fault; unknown
fields are ignored, so a newer peer may add optional ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._values import ABSENT, Json, JsonObject, RemoteMember, Sender, check_size
from ._client import (
    COMMAND_OPS,
    MAX_CLIENT_COMMAND_BYTES,
    RESERVED_PREFIXES,
    RESERVED_TYPES,
    BroadcastCommand,
    ClientCommand,
    CommandRefused,
    DirectCommand,
    KickCommand,
    MetadataCommand,
    PingCommand,
    PositionCommand,
    PublishCommand,
    RosterCommand,
    SubscribeCommand,
    SyncCommand,
    UnsubscribeCommand,
    broadcast_text,
    command_event,
    decode_client_command,
    direct_text,
    roster_reply,
)
from ._codec import decode, encode, wire_name
from ._frames import (
    CLUSTER_DIALECT,
    CLUSTER_KINDS,
    CLUSTER_PROTOCOL_VERSION,
    FRAME_TYPES,
    HUB_BATCH,
    HUB_BATCH_SEPARATOR,
    HUB_DIALECT,
    HUB_PROTOCOL_VERSION,
    MAX_HEARTBEAT_INTERVAL,
    MIN_HEARTBEAT_INTERVAL,
    SUPPORTED_HUB_PROTOCOLS,
    BroadcastFrame,
    BulkLeaveFrame,
    ClusterAdd,
    ClusterBroadcast,
    ClusterBye,
    ClusterChannelPublish,
    ClusterDirect,
    ClusterHeartbeat,
    ClusterKick,
    ClusterMessage,
    ClusterRemove,
    ClusterRestored,
    ClusterResync,
    ClusterSnapshot,
    DirectFrame,
    DisconnectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MembersFrame,
    MetadataFrame,
    PublishFrame,
    RegisteredFrame,
    RegisterFrame,
    RestoredFrame,
    SubscribeFrame,
    UnsubscribeFrame,
)
from ._messages import (
    CLIENT_ERROR_CODES,
    MAX_SERVER_MESSAGE_BYTES,
    SERVER_MESSAGE_TYPES,
    DirectResult,
    PresenceCount,
    PresenceDiff,
    PresenceMap,
    PresenceState,
    ServerMessage,
    SessionDetached,
    StreamMissed,
    StreamReset,
    Subscribed,
    Unsubscribed,
    channel_text,
    decode_server_message,
    error_reply,
    session_json,
    user_json,
)
from ._stream_frames import (
    HUB_STREAM,
    STREAM_FRAME_TYPES,
    RecoveredFrame,
    RecoverFrame,
    StreamFrame,
    StreamHubFrame,
    recovered_text,
)

__all__ = [
    "ABSENT",
    "CLIENT_ERROR_CODES",
    "CLUSTER_KINDS",
    "CLUSTER_PROTOCOL_VERSION",
    "COMMAND_OPS",
    "FRAME_TYPES",
    "HUB_BATCH",
    "HUB_BATCH_SEPARATOR",
    "HUB_PROTOCOL_VERSION",
    "HUB_STREAM",
    "MAX_CLIENT_COMMAND_BYTES",
    "MAX_HEARTBEAT_INTERVAL",
    "MAX_SERVER_MESSAGE_BYTES",
    "MIN_HEARTBEAT_INTERVAL",
    "RESERVED_PREFIXES",
    "RESERVED_TYPES",
    "SERVER_MESSAGE_TYPES",
    "STREAM_FRAME_TYPES",
    "SUPPORTED_HUB_PROTOCOLS",
    "BroadcastCommand",
    "BroadcastFrame",
    "BulkLeaveFrame",
    "ClientCommand",
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
    "CommandRefused",
    "DirectCommand",
    "DirectFrame",
    "DirectResult",
    "DisconnectFrame",
    "ErrorFrame",
    "HeartbeatFrame",
    "HubFrame",
    "JoinFrame",
    "Json",
    "JsonObject",
    "KickCommand",
    "LeaveFrame",
    "MembersFrame",
    "MetadataCommand",
    "MetadataFrame",
    "PingCommand",
    "PositionCommand",
    "PresenceCount",
    "PresenceDiff",
    "PresenceMap",
    "PresenceState",
    "PublishCommand",
    "PublishFrame",
    "RecoverFrame",
    "RecoveredFrame",
    "RegisterFrame",
    "RegisteredFrame",
    "RemoteMember",
    "RestoredFrame",
    "RosterCommand",
    "Sender",
    "ServerMessage",
    "SessionDetached",
    "StreamFrame",
    "StreamHubFrame",
    "StreamMissed",
    "StreamReset",
    "SubscribeCommand",
    "SubscribeFrame",
    "Subscribed",
    "SyncCommand",
    "UnsubscribeCommand",
    "UnsubscribeFrame",
    "Unsubscribed",
    "broadcast_text",
    "channel_text",
    "command_event",
    "decode_client_command",
    "decode_cluster_message",
    "decode_hub_frame",
    "decode_server_message",
    "direct_text",
    "encode",
    "error_reply",
    "recovered_text",
    "roster_reply",
    "session_json",
    "split_hub_batch",
    "unbroken_frame",
    "user_json",
    "wire_name",
]


def decode_hub_frame(data: str | bytes, *, max_bytes: int) -> HubFrame:
    """Parse and validate one hub frame, or raise ``PeerError`` naming what is wrong."""
    frame: HubFrame = decode(HUB_DIALECT, data, max_bytes=max_bytes)
    return frame


def decode_cluster_message(data: str | bytes, *, max_bytes: int) -> ClusterMessage:
    """Parse and validate one cluster message, or raise ``PeerError`` naming the fault."""
    message: ClusterMessage = decode(CLUSTER_DIALECT, data, max_bytes=max_bytes)
    return message


def split_hub_batch(data: str | bytes, *, max_bytes: int) -> Sequence[str | bytes]:
    """The frames of one message on a batching link, in order, or ``PeerError`` if the
    message is over ``max_bytes``: a batch is no larger than one frame may be."""
    check_size(data, max_bytes=max_bytes, what="hub batch")
    if isinstance(data, bytes):
        return data.split(HUB_BATCH_SEPARATOR.encode())
    return data.split(HUB_BATCH_SEPARATOR)


def unbroken_frame(text: str) -> str:
    """``text`` fit to travel in a batch: a valid frame's line feed can only be JSON
    whitespace (a string holds it escaped), so a space means the same."""
    return text.replace(HUB_BATCH_SEPARATOR, " ") if HUB_BATCH_SEPARATOR in text else text
