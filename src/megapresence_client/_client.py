"""The client: one connection at a time, reconnected by close code, its subscriptions kept."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal

import anyio
import anyio.abc

from megapresence_core.errors import PeerError
from megapresence_core.wire import (
    RESERVED_PREFIXES,
    RESERVED_TYPES,
    PresenceDiff,
    PresenceMap,
    PresenceState,
    decode_server_message,
)

from ._events import (
    Broadcast,
    ChannelMessage,
    Closed,
    Connected,
    CountChanged,
    Direct,
    Disconnected,
    Event,
    PresenceChanged,
    ServerError,
    SessionDetached,
    StreamMissed,
    StreamReset,
    Subscribed,
    Unsubscribed,
    sender_of,
)
from ._plan import Backoff, Plan, Position, Stream, plan_for_close, plan_for_status
from ._transport import Connection, HandshakeRefusedError, Target

log = logging.getLogger("megapresence_client")

#: How a subscription hears presence: not at all, the users, the sessions, or a count.
PresenceMode = Literal["none", "users", "sessions", "count"]
PRESENCE_MODES: Final = ("none", "users", "sessions", "count")

#: Errors that answer ``subscribe``: the subscription is dropped (not resent on reconnect).
SUBSCRIBE_REFUSALS: Final = frozenset(
    {"forbidden", "too_many_channels", "over_limit", "not_joined", "bad_command"}
)
#: Errors that refuse a ``subscribe`` for now: it is sent again after a backoff (a full
#: channel has room again once a member leaves).
SUBSCRIBE_RETRIES: Final = frozenset({"rate_limited", "busy", "channel_full"})
#: Errors that refuse an ``unsubscribe`` for now (the server keeps the channel): it is
#: sent again after a backoff.
UNSUBSCRIBE_RETRIES: Final = frozenset({"rate_limited", "busy"})

UrlChoice = str | Sequence[str] | Callable[[], str]


def is_reserved(message_type: str) -> bool:
    """Whether ``message_type`` is one only the server may send (the core's rule: a
    peer's message of such a type is forged)."""
    return message_type in RESERVED_TYPES or message_type.startswith(RESERVED_PREFIXES)


def _check_type(message_type: str) -> None:
    if is_reserved(message_type):
        raise ValueError(f"{message_type!r} is a server message type; choose another")


def _channel_message(
    op: str, channel: str, message_type: str, payload: Any, exclude_self: bool
) -> dict[str, Any]:
    """A ``publish`` or ``broadcast`` command."""
    _check_type(message_type)
    command: dict[str, Any] = {"op": op, "channel": channel, "type": message_type}
    if payload is not None:
        command["payload"] = payload
    if exclude_self:
        command["excludeSelf"] = True
    return command


class ClientClosedError(ConnectionError):
    """The client is not connected (or stopped for good): the command was not sent."""


class ConnectFailedError(ConnectionError):
    """The client stopped before it ever connected (``code`` or ``status`` says why)."""

    def __init__(self, code: int | None, reason: str, status: int | None) -> None:
        super().__init__(f"could not connect: code={code} status={status} {reason}".strip())
        self.code, self.reason, self.status = code, reason, status


class SubscriptionRefusedError(Exception):
    """The server refused a ``subscribe`` (``code``: ``forbidden``, ``too_many_channels`` ...)."""

    def __init__(self, channel: str, code: str, message: str) -> None:
        super().__init__(f"subscribe to {channel!r} refused: {code}: {message}")
        self.channel, self.code = channel, code


class Subscription:
    """One channel this client subscribes to, and what it knows of it.

    Kept across reconnects: after every (re)connect the client subscribes again
    with the same mode (and, with ``recover``, with ``since``: the position of the
    last channel message it delivered).
    """

    def __init__(self, channel: str, presence: PresenceMode, recover: bool) -> None:
        self.channel = channel
        self.presence: PresenceMode = presence
        self.recover = recover
        #: The members of the channel (users or sessions view): the map's latest state.
        self.map: PresenceMap | None = (
            PresenceMap(channel, presence) if presence in ("users", "sessions") else None
        )
        #: ``(sessions, users)`` from the latest ``presence.count`` (mode ``count``).
        self.count: tuple[int, int] | None = None
        #: The latest ``subscribed`` answer (None until the first, and after a reconnect).
        self.answer: Subscribed | None = None
        #: The refusal's error code when the server refused it.
        self.refused: str | None = None
        self.stream = Stream()
        self._answered = anyio.Event()
        self._sync_asked = False  # a `sync` is out and its snapshot not yet here
        self._refusals = 0  # refusals for now (`rate_limited`, `busy`) since it went out
        self._retry: anyio.CancelScope | None = None  # the wait before asking again

    @property
    def members(self) -> dict[str, Any]:
        """The map's members (empty without a presence view)."""
        return dict(self.map.members) if self.map is not None else {}

    @property
    def in_sync(self) -> bool:
        """Whether the map follows the server (False until a snapshot, and after a bad diff)."""
        return self.map is not None and self.map.in_sync

    @property
    def position(self) -> Position | None:
        """The last delivered channel message's place in the stream (None: unknown)."""
        return self.stream.position

    async def wait_subscribed(self) -> Subscribed:
        """Wait for the answer to the current ``subscribe``; raise if it was refused."""
        await self._answered.wait()
        if self.refused is not None:
            raise SubscriptionRefusedError(self.channel, self.refused, "")
        assert self.answer is not None
        return self.answer

    @property
    def _unanswered(self) -> bool:
        """Whether its ``subscribe`` or its ``sync`` waits for an answer."""
        return self.stream.waiting or self._sync_asked

    def _settled(self) -> None:
        """An answer came (or the connection went): no retry is due unless a command of
        it is still unanswered."""
        if self._unanswered:
            return
        self._refusals = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _command(self) -> dict[str, Any]:
        command: dict[str, Any] = {
            "op": "subscribe",
            "channel": self.channel,
            "presence": self.presence,
        }
        position = self.stream.position
        since = self.recover and position is not None
        if since:
            assert position is not None
            command["since"] = position.to_json()
        self.stream.expect(since)
        if self._answered.is_set():  # else someone may be waiting for it
            self._answered = anyio.Event()
        self.answer = None
        return command


class _Waiter:
    """One awaited answer (``direct.result`` or ``roster``), answered in order."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.failed = False

    def settle(self, value: Any, failed: bool = False) -> None:
        self.value, self.failed = value, failed
        self.event.set()


class PresenceClient:
    """A megapresence client: connect, subscribe, publish, and stay connected.

    Use it as an async context manager; read its events with ``async for``::

        async with PresenceClient("ws://host/ws/chat", headers={"Authorization": token}) as client:
            room = client.subscribe("room", presence="users", recover=True)
            await client.publish("room", "chat", {"text": "hi"})
            async for event in client:
                if isinstance(event, ChannelMessage):
                    print(event.sender, event.payload)
                elif isinstance(event, PresenceChanged):
                    print(sorted(room.members))

    ``url`` is one URL, a list of URLs (each attempt picks one at random) or a
    function that returns the URL of each attempt. ``headers``, ``query`` and
    ``cookies`` are the embedder's credentials, sent with every upgrade.

    After a close the client reconnects as the close code says (docs/protocol.md's
    close-code table): 1000, 1002, 1003, 1007 and 1008 stop for good; 4503
    reconnects at once (a little jitter); 1013 backs off longer; anything else,
    a dropped connection or a failed attempt reconnects with jittered exponential
    backoff (:class:`Backoff`). A refused upgrade retries on 408, 429 and 503 and
    stops on other statuses. After each reconnect it sends its metadata (if it set
    any) and every subscription again, each with ``since`` when it recovers.

    Every ``position_check`` seconds (40; 0: never) it sends the server the position
    it holds in each channel (``position``); a ``stream.missed`` (the server's stream
    never reached it) is a :class:`StreamMissed` event, and the channel is subscribed
    again with ``since``.

    Events queue up to ``max_events`` (the oldest are dropped beyond, counted in
    ``dropped_events``); the maps (``Subscription.members``) are kept whether or
    not the events are read.
    """

    def __init__(
        self,
        url: UrlChoice,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        query: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        cookies: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        reconnect: bool = True,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        max_events: int = 10_000,
        wait_open: bool = True,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        position_check: float = 40.0,
    ) -> None:
        self._urls = url
        self._credentials = (_pairs(headers), _pairs(query), _pairs(cookies))
        self._reconnect = reconnect
        self.backoff = backoff or Backoff()
        self._open_timeout = open_timeout
        self._ssl_context = ssl_context
        self._wait_open = wait_open
        self._sleep = sleep
        self.position_check = position_check
        self._events: deque[Event] = deque(maxlen=max_events)
        self._max_events = max_events
        #: Events dropped because the queue was full (nobody read them).
        self.dropped_events = 0
        self._new_event = anyio.Event()
        self._changed = anyio.Event()
        self.subscriptions: dict[str, Subscription] = {}
        self._metadata: dict[str, Any] | None = None
        self._left: set[str] = set()
        #: Per channel left: its unsubscribe's refusals for now since it went out, and the
        #: wait before sending it again.
        self._left_refusals: dict[str, int] = {}
        self._left_retries: dict[str, anyio.CancelScope] = {}
        #: The session id the server said this connection holds (a ``welcome``), if it did.
        self.session_id: str | None = None
        self._connection: Connection | None = None
        self._directs: deque[_Waiter] = deque()
        self._rosters: deque[_Waiter] = deque()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._finished = anyio.Event()
        self._opened = anyio.Event()
        self._run_scope: anyio.CancelScope | None = None
        self._last: tuple[int | None, str, int | None] = (None, "", None)
        #: The URL of the current (or last) connection.
        self.url: str | None = None
        #: How many times a connection opened.
        self.connections = 0
        #: Set when the session was taken by another connection (``session.detached``).
        self.detached: SessionDetached | None = None
        #: How the client stopped for good (None while it runs).
        self.closed: Closed | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> PresenceClient:
        self._task_group = anyio.create_task_group()
        self._run_scope = anyio.CancelScope()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run)
        if self._wait_open:
            try:
                with anyio.fail_after(self._open_timeout * 3):
                    await self._wait_opened_or_finished()
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
            if not self._opened.is_set():
                await self.__aexit__(None, None, None)
                assert self.closed is not None
                raise ConnectFailedError(self.closed.code, self.closed.reason, self.closed.status)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # Shielded: a cancelled caller still closes (within the close timeout), and the
        # task group is always exited, whatever happened in the block.
        with anyio.CancelScope(shield=True):
            await self.close()
        assert self._task_group is not None
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def _wait_opened_or_finished(self) -> None:
        async with anyio.create_task_group() as group:

            async def waiter(event: anyio.Event) -> None:
                await event.wait()
                group.cancel_scope.cancel()

            group.start_soon(waiter, self._opened)
            group.start_soon(waiter, self._finished)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def close(self, timeout: float = 5.0) -> None:
        """Close with 1000 and stop reconnecting (returns when the connection is gone)."""
        self._closing = True
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(ConnectionError):
                await connection.close(1000, "closed by the client")
        with anyio.move_on_after(timeout):
            await self._finished.wait()
        if not self._finished.is_set():
            assert self._run_scope is not None
            self._run_scope.cancel()  # the loop only: the caller runs in the task group too
            if connection is not None:
                await connection.abort()
            await self._finished.wait()

    async def drop(self) -> None:
        """Cut the connection without a close frame (as a network blip would): it reconnects."""
        if self._connection is not None:
            await self._connection.abort()

    # ------------------------------------------------------------------ events

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._finished.is_set():
                raise StopAsyncIteration
            await self._wait_either(self._new_event, self._finished)
        return self._events.popleft()

    async def recv(self) -> Event:
        """The next event; ``ClientClosedError`` once the client stopped and all were read."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ClientClosedError("the client is closed") from None

    async def wait_for(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until ``condition()`` holds; it is checked after every message handled."""
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    async def _wait_either(self, first: anyio.Event, second: anyio.Event) -> None:
        async with anyio.create_task_group() as group:

            async def waiter(event: anyio.Event) -> None:
                await event.wait()
                group.cancel_scope.cancel()

            group.start_soon(waiter, first)
            group.start_soon(waiter, second)

    def _emit(self, event: Event) -> None:
        if len(self._events) == self._max_events:
            self.dropped_events += 1
        self._events.append(event)
        self._new_event.set()
        self._new_event = anyio.Event()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ commands

    def subscribe(
        self, channel: str, presence: PresenceMode = "none", *, recover: bool = False
    ) -> Subscription:
        """Subscribe to ``channel`` in ``presence`` mode, now and after every reconnect.

        With ``recover``, a reconnect asks for the channel messages missed meanwhile
        (``since``); the :class:`Subscribed` event says whether they came. Returns
        the subscription at once; ``await subscription.wait_subscribed()`` waits for
        the answer. Subscribing again changes the mode (the position is kept).
        """
        if presence not in PRESENCE_MODES:
            raise ValueError(f"presence must be one of {PRESENCE_MODES}, not {presence!r}")
        previous = self.subscriptions.get(channel)
        subscription = Subscription(channel, presence, recover)
        if previous is not None:
            subscription.stream = previous.stream
        self.subscriptions[channel] = subscription
        self._left.discard(channel)
        self._left_settled(channel)
        if self._connection is not None and self.detached is None:
            self._send_soon(subscription._command())
        return subscription

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel`` (and stop subscribing to it after reconnects)."""
        self.subscriptions.pop(channel, None)
        # Until the server confirms, sent again after a reconnect: a session restored
        # within the grace keeps its channels.
        self._left.add(channel)
        if self._connection is not None:
            await self._send({"op": "unsubscribe", "channel": channel})

    async def publish(
        self, channel: str, type: str, payload: Any = None, *, exclude_self: bool = False
    ) -> None:
        """Publish a message to ``channel``'s subscribers (this client must be one)."""
        await self._send(_channel_message("publish", channel, type, payload, exclude_self))

    async def broadcast(
        self, channel: str, payload: Any = None, *, type: str = "chat", exclude_self: bool = False
    ) -> None:
        """Send a message to every connection of this path (``channel`` routes it)."""
        await self._send(_channel_message("broadcast", channel, type, payload, exclude_self))

    async def direct(
        self, user_id: str, payload: Any = None, *, type: str = "direct", timeout: float = 10.0
    ) -> bool:
        """Send a message to every connection of ``user_id``; returns the server's ``found``."""
        _check_type(type)
        command: dict[str, Any] = {"op": "direct", "userId": user_id, "type": type}
        if payload is not None:
            command["payload"] = payload
        waiter = _Waiter()
        self._directs.append(waiter)
        return bool(await self._ask(command, waiter, self._directs, timeout))

    async def roster(self, timeout: float = 10.0) -> dict[str, Any]:
        """The server's ``roster``: ``{"members": [...], "channels": {...}}``."""
        waiter = _Waiter()
        self._rosters.append(waiter)
        payload = await self._ask({"op": "roster"}, waiter, self._rosters, timeout)
        return dict(payload) if isinstance(payload, dict) else {}

    async def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace this session's metadata (also sent again after every reconnect)."""
        self._metadata = dict(metadata)
        if self._connection is not None:
            await self._send({"op": "metadata", "metadata": self._metadata})

    async def sync(self, channel: str) -> None:
        """Ask for a fresh snapshot (or count) of ``channel``."""
        await self._send({"op": "sync", "channel": channel})

    async def kick(self, session_id: str, reason: str | None = None, requeue: bool = False) -> None:
        """Close a session wherever it is (admins only)."""
        command: dict[str, Any] = {"op": "kick", "sessionId": session_id}
        if reason is not None:
            command["reason"] = reason
        if requeue:
            command["requeue"] = True
        await self._send(command)

    async def send_raw(self, command: Mapping[str, Any]) -> None:
        """Send any command as is (for commands newer than this client)."""
        await self._send(dict(command))

    async def _ask(
        self, command: dict[str, Any], waiter: _Waiter, queue: deque[_Waiter], timeout: float
    ) -> Any:
        try:
            await self._send(command)
            with anyio.fail_after(timeout):
                await waiter.event.wait()
        finally:
            if not waiter.event.is_set() and waiter in queue:
                queue.remove(waiter)
        if waiter.failed:
            raise ClientClosedError("the connection closed before the answer")
        return waiter.value

    async def _send(self, command: dict[str, Any]) -> None:
        connection = self._connection
        if connection is None:
            raise ClientClosedError("not connected")
        try:
            await connection.send(json.dumps(command, separators=(",", ":")))
        except ConnectionError as exc:
            raise ClientClosedError(str(exc)) from exc

    def _send_soon(self, command: dict[str, Any]) -> None:
        assert self._task_group is not None
        self._task_group.start_soon(self._send_quietly, command)

    async def _send_quietly(self, command: dict[str, Any]) -> None:
        with contextlib.suppress(ClientClosedError):  # sent again after the reconnect
            await self._send(command)

    # ------------------------------------------------------------------ connection loop

    def _pick_url(self) -> str:
        urls = self._urls
        if isinstance(urls, str):
            return urls
        if callable(urls):
            return urls()
        return random.choice(list(urls))

    async def _run(self) -> None:
        assert self._run_scope is not None
        try:
            with self._run_scope:
                await self._loop()
        finally:
            self.closed = Closed(*self._last)
            self._emit(self.closed)
            self._finished.set()
            self._touch()

    async def _loop(self) -> None:
        while not self._closing:
            plan, code, reason, status = await self._attempt()
            self._last = (code, reason, status)
            if self._closing or not self._reconnect or plan == "stop":
                return
            if self.detached is not None:
                self._last = (code, "the session was taken by another connection", status)
                return
            delay = self.backoff.delay(plan)
            self._emit(Disconnected(code, reason, delay, status))
            self._touch()
            await self._sleep(delay)

    async def _attempt(self) -> tuple[Plan, int | None, str, int | None]:
        url = self.url = self._pick_url()
        headers, query, cookies = self._credentials
        target = Target(url, headers, query, cookies)
        try:
            connection = await Connection.open(
                target, ssl_context=self._ssl_context, timeout=self._open_timeout
            )
        except HandshakeRefusedError as refused:
            return (
                plan_for_status(refused.status),
                None,
                refused.body.decode("utf-8", "replace"),
                refused.status,
            )
        except (OSError, TimeoutError) as exc:
            return "prompt", None, str(exc) or type(exc).__name__, None
        self._connection = connection
        self.connections += 1
        self.backoff.reset()
        self._opened.set()
        self._emit(Connected(url, self.connections))
        self._touch()
        checks = anyio.CancelScope()
        if self.position_check > 0:
            assert self._task_group is not None
            self._task_group.start_soon(self._check_positions, checks)
        try:
            await self._resend_state()
            while (text := await connection.receive()) is not None:
                self._handle(text)
                self._touch()
        except ConnectionError:
            pass  # the connection dropped under a send: reconnect
        finally:
            checks.cancel()
            self._connection = None
            self._lost()
            with anyio.CancelScope(shield=True):
                await connection.abort()
        code = connection.close_code
        return plan_for_close(code), code, connection.close_reason, None

    async def _check_positions(self, scope: anyio.CancelScope) -> None:
        """The position of each subscription that holds one and waits for no answer,
        every ``position_check`` seconds while this connection lasts."""
        with scope:
            while True:
                await anyio.sleep(self.position_check)
                for subscription in list(self.subscriptions.values()):
                    stream = subscription.stream
                    if stream.position is None or stream.waiting:
                        continue
                    command = {"op": "position", "channel": subscription.channel}
                    await self._send_quietly(command | stream.position.to_json())

    async def _resend_state(self) -> None:
        if self.detached is not None:
            return
        if self._metadata is not None:
            await self._send({"op": "metadata", "metadata": self._metadata})
        # Each command says the state as it is when it goes: the app may subscribe or
        # leave between two sends, and its own command went out already.
        for channel in sorted(self._left):
            if channel in self._left:
                await self._send({"op": "unsubscribe", "channel": channel})
        for channel in list(self.subscriptions):
            subscription = self.subscriptions.get(channel)
            if subscription is not None:
                await self._send(subscription._command())

    def _lost(self) -> None:
        for scope in self._left_retries.values():  # the reconnect sends them again
            scope.cancel()
        self._left_retries.clear()
        for queue in (self._directs, self._rosters):
            while queue:
                queue.popleft().settle(None, failed=True)
        for subscription in self.subscriptions.values():
            subscription.stream.disconnected()
            subscription._sync_asked = False
            subscription._settled()
            if subscription.map is not None:
                subscription.map.in_sync = False

    # ------------------------------------------------------------------ server messages

    def _handle(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("a server message that is not JSON: %.80r", text)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            log.warning("a server message without a type: %.80r", text)
            return
        kind: str = message["type"]
        if "from" in message and is_reserved(kind):
            return  # a peer's message with a server type: forged (or from an old server)
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, message)
        elif is_reserved(kind):
            pass  # a server message newer than this client
        elif isinstance(message.get("channel"), str):
            self._on_channel_message(message)
        elif isinstance(message.get("ns"), str):
            self._emit(
                Broadcast(message["ns"], kind, message.get("payload"), sender_of(message), message)
            )
        else:
            self._emit(Direct(kind, message.get("payload"), sender_of(message), message))

    def _on_presence(self, message: dict[str, Any]) -> None:
        subscription = self.subscriptions.get(str(message.get("channel")))
        if subscription is None or subscription.map is None:
            return
        if message.get("view") != subscription.map.view:
            return
        try:
            decoded = decode_server_message(json.dumps(message))
        except PeerError as exc:
            log.warning("a presence message the client cannot read: %s", exc)
            return
        assert isinstance(decoded, PresenceState | PresenceDiff)
        if not subscription.map.apply(decoded):
            if not subscription._sync_asked:
                subscription._sync_asked = True
                self._send_soon({"op": "sync", "channel": subscription.channel})
            return
        if not subscription.stream.waiting:
            subscription._sync_asked = False
            subscription._settled()
        snapshot = isinstance(decoded, PresenceState)
        self._emit(
            PresenceChanged(
                subscription.channel,
                subscription.map.view,
                decoded.version,
                snapshot,
                dict(subscription.map.members),
                dict(decoded.members if isinstance(decoded, PresenceState) else decoded.joins),
                {} if isinstance(decoded, PresenceState) else dict(decoded.leaves),
                {} if isinstance(decoded, PresenceState) else dict(decoded.updates),
            )
        )

    def _on_count(self, message: dict[str, Any]) -> None:
        subscription = self.subscriptions.get(str(message.get("channel")))
        sessions, users = message.get("sessions"), message.get("users")
        if subscription is None or not isinstance(sessions, int) or not isinstance(users, int):
            return
        subscription.count = (sessions, users)
        self._emit(CountChanged(subscription.channel, sessions, users))

    def _on_subscribed(self, message: dict[str, Any]) -> None:
        subscription = self.subscriptions.get(str(message.get("channel")))
        if subscription is None:
            return
        offset, epoch = message.get("offset"), message.get("epoch")
        recovered = message.get("recovered")
        reason = message.get("reason")
        answer = Subscribed(
            subscription.channel,
            str(message.get("presence", subscription.presence)),
            offset if isinstance(offset, int) else None,
            epoch if isinstance(epoch, str) else None,
            recovered if isinstance(recovered, bool) else None,
            reason if isinstance(reason, str) else None,
        )
        subscription.answer = answer
        subscription.refused = None
        subscription._answered.set()
        subscription._settled()
        self._emit(answer)
        for delivered in subscription.stream.answered(offset, epoch, recovered):
            self._deliver(subscription.channel, delivered)

    def _on_unsubscribed(self, message: dict[str, Any]) -> None:
        channel = str(message.get("channel"))
        self._left.discard(channel)
        self._left_settled(channel)
        self._emit(Unsubscribed(channel))

    def _on_channel_message(self, message: dict[str, Any]) -> None:
        channel: str = message["channel"]
        subscription = self.subscriptions.get(channel)
        if subscription is None:
            self._deliver(channel, message)
            return
        for delivered in subscription.stream.receive(message):
            self._deliver(channel, delivered)

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        offset, epoch = message.get("offset"), message.get("epoch")
        self._emit(
            ChannelMessage(
                channel,
                str(message["type"]),
                message.get("payload"),
                sender_of(message),
                offset if isinstance(offset, int) else None,
                epoch if isinstance(epoch, str) else None,
                message,
            )
        )

    def _on_direct_result(self, message: dict[str, Any]) -> None:
        if self._directs:
            self._directs.popleft().settle(message.get("found") is True)

    def _on_roster(self, message: dict[str, Any]) -> None:
        if self._rosters:
            self._rosters.popleft().settle(message.get("payload"))

    def _on_error(self, message: dict[str, Any]) -> None:
        payload = message.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        code, text, channel = payload.get("code"), payload.get("message"), payload.get("channel")
        error = ServerError(
            str(code), str(text or ""), channel if isinstance(channel, str) else None
        )
        self._emit(error)
        if error.code in UNSUBSCRIBE_RETRIES:
            # An unsubscribe refused for now (the server keeps the channel): the one that
            # names its channel, or, for a `rate_limited` naming none, any unconfirmed.
            if error.channel is None and error.code == "rate_limited":
                for channel in sorted(self._left):
                    self._unsubscribe_later(channel)
            elif error.channel in self._left:
                self._unsubscribe_later(error.channel)
        subscription = self.subscriptions.get(error.channel) if error.channel else None
        if error.code == "rate_limited" and error.channel is None:
            # Decided before the command was read, so it names none: any subscribe or
            # sync still unanswered may be the one refused.
            for each in self.subscriptions.values():
                if each._unanswered:
                    self._retry_later(each)
        elif subscription is None or not subscription.stream.waiting:
            pass  # not the answer to a subscribe (a publish's not_subscribed, say)
        elif error.code in SUBSCRIBE_REFUSALS:
            # The answer to its subscribe: dropped, not resent after a reconnect.
            subscription.refused = error.code
            subscription.stream.waiting = False
            del self.subscriptions[subscription.channel]
            subscription._answered.set()
        elif error.code in SUBSCRIBE_RETRIES:
            self._retry_later(subscription)

    def _unsubscribe_later(self, channel: str) -> None:
        """The unsubscribe of ``channel`` was refused for now: sent again after a backoff
        (the prompt plan's delays, doubling per refusal), unless the server confirms it,
        the channel is subscribed again or the connection goes first (the reconnect sends
        it again)."""
        if channel in self._left_retries:
            return
        refusals = self._left_refusals[channel] = self._left_refusals.get(channel, 0) + 1
        retry = dataclasses.replace(self.backoff, attempt=refusals - 1, backing_off=False)
        self._left_retries[channel] = scope = anyio.CancelScope()
        assert self._task_group is not None
        self._task_group.start_soon(self._unsubscribe_again, channel, scope, retry.delay("prompt"))

    async def _unsubscribe_again(
        self, channel: str, scope: anyio.CancelScope, delay: float
    ) -> None:
        with scope:
            await self._sleep(delay)
            if self._left_retries.get(channel) is not scope:
                return  # settled meanwhile
            del self._left_retries[channel]  # still in ``_left``: else settled
            await self._send_quietly({"op": "unsubscribe", "channel": channel})

    def _left_settled(self, channel: str) -> None:
        """The unsubscribe of ``channel`` was confirmed, or the channel subscribed again:
        no retry is due."""
        self._left_refusals.pop(channel, None)
        scope = self._left_retries.pop(channel, None)
        if scope is not None:
            scope.cancel()

    def _on_stream_missed(self, message: dict[str, Any]) -> None:
        subscription = self.subscriptions.get(str(message.get("channel")))
        offset, epoch = message.get("offset"), message.get("epoch")
        if subscription is None or not subscription.stream.missed(offset, epoch):
            return
        self._emit(
            StreamMissed(
                subscription.channel,
                offset if isinstance(offset, int) else None,
                epoch if isinstance(epoch, str) else None,
            )
        )
        self._send_soon(subscription._command())

    def _retry_later(self, subscription: Subscription) -> None:
        """Its subscribe (or sync) was refused for now: asked again after a backoff (the
        prompt plan's delays, doubling per refusal), unless the answer comes first. The
        channel messages a subscribe holds stay held until its answer."""
        if subscription._retry is not None:
            return
        subscription._refusals += 1
        retry = dataclasses.replace(
            self.backoff, attempt=subscription._refusals - 1, backing_off=False
        )
        subscription._retry = scope = anyio.CancelScope()
        assert self._task_group is not None
        self._task_group.start_soon(self._ask_again, subscription, scope, retry.delay("prompt"))

    async def _ask_again(
        self, subscription: Subscription, scope: anyio.CancelScope, delay: float
    ) -> None:
        with scope:
            await self._sleep(delay)
            subscription._retry = None
            if self.subscriptions.get(subscription.channel) is not subscription:
                return
            if subscription.stream.waiting:
                await self._send_quietly(subscription._command())
            elif subscription._sync_asked:
                await self._send_quietly({"op": "sync", "channel": subscription.channel})

    def _on_stream_reset(self, message: dict[str, Any]) -> None:
        subscription = self.subscriptions.get(str(message.get("channel")))
        if subscription is None:
            return
        offset, epoch = message.get("offset"), message.get("epoch")
        subscription.stream.reset(offset, epoch)
        self._emit(
            StreamReset(
                subscription.channel,
                offset if isinstance(offset, int) else None,
                epoch if isinstance(epoch, str) else None,
            )
        )

    def _on_welcome(self, message: dict[str, Any]) -> None:
        payload = message.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("sessionId"), str):
            self.session_id = payload["sessionId"]

    def _on_heartbeat(self, message: dict[str, Any]) -> None:
        """The recommended heartbeat (``server.ping``, from an app mounted behind an ASGI
        server that never pings): answered, or the server closes an idle client (1011)."""
        self._send_soon({"op": "ping"})

    def _on_detached(self, message: dict[str, Any]) -> None:
        session, reason = message.get("sessionId"), message.get("reason")
        self.detached = SessionDetached(
            session if isinstance(session, str) else None,
            reason if isinstance(reason, str) else None,
        )
        for subscription in self.subscriptions.values():
            if subscription.map is not None:
                subscription.map.in_sync = False
        self._emit(self.detached)


_HANDLERS: Final[dict[str, Callable[[PresenceClient, dict[str, Any]], None]]] = {
    "presence.state": PresenceClient._on_presence,
    "presence.diff": PresenceClient._on_presence,
    "presence.count": PresenceClient._on_count,
    "subscribed": PresenceClient._on_subscribed,
    "unsubscribed": PresenceClient._on_unsubscribed,
    "direct.result": PresenceClient._on_direct_result,
    "roster": PresenceClient._on_roster,
    "error": PresenceClient._on_error,
    "session.detached": PresenceClient._on_detached,
    "welcome": PresenceClient._on_welcome,
    "server.ping": PresenceClient._on_heartbeat,
    "stream.reset": PresenceClient._on_stream_reset,
    "stream.missed": PresenceClient._on_stream_missed,
}


def _pairs(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    return tuple((str(k), str(v)) for k, v in value)


def connect(url: UrlChoice, **options: Any) -> PresenceClient:
    """``async with connect(url, ...) as client``: a :class:`PresenceClient` (same options)."""
    return PresenceClient(url, **options)
