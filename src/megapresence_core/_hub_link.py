"""The bridge's end of the hub link: register, heartbeat, time out, back off.

``HubLink`` owns only the link's lifecycle; ``Presence`` owns it and decides
what the frames mean. The link tells ``Presence`` two things through
:class:`LinkReceipt`: a frame to act on, and that a (re)registration just
completed, which is when the hub has lost everything and needs a resync.
Nothing reaches the hub unless the link is registered (:meth:`HubLink.send`).
"""

from __future__ import annotations

import zlib
from typing import final

import attrs

from ._actions import (
    Action,
    CloseHubLink,
    ConnectHub,
    Log,
    LogLevel,
    ScheduleReconnect,
    SendHubFrame,
)
from ._backoff import Backoff
from ._close import CloseCode, truncate_reason
from ._config import HUB_PROTOCOL_VERSION, HubLinkConfig
from ._errors import FrameError
from ._hub_frames import (
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    RegisteredFrame,
    RegisterFrame,
    decode_hub_frame,
    encode_hub_frame,
)
from ._lifecycle import LINK_TRANSITIONS, LinkInput, LinkState, advance

__all__ = ["HubLink", "LinkReceipt"]

_HEARTBEAT_TEXT = encode_hub_frame(HeartbeatFrame())


@final
@attrs.frozen
class LinkReceipt:
    """What a received frame means for ``Presence``."""

    actions: list[Action]
    #: A frame for ``Presence`` to act on; None when the link consumed it.
    frame: HubFrame | None = None
    #: The hub just (re)registered this bridge: its presence must be resent.
    registered: bool = False


@final
class HubLink:
    __slots__ = (
        "_attempts",
        "_backoff",
        "_config",
        "_connect_deadline",
        "_heartbeat_interval",
        "_hub_id",
        "_last_heard",
        "_last_sent",
        "_max_frame_bytes",
        "_retry_at",
        "_state",
    )

    def __init__(self, config: HubLinkConfig, *, max_frame_bytes: int) -> None:
        self._config = config
        self._max_frame_bytes = max_frame_bytes
        seed = config.jitter_seed
        if seed is None:
            seed = zlib.crc32(config.instance_id.encode("utf-8"))
        self._backoff = Backoff(
            initial=config.backoff_initial,
            maximum=config.backoff_max,
            multiplier=config.backoff_multiplier,
            seed=seed,
        )
        self._state = LinkState.IDLE
        #: The epoch of the hub we last registered with (new at every hub start).
        self._hub_id: str | None = None
        self._heartbeat_interval = config.heartbeat_interval
        self._connect_deadline = 0.0
        self._retry_at = 0.0
        self._last_heard = 0.0
        self._last_sent = 0.0
        #: Failed attempts since the link last registered.
        self._attempts = 0

    @property
    def state(self) -> LinkState:
        return self._state

    def _advance(self, event: LinkInput) -> LinkState:
        self._state = advance(LINK_TRANSITIONS, self._state, event, what="hub link")
        return self._state

    def _open_attempt(self, now: float) -> list[Action]:
        self._connect_deadline = now + self._config.connect_timeout
        return [ConnectHub()]

    def start(self, now: float) -> list[Action]:
        self._advance(LinkInput.START)
        return self._open_attempt(now)

    def connected(self, now: float) -> list[Action]:
        self._advance(LinkInput.CONNECTED)
        config = self._config
        register = RegisterFrame(
            bridge_id=config.bridge_id,
            instance_id=config.instance_id,
            capabilities=config.capabilities,
            protocol=HUB_PROTOCOL_VERSION,
        )
        return [SendHubFrame(data=encode_hub_frame(register))]

    def receive(self, data: str | bytes, now: float) -> LinkReceipt:
        state = self._advance_frame()
        if state in (LinkState.CLOSING, LinkState.DRAINING):
            return LinkReceipt([])  # the link is being torn down; late frames mean nothing
        self._last_heard = now
        try:
            frame = decode_hub_frame(data, max_bytes=self._max_frame_bytes)
        except FrameError as exc:
            return LinkReceipt([_warning("hub.frame.invalid", exc)])
        if state is LinkState.REGISTERING:
            return self._receive_registering(frame, now)
        if isinstance(frame, RegisteredFrame):
            return LinkReceipt(
                [
                    Log(
                        level=LogLevel.WARNING,
                        event="hub.frame.unexpected",
                        fields={"type": "REGISTERED"},
                    )
                ]
            )
        return LinkReceipt([], frame)

    def _advance_frame(self) -> LinkState:
        # REGISTERED is a distinct input only while registering; elsewhere a
        # REGISTERED frame is one more frame (and a warning once decoded).
        if self._state is LinkState.REGISTERING:
            return self._state  # decided once the frame is decoded
        return self._advance(LinkInput.FRAME)

    def _receive_registering(self, frame: HubFrame, now: float) -> LinkReceipt:
        if isinstance(frame, ErrorFrame):
            return LinkReceipt(
                [
                    Log(
                        level=LogLevel.WARNING,
                        event="hub.error",
                        fields={"code": frame.code, "message": frame.message},
                    )
                ]
            )
        if not isinstance(frame, RegisteredFrame):
            return LinkReceipt(
                [
                    Log(
                        level=LogLevel.WARNING,
                        event="hub.frame.before_registered",
                        fields={"type": type(frame).__name__},
                    )
                ]
            )
        self._advance(LinkInput.REGISTERED)
        previous, self._hub_id = self._hub_id, frame.hub_id
        self._heartbeat_interval = frame.heartbeat_interval
        self._last_sent = now
        self._backoff.reset()
        self._attempts = 0
        fields: dict[str, object] = {
            "hub_id": frame.hub_id,
            "new_incarnation": previous != frame.hub_id,
        }
        return LinkReceipt(
            [Log(level=LogLevel.INFO, event="hub.link.registered", fields=fields)], registered=True
        )

    def lost(self, now: float, code: int | None, reason: str) -> list[Action]:
        refused = code == CloseCode.POLICY
        state = self._advance(LinkInput.REFUSED if refused else LinkInput.LOST)
        fields: dict[str, object] = {"code": code, "reason": reason}
        if state is LinkState.BACKING_OFF:
            # One warning per outage: the loss itself, then each failed retry at debug.
            level = LogLevel.WARNING if self._attempts == 0 else LogLevel.DEBUG
            self._attempts += 1
            delay = self._backoff.next_delay()
            self._retry_at = now + delay
            fields["retry_in"] = delay
            fields["attempt"] = self._attempts
            return [
                Log(level=level, event="hub.link.lost", fields=fields),
                ScheduleReconnect(delay=delay),
            ]
        if refused:
            return [Log(level=LogLevel.ERROR, event="hub.link.refused", fields=fields)]
        return [Log(level=LogLevel.INFO, event="hub.link.closed", fields=fields)]

    def tick(self, now: float) -> list[Action]:
        state = self._state
        if state is LinkState.REGISTERED:
            silence = self._heartbeat_interval * self._config.dead_after_intervals
            if now - self._last_heard >= silence:
                return self._drop(f"hub silent for {silence:g}s", "hub.link.dead")
            if now - self._last_sent >= self._heartbeat_interval:
                self._last_sent = now
                return [SendHubFrame(data=_HEARTBEAT_TEXT)]
        elif state in (LinkState.CONNECTING, LinkState.REGISTERING):
            if now >= self._connect_deadline:
                return self._drop("no REGISTERED in time", "hub.link.timeout")
        elif state is LinkState.BACKING_OFF and now >= self._retry_at:
            self._advance(LinkInput.RETRY_DUE)
            return self._open_attempt(now)
        return []

    def _drop(self, reason: str, event: str) -> list[Action]:
        self._advance(LinkInput.TIMEOUT)
        return [
            Log(level=LogLevel.WARNING, event=event, fields={"reason": reason}),
            CloseHubLink(code=CloseCode.NORMAL, reason=truncate_reason(reason)),
        ]

    def shutdown(self) -> list[Action]:
        before = self._state
        self._advance(LinkInput.SHUTDOWN)
        if before in (LinkState.CONNECTING, LinkState.REGISTERING, LinkState.REGISTERED):
            return [CloseHubLink(code=CloseCode.GOING_AWAY, reason="bridge shutting down")]
        return []

    def send(self, frame: HubFrame) -> list[Action]:
        """The frame as an action if the link is registered, else nothing."""
        if self._state is LinkState.REGISTERED:
            return [SendHubFrame(data=encode_hub_frame(frame))]
        return []

    def next_deadline(self) -> float | None:
        """When the shim should send the next ``Tick``, or None if no timer runs."""
        state = self._state
        if state is LinkState.REGISTERED:
            silence = self._heartbeat_interval * self._config.dead_after_intervals
            return min(self._last_sent + self._heartbeat_interval, self._last_heard + silence)
        if state in (LinkState.CONNECTING, LinkState.REGISTERING):
            return self._connect_deadline
        if state is LinkState.BACKING_OFF:
            return self._retry_at
        return None


def _warning(event: str, exc: FrameError) -> Log:
    return Log(
        level=LogLevel.WARNING,
        event=event,
        fields={"code": exc.code, "field": exc.field, "error": str(exc)},
    )
