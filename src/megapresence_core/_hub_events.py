"""Events the hub server's shim feeds to ``Hub.handle``, and the actions it gets back.

Bridge connections are opaque hashable ids chosen by the shim. ``Tick`` and
``ShutdownRequested`` are shared with ``Presence``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeAlias, final

import attrs

from ._actions import Log, short_conns, short_text
from ._events import ShutdownRequested, Tick, hashable_id, monotonic_seconds

__all__ = [
    "AcceptBridge",
    "BridgeClosed",
    "BridgeConnecting",
    "BridgeFrameReceived",
    "CloseBridge",
    "HubAction",
    "HubEvent",
    "RefuseBridge",
    "SendBridgeFrame",
]


@final
@attrs.frozen(kw_only=True)
class BridgeConnecting:
    """An upgrade request reached the hub; ``authorization`` is its header, if any."""

    bridge: Hashable = attrs.field(validator=hashable_id)
    authorization: str | None = attrs.field(repr=False)
    now: float = attrs.field(validator=monotonic_seconds)


@final
@attrs.frozen(kw_only=True)
class BridgeFrameReceived:
    bridge: Hashable = attrs.field(validator=hashable_id)
    data: str | bytes = attrs.field(repr=lambda data: f"<{len(data)} chars>")
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
    """Send one encoded frame to each bridge in ``bridges``."""

    bridges: tuple[Hashable, ...] = attrs.field(repr=short_conns)
    data: str = attrs.field(repr=short_text)


@final
@attrs.frozen(kw_only=True)
class CloseBridge:
    """Close a bridge's transport, then report ``BridgeClosed``."""

    bridge: Hashable
    code: int
    reason: str


HubAction: TypeAlias = AcceptBridge | RefuseBridge | SendBridgeFrame | CloseBridge | Log
