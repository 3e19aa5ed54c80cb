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
``SILENCE``), ``PACE`` releases held frames, ``RETRY`` ends the backoff delay.
Entering a state cancels the timers it does not allow, so no timer needs to ask
which state it is in.

Only a bad token (HTTP 401 at the upgrade, ``HubLost.status``) refuses the link
for good (``REFUSED``). After any other close, 1008 included (the hub closes a
link that sends malformed frames, or one replaced by a newer connection), the
link backs off with jitter and registers again.

Pacing: REGISTERED states the hub's frame rate (``maxFramesPerSecond``,
``frameBurst``; an older hub states none and the defaults of ``HubConfig``
apply). The link keeps the same token bucket the hub does, but for a reserve of
the burst (``_JITTER`` seconds of the rate, at most half of it: what arrives
bunched must not pause the link), filled at the time of each event (``clock``),
and sends a frame only within it; the rest it holds, in order, and the ``PACE``
timer releases them as tokens come. The resync after a registration is held first (never
refused, however many sessions); then everything else, coalesced: a METADATA
replaces the held METADATA of the same session, and an UNSUBSCRIBE cancels the
held SUBSCRIBE of the same session and channel (a JOIN or LEAVE of the session
ends both rules for what was held before it). What is held dies with the link:
the next registration resyncs.

Busy: what is held waits its turn, so it is kept within ``max_queue_delay``
seconds of the hub's rate (the *capacity*, at least one frame), and each held
frame a client's command caused is charged to its connection. ``Presence`` asks
:meth:`HubLink.admits` before a client's command that would send one more frame,
and refuses it with ``busy`` (the command, never the link or the connection)
when the held frames (the resync's aside) are at the capacity and the connection
holds more than its fair share of it (the capacity divided by the connections
holding any, itself included) and at least half as many as the connection
holding the most. So the connections that load the link are refused, and one that
sends less than half as fast as they do is not (what is held waits in order, so
a connection holds in proportion to its rate); the backlog stays within the
capacity plus about one frame per connection, and past ``max_queued_frames``
every client's command is refused. The link's own frames (resync, leaves) and the
embedding program's requests are never refused and charged to nobody.

Refusals that belong to one session: an ERROR naming a session (``sessionId``)
is delivered to ``Presence``, which closes that session's client; it never
counts against the link.

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
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Final, final

import attrs

from ._timers import Backoff, Timer, Timers
from ._values import Message, Sender
from .actions import (
    Action,
    CloseHubLink,
    ConnectHub,
    Log,
    LogLevel,
    SendHubFrame,
)
from .config import DEFAULT_HUB_FRAME_BURST, DEFAULT_HUB_FRAMES_PER_SECOND, HubLinkConfig
from .errors import CloseCode, LocalUsageError, PeerError, over_limit, truncate_reason
from .lifecycle import HUB_LINK, HubLinkEffect, HubLinkInput, HubLinkState, Machine
from .wire import (
    HUB_BATCH,
    HUB_PROTOCOL_VERSION,
    HUB_STREAM,
    BroadcastFrame,
    DirectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MetadataFrame,
    PublishFrame,
    RecoverFrame,
    RegisteredFrame,
    RegisterFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    decode_hub_frame,
    encode,
    split_hub_batch,
    wire_name,
)

__all__ = ["HubLink", "LinkReceipt", "NoHubLink"]

_HEARTBEAT_TEXT: Final = encode(HeartbeatFrame())
_I = HubLinkInput
#: The shortest wait between two releases of held frames: each release sends what
#: the tokens allow, so at 2,000 frames/s one carries ~40 of them.
_PACE_STEP: Final = 0.02
#: Seconds of the hub's rate kept in reserve of its burst (at most half of it): frames
#: sent evenly can reach the hub bunched (the network, both event loops), and the hub's
#: bucket, exactly as full as ours, would then pause the link with the bunch in its
#: socket; the delay would stay while the bridge keeps sending at the hub's rate.
_JITTER: Final = 0.2
#: The coalescing key of a session's held METADATA (a SUBSCRIBE's is its channel, a
#: string, so the two never meet).
_METADATA: Final = ("metadata",)

#: Which input a valid frame is, by its exact type; any other frame is FRAME.
_FRAME_INPUTS: Final[dict[type[object], HubLinkInput]] = {
    RegisteredFrame: _I.REGISTERED,
    ErrorFrame: _I.ERROR,
    RegisterFrame: _I.UNEXPECTED,
}


def _nothing(session_id: str) -> None:
    """No resync is under way."""


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
        "_burst",
        "_coalesce",
        "_config",
        "_heartbeat_interval",
        "_held",
        "_hub_id",
        "_lifecycle",
        "_max_frame_bytes",
        "_most",
        "_now",
        "_owners",
        "_rate",
        "_resync",
        "_resync_frame",
        "_send_limit",
        "_seq",
        "_stream",
        "_tally",
        "_timers",
        "_tokens",
        "_tokens_at",
    )

    def __init__(self, config: HubLinkConfig, timers: Timers, *, max_frame_bytes: int) -> None:
        self._config = config
        self._timers = timers
        self._max_frame_bytes = max_frame_bytes
        #: What a frame we send may weigh: ours, or the hub's stated limit if smaller.
        self._send_limit = max_frame_bytes
        seed = config.jitter_seed
        if seed is None:
            seed = zlib.crc32(config.instance_id.encode("utf-8"))
        self._backoff = Backoff(
            initial=config.backoff_initial,
            maximum=config.backoff_max,
            multiplier=config.backoff_multiplier,
            seed=seed,
        )
        self._lifecycle = Machine(HUB_LINK, timers)
        #: The epoch of the hub we last registered with (new at every hub start).
        self._hub_id: str | None = None
        self._heartbeat_interval = config.heartbeat_interval
        #: Failed attempts since the link last registered.
        self._attempts = 0
        #: Both ends named ``batch`` and REGISTERED has arrived on this link.
        self._batch = False
        #: The hub's frame rate (from REGISTERED) and our token bucket within it.
        self._rate = DEFAULT_HUB_FRAMES_PER_SECOND
        self._burst = DEFAULT_HUB_FRAME_BURST
        self._tokens = 0.0
        self._tokens_at = 0.0
        #: The latest time ``Presence`` has seen (``clock``): when a frame sent at once goes.
        self._now = 0.0
        #: The sessions whose resync JOIN is held (sent first, never refused), and how
        #: to build it when it goes (None: the session is gone meanwhile).
        self._resync: deque[str] = deque()
        self._resync_frame: Callable[[str], HubFrame | None] = _nothing
        #: Every other held frame by a sequence number: (text, session, coalescing key,
        #: the connection it is charged to or None).
        self._held: OrderedDict[int, tuple[str, str | None, Hashable, Hashable | None]] = (
            OrderedDict()
        )
        #: connection -> how many held frames are charged to it (only while some are);
        #: how many connections hold each count; the largest count.
        self._owners: dict[Hashable, int] = {}
        self._tally: dict[int, int] = {}
        self._most = 0
        #: session id -> coalescing key -> the sequence number of its held frame.
        self._coalesce: dict[str, dict[Hashable, int]] = {}
        self._seq = 0
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
        """An ERROR: logged; one naming a session goes to ``Presence`` (it closes that
        session's client). Nothing counts against the link."""
        assert isinstance(frame, ErrorFrame)
        fields = {"code": frame.code, "message": frame.message}
        if frame.session_id is not None:
            # A refusal of one session: ``Presence`` closes that session's client.
            fields["session_id"] = frame.session_id
            return LinkReceipt(
                [Log(level=LogLevel.INFO, event="hub.session.refused", fields=fields)], frame
            )
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
        self._rate = frame.max_frames_per_second or DEFAULT_HUB_FRAMES_PER_SECOND
        burst = max(1.0, frame.frame_burst or DEFAULT_HUB_FRAME_BURST)
        self._burst = max(1.0, burst - min(burst / 2, self._rate * _JITTER))
        # The hub's bucket was full at our upgrade and REGISTER took one token.
        self._tokens, self._tokens_at = self._burst - 1, now
        self._send_limit = min(
            self._max_frame_bytes, frame.max_frame_bytes or self._max_frame_bytes
        )
        self._timers.arm(Timer.HEARTBEAT, now + frame.heartbeat_interval)
        self._timers.arm(Timer.SILENCE, now + self._silence())
        self._backoff.reset()
        self._attempts = 0
        fields: dict[str, object] = {
            "hub_id": frame.hub_id,
            "new_incarnation": previous != frame.hub_id,
            "frames_per_second": self._rate,
            "frame_burst": burst,
        }
        return LinkReceipt(
            [Log(level=LogLevel.INFO, event="hub.link.registered", fields=fields)], registered=True
        )

    def lost(self, now: float, code: int | None, reason: str, status: int | None) -> list[Action]:
        effect = self._lifecycle.fire(_I.REFUSED if status == 401 else _I.LOST)
        self._batch = False  # a new link starts unbatched
        self._drop_held()
        self._stream = False  # and numbers nothing until it registers again
        fields: dict[str, object] = {"code": code, "reason": reason}
        if effect is HubLinkEffect.RETRY:
            # One warning per outage: the loss itself, then each failed retry at debug.
            level = LogLevel.WARNING if self._attempts == 0 else LogLevel.DEBUG
            self._attempts += 1
            delay = self._backoff.next_delay()
            self._timers.arm(Timer.RETRY, now + delay)
            fields["retry_in"] = delay
            fields["attempt"] = self._attempts
            fields["state"] = self.state.value
            # The retry is a timer: next_deadline() says when, no action needed.
            return [Log(level=level, event="hub.link.lost", fields=fields)]
        if effect is HubLinkEffect.REFUSED:
            fields["state"] = self.state.value
            return [Log(level=LogLevel.ERROR, event="hub.link.refused", fields=fields)]
        return [Log(level=LogLevel.INFO, event="hub.link.closed", fields=fields)]

    def on_timer(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        if kind is Timer.HEARTBEAT:
            self._timers.arm(Timer.HEARTBEAT, now + self._heartbeat_interval)
            return [SendHubFrame(data=_HEARTBEAT_TEXT, batch=self._batch)]
        if kind is Timer.RETRY:
            self._lifecycle.fire(_I.RETRY_DUE)
            return self._open_attempt(now)
        if kind is Timer.PACE:
            return self._release(now)
        if kind is Timer.SILENCE:
            return self._drop(f"hub silent for {self._silence():g}s", "hub.link.dead")
        return self._drop("no REGISTERED in time", "hub.link.timeout")  # Timer.CONNECT

    def _drop(self, reason: str, event: str) -> list[Action]:
        self._lifecycle.fire(_I.TIMEOUT)
        self._drop_held()
        return [
            Log(level=LogLevel.WARNING, event=event, fields={"reason": reason}),
            CloseHubLink(code=CloseCode.NORMAL, reason=truncate_reason(reason)),
        ]

    def shutdown(self) -> list[Action]:
        self._drop_held()
        if self._lifecycle.fire(_I.SHUTDOWN) is HubLinkEffect.CLOSE:
            return [CloseHubLink(code=CloseCode.GOING_AWAY, reason="bridge shutting down")]
        return []

    def broadcast(
        self,
        ns: str,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        """The BROADCAST frame's text (measured: see :meth:`encode`)."""
        excepted = tuple(sorted(except_session_ids))
        return self.encode(
            BroadcastFrame(
                ns=ns, channel=channel, message=message, except_session_ids=excepted, author=author
            )
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

    def direct(self, user_id: str, message: Message, author: Sender | None) -> str:
        return self.encode(DirectFrame(user_id=user_id, message=message, author=author))

    def recover(self, frame: RecoverFrame) -> list[Action]:
        """Ask the hub, as the stream owner, for a subscribe's position (RECOVERED answers)."""
        return self.send_text(encode(frame))

    def encode(self, frame: HubFrame) -> str:
        """The frame's text, or ``LocalUsageError`` if it would not fit the hub's frame limit."""
        text = encode(frame)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > self._send_limit:
            raise over_limit(
                f"the hub frame would be {size} bytes; the limit is {self._send_limit} "
                "(Limits.max_hub_frame_bytes, or the hub's maxFrameBytes)",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )
        return text

    # ------------------------------------------------------------ pacing

    @property
    def capacity(self) -> int:
        """The held frames (the resync's aside) the hub's rate lets out within
        ``max_queue_delay``: past them clients share what is held (see :meth:`admits`)."""
        config = self._config
        return max(1, min(config.max_queued_frames, int(self._rate * config.max_queue_delay)))

    def admits(self, conn: Hashable) -> bool:
        """Whether a command of ``conn`` may have the link hold one more frame: yes below
        the capacity; at or past it, unless ``conn`` holds more than its fair share (the
        capacity divided by the connections holding any, ``conn`` included) and at least
        half as many as the connection holding the most; never past ``max_queued_frames``.
        """
        held = len(self._held)
        if held >= self._config.max_queued_frames:
            return False
        capacity = self.capacity
        if held < capacity:
            return True
        owners = self._owners
        mine = owners.get(conn, 0)
        holders = len(owners) + (0 if mine else 1)
        return mine * holders <= capacity or 2 * mine < self._most

    @property
    def held(self) -> int:
        """Frames held for the hub's rate (the resync's included)."""
        return len(self._resync) + len(self._held)

    def send_text(self, text: str, conn: Hashable | None = None) -> list[Action]:
        """The frame as an action if the link is registered and within the hub's rate;
        held for later if over it (charged to ``conn``, the client whose command sends
        it, if any); nothing if the link is not registered."""
        if self._lifecycle.fire(_I.SEND) is not HubLinkEffect.SEND:
            return []
        return self._hold(text, None, None, conn)

    def send(self, frame: HubFrame, conn: Hashable | None = None) -> list[Action]:
        """As :meth:`send_text`, coalesced with what is held (see the module docstring)."""
        if self._lifecycle.fire(_I.SEND) is not HubLinkEffect.SEND:
            return []
        text = encode(frame)
        if isinstance(frame, MetadataFrame):
            held = self._coalesce.get(frame.session_id, {}).get(_METADATA)
            if held is not None:
                # It takes the held one's place, and stays charged as that one was.
                self._held[held] = (text, frame.session_id, _METADATA, self._held[held][3])
                return []
            return self._hold(text, frame.session_id, _METADATA, conn)
        if isinstance(frame, SubscribeFrame):
            return self._hold(text, frame.session_id, frame.channel, conn)
        if isinstance(frame, UnsubscribeFrame):
            held = self._coalesce.get(frame.session_id, {}).pop(frame.channel, None)
            if held is not None:
                # Subscribed and unsubscribed before it went.
                self._discharge(self._held.pop(held)[3])
                return []
        elif isinstance(frame, JoinFrame | LeaveFrame):
            self._coalesce.pop(frame.session_id, None)
        return self._hold(text, None, None, conn)

    def resync(
        self, session_ids: Iterable[str], frame_of: Callable[[str], HubFrame | None]
    ) -> list[Action]:
        """A resync of ``session_ids`` (as REGISTERED arrives): sent first, within the
        rate, never refused. Each frame is built by ``frame_of`` when it goes, so it says
        the session as it is then (and a session gone meanwhile is skipped): 100,000
        sessions cost no more in this turn than the frames the rate lets out now."""
        self._resync.extend(session_ids)
        self._resync_frame = frame_of
        return self._send_due()

    def _hold(
        self, text: str, session_id: str | None, key: Hashable, conn: Hashable | None
    ) -> list[Action]:
        if not self._resync and not self._held:
            self._refill(self._now)
            if self._tokens >= 1:
                self._tokens -= 1
                return [SendHubFrame(data=text, batch=self._batch)]
        self._seq += 1
        self._held[self._seq] = (text, session_id, key, conn)
        if session_id is not None:
            self._coalesce.setdefault(session_id, {})[key] = self._seq
        if conn is not None:
            count = self._owners.get(conn, 0) + 1
            self._owners[conn] = count
            if count > 1:
                self._untally(count - 1)
            self._tally[count] = self._tally.get(count, 0) + 1
            self._most = max(self._most, count)
        return self._arm_pace()

    def _discharge(self, conn: Hashable | None) -> None:
        """A held frame charged to ``conn`` (if any) left or was cancelled."""
        if conn is not None:
            count = self._owners[conn]
            self._untally(count)
            if count > 1:
                self._owners[conn] = count - 1
                self._tally[count - 1] = self._tally.get(count - 1, 0) + 1
            else:
                del self._owners[conn]

    def _untally(self, count: int) -> None:
        """One connection holds ``count`` no longer (it holds one more, or one fewer)."""
        left = self._tally[count] - 1
        if left:
            self._tally[count] = left
        else:
            del self._tally[count]
            if count == self._most:
                self._most = count - 1  # the one that held it holds one more or one fewer

    def clock(self, now: float) -> None:
        """The time of the event being handled: a frame sent at once in it is charged to
        the bucket as it is then. A frame goes no earlier than that and the hub's bucket
        stops filling at its burst, so filling ours only when we send (and at most up to
        the burst each time) keeps it within the hub's: an idle hour does not let one
        burst out twice."""
        if now > self._now:
            self._now = now

    def _refill(self, now: float) -> None:
        if now > self._tokens_at:
            self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
            self._tokens_at = now

    def _release(self, now: float) -> list[Action]:
        self._refill(now)
        return self._send_due()

    def _send_due(self) -> list[Action]:
        """What the tokens allow of what is held, in order; the timer for the rest."""
        actions: list[Action] = []
        resync, held, batch = self._resync, self._held, self._batch
        while self._tokens >= 1 and (resync or held):
            if resync:
                frame = self._resync_frame(resync.popleft())
                if frame is None:
                    continue
                text = encode(frame)
            else:
                seq, (text, session_id, key, conn) = held.popitem(last=False)
                if session_id is not None:
                    keys = self._coalesce[session_id]
                    if keys.get(key) == seq:
                        del keys[key]
                self._discharge(conn)
            self._tokens -= 1
            actions.append(SendHubFrame(data=text, batch=batch))
        return actions + self._arm_pace()

    def _arm_pace(self) -> list[Action]:
        """Release what is held when the next token comes (a timer: no action)."""
        if self._resync or self._held:
            wait = max(_PACE_STEP, (1 - self._tokens) / self._rate)
            self._timers.arm_unless_armed(Timer.PACE, self._tokens_at + wait)
        return []

    def _drop_held(self) -> None:
        self._resync.clear()
        self._held.clear()
        self._coalesce.clear()
        self._owners.clear()
        self._tally.clear()
        self._most = 0


_RECEIVERS: Final[
    dict[HubLinkEffect | None, Callable[[HubLink, HubFrame | PeerError, float], LinkReceipt]]
] = {
    HubLinkEffect.DELIVER: HubLink._deliver,
    HubLinkEffect.IGNORE: HubLink._ignore,
    HubLinkEffect.INVALID: HubLink._invalid,
    HubLinkEffect.HUB_ERROR: HubLink._hub_error,
    HubLinkEffect.TOO_EARLY: HubLink._too_early,
    HubLinkEffect.UNEXPECTED: HubLink._unexpected,
    HubLinkEffect.REGISTERED: HubLink._registered,
}


@final
class NoHubLink:
    """The hub link of a ``Presence`` without a hub: nothing to send, nothing to start."""

    __slots__ = ()

    state: Final = None
    channels: Final[tuple[str, ...]] = ()
    held: Final = 0
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

    def lost(self, now: float, code: int | None, reason: str, status: int | None) -> list[Action]:
        raise self._misuse("HubLost")

    def shutdown(self) -> list[Action]:
        return []

    def broadcast(
        self,
        ns: str,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
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

    def direct(self, user_id: str, message: Message, author: Sender | None) -> str:
        return ""

    def admits(self, conn: Hashable) -> bool:
        return True  # nothing is held

    def clock(self, now: float) -> None:
        pass  # no bucket to fill

    def send_text(self, text: str, conn: Hashable | None = None) -> list[Action]:
        return []

    def send(self, frame: HubFrame, conn: Hashable | None = None) -> list[Action]:
        return []
