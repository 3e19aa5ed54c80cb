"""What a :class:`~megapresence_client.PresenceClient` tells the app, one event at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sender:
    """Who sent a message (the server stamps it: ``from``)."""

    user_id: str
    session_id: str


def sender_of(message: dict[str, Any]) -> Sender | None:
    raw = message.get("from")
    if isinstance(raw, dict):
        user, session = raw.get("userId"), raw.get("sessionId")
        if isinstance(user, str) and isinstance(session, str):
            return Sender(user, session)
    return None


@dataclass(frozen=True)
class Connected:
    """The connection opened (``attempt`` 1 is the first; later ones are reconnects)."""

    url: str
    attempt: int


@dataclass(frozen=True)
class Disconnected:
    """The connection ended; the client reconnects after ``delay`` seconds.

    ``code`` is the close code (None: it dropped without one, or the attempt
    failed), ``status`` the HTTP status of a refused upgrade.
    """

    code: int | None
    reason: str
    delay: float
    status: int | None = None


@dataclass(frozen=True)
class Closed:
    """The client stopped for good (asked to, or the close code said stop)."""

    code: int | None
    reason: str
    status: int | None = None


@dataclass(frozen=True)
class ChannelMessage:
    """What ``publish`` delivered to a channel this client is subscribed to.

    ``offset`` and ``epoch`` are its place in the channel's stream (None from a
    server without recovery). Delivered once each, in offset order.
    """

    channel: str
    type: str
    payload: Any
    sender: Sender | None
    offset: int | None
    epoch: str | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Broadcast:
    """A ``broadcast`` to this connection's path (``ns``)."""

    ns: str
    type: str
    payload: Any
    sender: Sender | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Direct:
    """A ``direct`` message to this client's user."""

    type: str
    payload: Any
    sender: Sender | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Subscribed:
    """The server answered ``subscribe``: the mode granted and the channel's stream position.

    ``recovered`` is None when the client did not ask to recover (first
    subscribe), True when the missed messages follow, False when they cannot
    (``reason``: ``"too_many"``, ``"expired"`` or ``"epoch"``); after False the
    app reloads what it shows from its own store.
    """

    channel: str
    presence: str
    offset: int | None
    epoch: str | None
    recovered: bool | None
    reason: str | None


@dataclass(frozen=True)
class StreamReset:
    """``stream.reset``: the server started the channel's stream again (its hub or
    cluster link went down or came back); messages since the client's position may be
    missing. Treat it as ``recovered: false`` (reload from the app's store)."""

    channel: str
    offset: int | None
    epoch: str | None


@dataclass(frozen=True)
class StreamMissed:
    """``stream.missed``: a position check found the client out of step (the server's
    stream never reached its position). The client subscribes again with ``since``; the
    ``Subscribed`` that answers says whether it recovered."""

    channel: str
    offset: int | None
    epoch: str | None


@dataclass(frozen=True)
class Unsubscribed:
    channel: str


@dataclass(frozen=True)
class PresenceChanged:
    """A channel's map changed: a snapshot (``snapshot`` True) or a diff applied.

    ``members`` is the whole map afterwards (key: user id in the users view,
    session id in the sessions view); ``joins``, ``leaves`` and ``updates`` are
    what the message carried (for a snapshot: ``joins`` is every member).
    """

    channel: str
    view: str
    version: int
    snapshot: bool
    members: dict[str, Any]
    joins: dict[str, Any]
    leaves: dict[str, Any]
    updates: dict[str, Any]


@dataclass(frozen=True)
class CountChanged:
    channel: str
    sessions: int
    users: int


@dataclass(frozen=True)
class ServerError:
    """An ``error`` message: one command was refused, nothing changed."""

    code: str
    message: str
    channel: str | None


@dataclass(frozen=True)
class SessionDetached:
    """Another connection took this client's session (``session.detached``).

    The connection stays open, anonymous; the client no longer resubscribes or
    reconnects as that session. The app decides (tell the user, or connect again).
    """

    session_id: str | None
    reason: str | None


#: What iterating a ``PresenceClient`` (or its ``recv()``) gives: one of the events above.
Event = (
    Connected
    | Disconnected
    | Closed
    | ChannelMessage
    | Broadcast
    | Direct
    | Subscribed
    | Unsubscribed
    | PresenceChanged
    | CountChanged
    | ServerError
    | SessionDetached
    | StreamReset
    | StreamMissed
)
