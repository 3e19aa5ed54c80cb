"""Events the hub server's shim feeds to ``Hub.handle``, and the actions it gets back.

Bridge connections are opaque hashable ids chosen by the shim. ``Tick`` and
``ShutdownRequested`` are shared with ``Presence``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeAlias, final

import attrs

from ._actions import Log, short_conns, short_text
from ._errors import LocalUsageError
from ._events import ShutdownRequested, Tick

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


def _bridge(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or not isinstance(value, Hashable):
        raise LocalUsageError(f"{type(instance).__name__}: bridge must be a hashable id")


def _time(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise LocalUsageError(f"{type(instance).__name__}: now must be monotonic seconds")


@final
@attrs.frozen(kw_only=True)
class BridgeConnecting:
    """An upgrade request reached the hub; ``authorization`` is its header, if any."""

    bridge: Hashable = attrs.field(validator=_bridge)
    authorization: str | None = attrs.field(repr=False)
    now: float = attrs.field(validator=_time)


@final
@attrs.frozen(kw_only=True)
class BridgeFrameReceived:
    bridge: Hashable = attrs.field(validator=_bridge)
    data: str | bytes = attrs.field(repr=lambda data: f"<{len(data)} chars>")
    now: float = attrs.field(validator=_time)


@final
@attrs.frozen(kw_only=True)
class BridgeClosed:
    """The bridge's transport is gone, whoever closed it."""

    bridge: Hashable = attrs.field(validator=_bridge)
    now: float = attrs.field(validator=_time)


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
