"""Everything that travels: hub frames, cluster messages, browser commands and client frames.

One engine (:mod:`._codec`) encodes and decodes all of them from their
schemas; this package is their public home::

    from megapresence_core.wire import BroadcastFrame, decode_hub_frame, encode

``encode(obj)`` gives the wire text of any frame, cluster message or command.
The ``decode_*`` functions check the size first, then strict JSON (no NaN or
infinities, no duplicate keys, no unpaired surrogates), then every known
field's type, and raise ``PeerError`` naming the field at fault; unknown
fields are ignored, so a newer peer may add optional ones.
"""

from __future__ import annotations

from .._values import ABSENT, Json, JsonObject, RemoteMember
from ._client import (
    COMMAND_OPS,
    MAX_CLIENT_COMMAND_BYTES,
    BroadcastCommand,
    ClientCommand,
    CommandRefused,
    DirectCommand,
    KickCommand,
    MetadataCommand,
    RosterCommand,
    broadcast_text,
    command_event,
    decode_client_command,
    direct_text,
    error_reply,
    roster_reply,
)
from ._codec import decode, encode, wire_name
from ._frames import (
    CLUSTER_DIALECT,
    CLUSTER_KINDS,
    CLUSTER_PROTOCOL_VERSION,
    FRAME_TYPES,
    HUB_DIALECT,
    HUB_PROTOCOL_VERSION,
    MAX_HEARTBEAT_INTERVAL,
    MIN_HEARTBEAT_INTERVAL,
    BroadcastFrame,
    BulkLeaveFrame,
    ClusterAdd,
    ClusterBroadcast,
    ClusterBye,
    ClusterDirect,
    ClusterHeartbeat,
    ClusterKick,
    ClusterMessage,
    ClusterRemove,
    ClusterResync,
    ClusterSnapshot,
    DirectFrame,
    DisconnectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MetadataFrame,
    RegisteredFrame,
    RegisterFrame,
)

__all__ = [
    "ABSENT",
    "CLUSTER_KINDS",
    "CLUSTER_PROTOCOL_VERSION",
    "COMMAND_OPS",
    "FRAME_TYPES",
    "HUB_PROTOCOL_VERSION",
    "MAX_CLIENT_COMMAND_BYTES",
    "MAX_HEARTBEAT_INTERVAL",
    "MIN_HEARTBEAT_INTERVAL",
    "BroadcastCommand",
    "BroadcastFrame",
    "BulkLeaveFrame",
    "ClientCommand",
    "ClusterAdd",
    "ClusterBroadcast",
    "ClusterBye",
    "ClusterDirect",
    "ClusterHeartbeat",
    "ClusterKick",
    "ClusterMessage",
    "ClusterRemove",
    "ClusterResync",
    "ClusterSnapshot",
    "CommandRefused",
    "DirectCommand",
    "DirectFrame",
    "DisconnectFrame",
    "ErrorFrame",
    "HeartbeatFrame",
    "HubFrame",
    "JoinFrame",
    "Json",
    "JsonObject",
    "KickCommand",
    "LeaveFrame",
    "MetadataCommand",
    "MetadataFrame",
    "RegisterFrame",
    "RegisteredFrame",
    "RemoteMember",
    "RosterCommand",
    "broadcast_text",
    "command_event",
    "decode_client_command",
    "decode_cluster_message",
    "decode_hub_frame",
    "direct_text",
    "encode",
    "error_reply",
    "roster_reply",
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
