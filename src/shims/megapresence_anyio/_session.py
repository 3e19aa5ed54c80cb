"""One open WebSocket over a transport: message limits, keepalive and the close handshake.

Used for client sockets, for bridges on the hub, and (as the client side) for
the hub link. :class:`Session` is what the servers drive of any open WebSocket;
:class:`SessionBase` holds what every kind shares (the send-buffer rule and the
keepalive clock), and an ASGI connection (``_asgi.py``) is the other kind.

A server's messages arrive as :class:`~._outgoing.Outgoing` (``send``): each
kind of session writes the form its outlet takes (a socket's frame, compressed
or not; an ASGI connection's text), built once for all the sockets of a
broadcast. A client-side session frames through wsproto, which masks.

The session reads no clock: whoever acts passes ``now`` in, and the reader
only notes that the peer spoke; :meth:`WebSocketSession.keepalive` turns that
into time. So keepalive can be driven with any clock, real or fake.

The keepalive also watches the send queue: bytes that wait and do not move for
``send_stall_timeout`` close the peer with 1013, as a full queue does. The
reader yields to the loop every ``YIELD_EVERY`` frames (and the transport once
per chunk), so a peer writing at line rate gets its share of the loop, no more.

What the peer sends that breaks a rule closes the session with the code for
that rule, here. What the ``on_text`` hook raises is not caught here: it goes
up to the connection's fault boundary (``_guard.py``), which picks the code.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Final, Protocol, final

import anyio
import anyio.lowlevel
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from megapresence_core.errors import CloseCode, truncate_reason

from ._config import SocketLimits
from ._outgoing import Outgoing, utf8_len
from ._transport import Outlet, Transport

__all__ = [
    "AGAIN",
    "OVER",
    "READ",
    "ReadLoop",
    "Session",
    "SessionBase",
    "Step",
    "WebSocketSession",
]

#: Frames handled between two yields to the event loop, beside the one per chunk
#: read (``Transport.receive``): a 64 KiB chunk of tiny commands or pings is
#: thousands of them, and no other socket waits for all of them.
YIELD_EVERY = 16


OnText = Callable[[str], Awaitable[None] | None]

#: What :meth:`WebSocketSession.step` asks of its reader next, beside an awaitable
#: (``on_text``'s, to wait for before the next step).
READ: Final = "read"  #: everything parsed is handled: read more
AGAIN: Final = "again"  #: ``YIELD_EVERY`` events handled: let the loop run others, then step
OVER: Final = "over"  #: the session has ended: read no more
Step = Awaitable[None] | str


class Session(Protocol):
    """One open WebSocket as a server drives it, whatever carries it."""

    closed_here: bool
    close_code: int | None
    close_reason: str
    #: permessage-deflate: the window bits of what this server compresses for the
    #: peer, 0 when it did not negotiate compression (``_deflate.py``).
    deflate: int

    @property
    def is_open(self) -> bool: ...

    @property
    def transport(self) -> Outlet[Any]: ...

    def send(self, message: Outgoing, now: float) -> None: ...

    def close(self, code: int, reason: str, now: float) -> None: ...

    def keepalive(self, now: float) -> None: ...

    def run(self, on_text: OnText) -> Awaitable[None]: ...


class SessionBase(abc.ABC):
    """What every session shares: what breaking the send-buffer rule costs a peer
    (1013, whether its buffer is full or does not move) and the keepalive clock.

    A subclass says how a message goes out (``send``), how a ping does (``_ping``),
    whether one may now (``_pingable``), and how its close frame or message is
    written (``close``)."""

    __slots__ = (
        "_limits",
        "_outlet",
        "close_code",
        "close_reason",
        "closed_here",
        "closing_since",
        "deflate",
        "heard",
        "last_heard",
        "ping_sent_at",
        "stall_mark",
        "stalled_since",
    )

    def __init__(self, outlet: Outlet[Any], limits: SocketLimits, now: float) -> None:
        self._outlet = outlet
        self._limits = limits
        self.last_heard = now
        #: The peer sent something since the last ``keepalive``.
        self.heard = False
        self.ping_sent_at: float | None = None
        self.closing_since: float | None = None
        #: The close was started on this side (``close``), not by the peer.
        self.closed_here = False
        #: The close code that ended the session: the peer's, ours, or 1006.
        self.close_code: int | None = None
        self.close_reason = ""
        self.deflate = 0
        #: The outlet's ``drained`` count when it was last seen to move...
        self.stall_mark = 0
        #: ...and since when it has not, while bytes wait (None: nothing waits).
        self.stalled_since: float | None = None

    @property
    def transport(self) -> Outlet[Any]:
        return self._outlet

    @property
    def is_open(self) -> bool:
        """Neither side has started closing (the fan-out path checks only this)."""
        return self.closing_since is None

    @abc.abstractmethod
    def send(self, message: Outgoing, now: float) -> None:
        """Write one message; a peer that cannot keep up is closed (``_overflow``)."""

    def _overflow(self, now: float) -> None:
        """The outlet refused a write: drop what waits and close with 1013."""
        self._outlet.truncate()
        self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: send buffer full", now)

    def close(self, code: int, reason: str, now: float) -> None:
        """Start the close handshake; the peer has ``close_timeout`` to answer."""
        if self.closing_since is not None:
            return
        self.closing_since = now
        self.closed_here = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._send_close(code, reason)

    @abc.abstractmethod
    def _send_close(self, code: int, reason: str) -> None:
        """Write the close frame (or message); past the send-buffer bound too."""

    @abc.abstractmethod
    def _pingable(self) -> bool:
        """Whether silence may be answered with a ping now."""

    @abc.abstractmethod
    def _ping(self, now: float) -> None:
        """Send one ping."""

    def keepalive(self, now: float) -> None:
        """Called periodically: ping a quiet peer, close a silent one, drop a stuck close."""
        limits = self._limits
        if self.heard:
            self.heard = False
            self.last_heard = now
            self.ping_sent_at = None
        if self.closing_since is not None:
            if now - self.closing_since >= limits.close_timeout:
                self._outlet.abort()
            return
        if self._stalled(now):
            self._outlet.truncate()
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: send buffer not moving", now)
        elif not self._pingable():
            return
        elif self.ping_sent_at is not None:
            if now - self.ping_sent_at >= limits.ping_timeout:
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", now)
        elif now - self.last_heard >= limits.ping_interval:
            self.ping_sent_at = now
            self._ping(now)

    def _stalled(self, now: float) -> bool:
        """Bytes wait for the peer and none has left for ``send_stall_timeout``: a peer
        that reads nothing holds what was queued for it (a snapshot, say) for as long as
        it answers pings, unless this closes it."""
        outlet = self._outlet
        if not outlet.queued:
            self.stalled_since = None
            return False
        drained = outlet.drained
        if self.stalled_since is None or drained != self.stall_mark:
            self.stall_mark, self.stalled_since = drained, now
            return False
        return now - self.stalled_since >= self._limits.send_stall_timeout

    def _too_big(self, size: int) -> bool:
        """Past ``max_message_bytes``: close with 1009 and say so."""
        limit = self._limits.max_message_bytes
        if size <= limit:
            return False
        self.close(CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes", anyio.current_time())
        return True

    def _ended(self, code: int, reason: str) -> None:
        """The peer ended the session (its close, or the end of the stream)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.closing_since is None:
            self.closing_since = anyio.current_time()


@final
class WebSocketSession(SessionBase):
    """The life of one WebSocket after its handshake, over a byte transport."""

    __slots__ = ("_fragments", "_parts", "_size", "_transport", "_ws")

    def __init__(
        self,
        transport: Transport,
        ws: Connection,
        limits: SocketLimits,
        now: float,
        *,
        deflate: int = 0,
    ) -> None:
        super().__init__(transport, limits, now)
        self.deflate = deflate
        self._transport = transport
        self._ws = ws
        #: The frames of a fragmented message so far; None between messages (an idle
        #: socket holds no empty list).
        self._parts: list[str] | None = None
        self._size = 0
        self._fragments = 0

    def send(self, message: Outgoing, now: float) -> None:
        """Write the message's frame (compressed if the peer agreed, the message is worth
        it and that makes it smaller)."""
        bits = self.deflate
        data = message.deflated(bits) if bits and message.compress else message.frame
        if self.closing_since is None and not self._transport.write(data):  # the hot path
            self._overflow(now)

    def send_frame(self, frame: bytes, now: float) -> None:
        """Write an already framed message (a ping, a pong, the hub's frame for many)."""
        if self.closing_since is None and not self._transport.write(frame):
            self._overflow(now)

    def send_text(self, text: str, now: float) -> None:
        """Frame and write one text message (masked if this is the client side)."""
        if self.is_open and self._ws.state is ConnectionState.OPEN:
            self.send_frame(bytes(self._ws.send(Message(data=text))), now)

    def _send_close(self, code: int, reason: str) -> None:
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            frame = self._ws.send(CloseConnection(code=code, reason=truncate_reason(reason)))
            # Past the send-buffer bound too: a slow consumer must learn why it goes.
            self._outlet.write(bytes(frame), force=True)

    def _pingable(self) -> bool:
        # Once the peer is closing, its close, not silence, ends this.
        return self._ws.state is ConnectionState.OPEN

    def _ping(self, now: float) -> None:
        self.send_frame(bytes(self._ws.send(Ping())), now)

    def run(self, on_text: OnText) -> ReadLoop:
        """Read until the session ends, passing each complete text message to ``on_text``.

        Awaited, the loop returns when the close handshake is over or the stream
        ends; what ``on_text`` raises propagates (the session is left open for the
        caller to close with the code it chooses). A connection host may drive it
        from the event loop's reader callback instead (``_reader.py``)."""
        return ReadLoop(self, on_text)

    async def read(self, on_text: OnText) -> None:
        """The read loop as a task runs it (:meth:`run`): :meth:`step` between reads.
        (``ConnectionHost`` inlines it for a plain socket on trio.)"""
        transport = self._transport
        while True:
            # Events first: the handshake may have left frames in wsproto's buffer.
            outcome = self.step(on_text)
            if not isinstance(outcome, str):
                await outcome
            elif outcome is READ:
                if not self.received(await transport.receive()):
                    return
            elif outcome is AGAIN:
                await anyio.lowlevel.checkpoint()
            else:
                return

    def received(self, data: bytes) -> bool:
        """Give wsproto bytes from the peer; False at the end of the stream (``b""``)."""
        if not data:
            self._ws.receive_data(None)  # wsproto's state becomes CLOSED: nothing more is sent
            self._ended(1006, "")
            return False
        self.heard = True
        self._ws.receive_data(data)
        return True

    def step(self, on_text: OnText) -> Step:
        """Handle what wsproto has parsed, at most ``YIELD_EVERY`` events, and say what
        the reader does next: :data:`READ` (all handled), :data:`AGAIN` (more may wait:
        let the loop run others first), :data:`OVER` (the session has ended), or an
        awaitable (``on_text``'s: wait for it, then step again). Synchronous, so a task
        and a loop callback read the same way; what ``on_text`` raises propagates."""
        ws = self._ws
        for handled, event in enumerate(ws.events(), 1):
            if isinstance(event, TextMessage):
                text = self._collect(event)
                if text is not None:
                    result = on_text(text)
                    if result is not None:
                        return result
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    self.send_frame(bytes(ws.send(event.response())), anyio.current_time())
            elif isinstance(event, CloseConnection):
                if self._on_close_frame(event):
                    return OVER
            elif isinstance(event, BytesMessage):
                self.close(
                    CloseCode.UNSUPPORTED_DATA,
                    "binary messages are not accepted",
                    anyio.current_time(),
                )
            elif not isinstance(event, Pong):  # pragma: no cover - wsproto has no other
                raise AssertionError(f"unexpected wsproto event {event!r}")
            if handled >= YIELD_EVERY:  # a chunk of tiny frames: share the loop
                return AGAIN
        return READ

    def _collect(self, event: TextMessage) -> str | None:
        if self.closing_since is not None:
            return None  # nothing counts once we are closing
        limits = self._limits
        self._size += utf8_len(event.data)
        if self._too_big(self._size):
            self._parts = None
            return None
        parts = self._parts
        if event.message_finished and parts is None:  # a message in one frame: most are
            self._size = 0
            return event.data
        if parts is None:
            parts = self._parts = []
        parts.append(event.data)
        if event.frame_finished and not event.message_finished:
            self._fragments += 1
            if self._fragments >= limits.max_fragments:
                self._parts = None
                self.close(
                    CloseCode.POLICY,
                    f"more than {limits.max_fragments} fragments",
                    anyio.current_time(),
                )
                return None
        if not event.message_finished:
            return None
        self._parts = None
        self._size = self._fragments = 0
        return parts[0] if len(parts) == 1 else "".join(parts)

    def _on_close_frame(self, event: CloseConnection) -> bool:
        """Answer a close frame; True once the handshake is complete."""
        ws = self._ws
        if ws.state is ConnectionState.REMOTE_CLOSING:  # the peer started it: echo and end
            self._transport.write(bytes(ws.send(event.response())), force=True)
            self._ended(event.code, event.reason or "")
            return True
        if ws.state is ConnectionState.CLOSED:  # the answer to our close
            return True
        # wsproto reports bad input (invalid UTF-8: 1007, protocol errors: 1002)
        # as a close event while the connection is still open. The stream cannot
        # be parsed any further, so this is a failure, not a handshake: send our
        # close frame and end without waiting for an answer we could not read.
        # (A compressed message inflating past the limit is reported so: 1009.)
        if event.code == CloseCode.MESSAGE_TOO_BIG:
            self._too_big(self._limits.max_message_bytes + 1)
        else:
            self.close(event.code, event.reason or "", anyio.current_time())
        return True


@final
class ReadLoop:
    """A session's read loop, not started (:meth:`WebSocketSession.run`): awaited, it
    reads in the awaiting task; a connection host on asyncio may take the session
    and ``on_text`` from it and read from a loop callback instead, with no task."""

    __slots__ = ("on_text", "session")

    def __init__(self, session: WebSocketSession, on_text: OnText) -> None:
        self.session = session
        self.on_text = on_text

    def read(self) -> Coroutine[Any, Any, None]:
        """The loop as a coroutine, to await with no wrapper in between."""
        return self.session.read(self.on_text)

    def __await__(self) -> Generator[Any, None, None]:
        return self.read().__await__()
