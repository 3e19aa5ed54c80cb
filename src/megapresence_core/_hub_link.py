"""The bridge's end of the hub link: register, heartbeat, time out, back off.

Theory of operation. ``HubLink`` owns the link's lifecycle (the ``HUB_LINK``
table) and its timers; ``Presence`` owns the link and decides what the frames
mean. Every input goes through the table, whose row names the effect: a
frame is delivered to ``Presence`` only in ``REGISTERED`` (effect
``"deliver"``), and the registration itself says that the hub has lost
everything and needs a resync (``"registered"``). Nothing reaches the hub
unless the table lets ``SEND`` through (``"send"``, only while registered).

Timers: ``CONNECT`` bounds an attempt from ``ConnectHub`` to REGISTERED,
``HEARTBEAT`` and ``SILENCE`` run while registered (any frame heard postpones
``SILENCE``), ``RETRY`` ends the backoff delay. Entering a state cancels the
timers it does not allow, so no timer needs to ask which state it is in.

Batching: when REGISTER and REGISTERED both name ``batch``, the frames after
REGISTERED may share WebSocket messages both ways. :meth:`HubLink.split` cuts
what arrives into frames (a message over the frame limit is refused whole), and
every frame sent from then on says ``batch`` (the shim packs them). A new link
starts unbatched.

Without a configured hub, ``Presence`` holds :class:`NoHubLink`: sending is a
no-op and the link's events are misuse.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Sequence
from typing import Final, final

import attrs

from ._values import Message, Sender
from .actions import (
    Action,
    CloseHubLink,
    ConnectHub,
    Log,
    LogLevel,
    SendHubFrame,
)
from .config import HubLinkConfig
from .errors import CloseCode, LocalUsageError, PeerError, over_limit, truncate_reason
from .lifecycle import HUB_LINK, Backoff, HubLinkInput, HubLinkState, Machine, Timer, Timers
from .wire import (
    HUB_BATCH,
    HUB_PROTOCOL_VERSION,
    HUB_STREAM,
    BroadcastFrame,
    DirectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    PublishFrame,
    RegisteredFrame,
    RegisterFrame,
    decode_hub_frame,
    encode,
    split_hub_batch,
    wire_name,
)

__all__ = ["HubLink", "LinkReceipt", "NoHubLink"]

_HEARTBEAT_TEXT: Final = encode(HeartbeatFrame())
_I = HubLinkInput

#: Which input a valid frame is, by its exact type; any other frame is FRAME.
_FRAME_INPUTS: Final[dict[type[object], HubLinkInput]] = {
    RegisteredFrame: _I.REGISTERED,
    ErrorFrame: _I.ERROR,
    RegisterFrame: _I.UNEXPECTED,
}


def _frame_warning(event: str, frame: HubFrame | PeerError) -> LinkReceipt:
    assert not isinstance(frame, PeerError)
    fields = {"type": wire_name(frame)}
    return LinkReceipt([Log(level=LogLevel.WARNING, event=event, fields=fields)])


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
        "_batch",
        "_config",
        "_heartbeat_interval",
        "_hub_id",
        "_lifecycle",
        "_max_frame_bytes",
        "_stream",
        "_timers",
    )

    def __init__(self, config: HubLinkConfig, timers: Timers, *, max_frame_bytes: int) -> None:
        self._config = config
        self._timers = timers
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
        self._lifecycle: Machine[HubLinkState, HubLinkInput] = Machine(HUB_LINK, timers)
        #: The epoch of the hub we last registered with (new at every hub start).
        self._hub_id: str | None = None
        self._heartbeat_interval = config.heartbeat_interval
        #: Failed attempts since the link last registered.
        self._attempts = 0
        #: Both ends named ``batch`` and REGISTERED has arrived on this link.
        self._batch = False
        #: Both ends named ``stream``: the hub numbers channel streams (see ``streaming``).
        self._stream = False

    @property
    def state(self) -> HubLinkState:
        return self._lifecycle.state

    @property
    def channels(self) -> tuple[str, ...]:
        return self._config.channels

    @property
    def reachable(self) -> bool:
        """Registered: what is sent now reaches the hub (and the other bridges)."""
        return self._lifecycle.state is HubLinkState.REGISTERED

    @property
    def streaming(self) -> bool:
        """Registered with a hub that numbers channel streams (both named ``stream``):
        publishes are delivered here when they come back as STREAM, and a subscribe is
        answered when RECOVERED comes."""
        return self._stream

    def _silence(self) -> float:
        return self._heartbeat_interval * self._config.dead_after_intervals

    def _open_attempt(self, now: float) -> list[Action]:
        self._timers.arm(Timer.CONNECT, now + self._config.connect_timeout)
        return [ConnectHub()]

    def start(self, now: float) -> list[Action]:
        self._lifecycle.fire(_I.START)
        return self._open_attempt(now)

    def connected(self, now: float) -> list[Action]:
        self._lifecycle.fire(_I.CONNECTED)
        config = self._config
        register = RegisterFrame(
            bridge_id=config.bridge_id,
            instance_id=config.instance_id,
            capabilities=config.capabilities,
            protocol=HUB_PROTOCOL_VERSION,
            channels=config.channels,
        )
        return [SendHubFrame(data=encode(register))]

    def split(self, data: str | bytes, now: float) -> tuple[list[Action], Sequence[str | bytes]]:
        """The frames of one message (several once the link batches), and a warning if
        the message is refused whole."""
        if not self._batch:
            return [], (data,)
        try:
            return [], split_hub_batch(data, max_bytes=self._max_frame_bytes)
        except PeerError as exc:
            return self._invalid(exc, now).actions, ()

    def receive(self, data: str | bytes, now: float) -> LinkReceipt:
        self._lifecycle.check(_I.INVALID)  # a frame at all, in this state: or misuse
        try:
            frame: HubFrame | PeerError = decode_hub_frame(data, max_bytes=self._max_frame_bytes)
        except PeerError as exc:
            frame = exc
        if isinstance(frame, PeerError):
            effect = self._lifecycle.fire(_I.INVALID)
        else:
            effect = self._lifecycle.fire(_FRAME_INPUTS.get(type(frame), _I.FRAME))
        self._timers.postpone(Timer.SILENCE, now + self._silence())
        return _RECEIVERS[effect](self, frame, now)

    def _deliver(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        assert not isinstance(frame, PeerError)
        return LinkReceipt([], frame)

    def _ignore(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        return LinkReceipt([])  # the link is being torn down; late frames mean nothing

    def _invalid(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        assert isinstance(frame, PeerError)
        fields = {"code": frame.code, "field": frame.field, "error": str(frame)}
        return LinkReceipt([Log(level=LogLevel.WARNING, event="hub.frame.invalid", fields=fields)])

    def _hub_error(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        assert isinstance(frame, ErrorFrame)
        fields = {"code": frame.code, "message": frame.message}
        return LinkReceipt([Log(level=LogLevel.WARNING, event="hub.error", fields=fields)])

    def _too_early(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        return _frame_warning("hub.frame.before_registered", frame)

    def _unexpected(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        return _frame_warning("hub.frame.unexpected", frame)

    def _registered(self, frame: HubFrame | PeerError, now: float) -> LinkReceipt:
        assert isinstance(frame, RegisteredFrame)
        previous, self._hub_id = self._hub_id, frame.hub_id
        self._batch = HUB_BATCH in frame.capabilities and HUB_BATCH in self._config.capabilities
        self._stream = HUB_STREAM in frame.capabilities and HUB_STREAM in self._config.capabilities
        self._heartbeat_interval = frame.heartbeat_interval
        self._timers.arm(Timer.HEARTBEAT, now + frame.heartbeat_interval)
        self._timers.arm(Timer.SILENCE, now + self._silence())
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
        effect = self._lifecycle.fire(_I.REFUSED if code == CloseCode.POLICY else _I.LOST)
        self._batch = False  # a new link starts unbatched
        self._stream = False  # and numbers nothing until it registers again
        fields: dict[str, object] = {"code": code, "reason": reason}
        if effect == "retry":
            # One warning per outage: the loss itself, then each failed retry at debug.
            level = LogLevel.WARNING if self._attempts == 0 else LogLevel.DEBUG
            self._attempts += 1
            delay = self._backoff.next_delay()
            self._timers.arm(Timer.RETRY, now + delay)
            fields["retry_in"] = delay
            fields["attempt"] = self._attempts
            # The retry is a timer: next_deadline() says when, no action needed.
            return [Log(level=level, event="hub.link.lost", fields=fields)]
        if effect == "refused":
            return [Log(level=LogLevel.ERROR, event="hub.link.refused", fields=fields)]
        return [Log(level=LogLevel.INFO, event="hub.link.closed", fields=fields)]

    def on_timer(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        if kind is Timer.HEARTBEAT:
            self._timers.arm(Timer.HEARTBEAT, now + self._heartbeat_interval)
            return [SendHubFrame(data=_HEARTBEAT_TEXT, batch=self._batch)]
        if kind is Timer.RETRY:
            self._lifecycle.fire(_I.RETRY_DUE)
            return self._open_attempt(now)
        if kind is Timer.SILENCE:
            return self._drop(f"hub silent for {self._silence():g}s", "hub.link.dead")
        return self._drop("no REGISTERED in time", "hub.link.timeout")  # Timer.CONNECT

    def _drop(self, reason: str, event: str) -> list[Action]:
        self._lifecycle.fire(_I.TIMEOUT)
        return [
            Log(level=LogLevel.WARNING, event=event, fields={"reason": reason}),
            CloseHubLink(code=CloseCode.NORMAL, reason=truncate_reason(reason)),
        ]

    def shutdown(self) -> list[Action]:
        if self._lifecycle.fire(_I.SHUTDOWN) == "close":
            return [CloseHubLink(code=CloseCode.GOING_AWAY, reason="bridge shutting down")]
        return []

    def broadcast(
        self, ns: str, channel: str, message: Message, except_session_ids: frozenset[str]
    ) -> str:
        """The BROADCAST frame's text (measured: see :meth:`encode`)."""
        excepted = tuple(sorted(except_session_ids))
        return self.encode(
            BroadcastFrame(ns=ns, channel=channel, message=message, except_session_ids=excepted)
        )

    def publish(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        """The PUBLISH frame's text (measured: see :meth:`encode`)."""
        excepted = tuple(sorted(except_session_ids))
        return self.encode(
            PublishFrame(
                channel=channel, message=message, except_session_ids=excepted, author=author
            )
        )

    def direct(self, user_id: str, message: Message) -> str:
        return self.encode(DirectFrame(user_id=user_id, message=message))

    def encode(self, frame: HubFrame) -> str:
        """The frame's text, or ``LocalUsageError`` if it would not fit the hub's frame limit."""
        text = encode(frame)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > self._max_frame_bytes:
            raise over_limit(
                f"the hub frame would be {size} bytes; the limit is {self._max_frame_bytes} "
                "(Limits.max_hub_frame_bytes)",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )
        return text

    def send_text(self, text: str) -> list[Action]:
        """The frame as an action if the link is registered, else nothing."""
        if self._lifecycle.fire(_I.SEND) == "send":
            return [SendHubFrame(data=text, batch=self._batch)]
        return []

    def send(self, frame: HubFrame) -> list[Action]:
        return self.send_text(encode(frame))


_RECEIVERS: Final[dict[str, Callable[[HubLink, HubFrame | PeerError, float], LinkReceipt]]] = {
    "deliver": HubLink._deliver,
    "ignore": HubLink._ignore,
    "invalid": HubLink._invalid,
    "hub_error": HubLink._hub_error,
    "too_early": HubLink._too_early,
    "unexpected": HubLink._unexpected,
    "registered": HubLink._registered,
}


@final
class NoHubLink:
    """The hub link of a ``Presence`` without a hub: nothing to send, nothing to start."""

    __slots__ = ()

    state: Final = None
    channels: Final[tuple[str, ...]] = ()
    streaming: Final = False
    reachable: Final = True  # nothing to reach

    def _misuse(self, what: str) -> LocalUsageError:
        return LocalUsageError(f"{what}: no hub is configured (PresenceConfig.hub_link is None)")

    def start(self, now: float) -> list[Action]:
        raise self._misuse("HubLinkStarted")

    def connected(self, now: float) -> list[Action]:
        raise self._misuse("HubConnected")

    def split(self, data: str | bytes, now: float) -> tuple[list[Action], Sequence[str | bytes]]:
        return [], (data,)  # for receive() to refuse

    def receive(self, data: str | bytes, now: float) -> LinkReceipt:
        raise self._misuse("HubFrameReceived")

    def lost(self, now: float, code: int | None, reason: str) -> list[Action]:
        raise self._misuse("HubLost")

    def shutdown(self) -> list[Action]:
        return []

    def broadcast(
        self, ns: str, channel: str, message: Message, except_session_ids: frozenset[str]
    ) -> str:
        return ""  # nothing travels, so nothing is too big

    def publish(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        return ""

    def direct(self, user_id: str, message: Message) -> str:
        return ""

    def send_text(self, text: str) -> list[Action]:
        return []

    def send(self, frame: HubFrame) -> list[Action]:
        return []
