"""The fault boundary of one connection, and the caps on how many a peer may hold.

Every connection's task (a client socket, a bridge link on the hub) runs
inside one ``try`` in its server, and whatever escapes the work inside it ends
in :meth:`Guard.fault`: before the upgrade an HTTP status, after it a close
code, and one log line naming the peer. The core's errors carry the status and
the close code to use (their hints); anything else is a bug, 500 or 1011. The
README's fault table states the mapping for users.

:class:`Admission` applies the ``SocketLimits`` caps: sockets in their
handshake are bounded apart from open sockets, globally and per address, and
a socket counts as open from its upgrade, not from its accept. A socket from a
trusted proxy (``SocketLimits.trusted_proxies``) is counted, once its request
is read, under the client address its ``Forwarded`` or ``X-Forwarded-For``
header gives (:func:`forwarded_for`); its handshake, before any header is read,
counts under the proxy's.

The guard is generic in what it writes through: a socket's transport, or an
ASGI connection (``_asgi.py``), which answers a refusal in its own way.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, TypeVar, final

import anyio
import anyio.abc
import attrs

from megapresence_core import CloseCode, PresenceError

from ._config import SocketLimits
from ._http import HandshakeRequest, RequestReader, read_request, respond, upgrade_refusal
from ._logging import bounded
from ._session import Session
from ._stats import Stats
from ._transport import Outlet, Transport

__all__ = ["Admission", "Background", "Guard", "forwarded_for", "read_upgrade"]

logger = logging.getLogger("megapresence")


def _status(exc: Exception) -> int:
    """What escapes a connection's work before its upgrade, as an HTTP status: the
    core's hint for its own errors (400 or 413 for an identity over a limit, 500 for
    an identity no one should have built), 500 for anything else (a hook's bug)."""
    return exc.http_status if isinstance(exc, PresenceError) else 500


def _close_code(exc: Exception) -> int:
    """... and after it, as a close code: the core's hint (1008 or 1009 for what a hook
    asked over a limit, 1011 for misuse), 1011 for anything else."""
    return exc.close_code if isinstance(exc, PresenceError) else CloseCode.INTERNAL_ERROR


#: Closes the session makes for what the peer did or did not do (bad frames,
#: binary, invalid UTF-8, too big, silent, not reading): logged when it ends.
_PEER_CLOSES: Final = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_DATA,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.INTERNAL_ERROR,
        CloseCode.TRY_AGAIN_LATER,
    }
)
_REASONS: Final[dict[int, str]] = {
    CloseCode.POLICY: "refused",
    CloseCode.MESSAGE_TOO_BIG: "too big",
}


class Stage(enum.Enum):
    PENDING = "pending"  #: counted in the handshake caps
    OPEN = "open"  #: upgraded: counted in the connection caps
    DONE = "done"  #: counted nowhere


_O = TypeVar("_O", bound=Outlet[Any])


class Guard(Generic[_O]):
    """One connection as its fault boundary sees it: who (for the log line) and how far
    it got (for an HTTP status or a close code)."""

    __slots__ = (
        "answered",
        "client",
        "conn",
        "deadline",
        "path",
        "remote",
        "session",
        "stage",
        "transport",
        "user",
    )

    def __init__(self, transport: _O, remote: tuple[str, int] | None) -> None:
        self.transport = transport
        #: The peer of the socket (a proxy's address behind a proxy).
        self.remote = remote
        #: The client a trusted proxy forwarded for, once its request is read.
        self.client: tuple[str, int] | None = None
        self.path: str | None = None
        self.user: str | None = None
        #: Set at the upgrade: from then on, faults are close codes.
        self.session: Session | None = None
        #: The HTTP status answered, if any: a later fault writes no other.
        self.answered: int | None = None
        self.stage = Stage.DONE
        #: The id the core knows this connection by, once the core has it.
        self.conn: object | None = None
        #: When the handshake (reading the request, authenticating) must be over.
        self.deadline = float("inf")

    @property
    def address(self) -> str | None:
        """The socket's peer address: what the handshake caps count."""
        return self.remote[0] if self.remote is not None else None

    @property
    def client_address(self) -> str | None:
        """The client's address: what the open-connection caps count."""
        return self.client[0] if self.client is not None else self.address

    def __str__(self) -> str:
        where = f"{self.remote[0]}:{self.remote[1]}" if self.remote is not None else "stream"
        if self.client is not None:
            where = f"{self.client[0]}:{self.client[1]} via {where}"
        # The path and the user id are the peer's choice: only so much of them is logged.
        path = f" {bounded(self.path)}" if self.path is not None else ""
        user = f" user={bounded(repr(self.user))}" if self.user is not None else ""
        return f"peer {where}{path}{user}"

    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain",
        *,
        head: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Answer over HTTP, once."""
        if self.answered is None:
            self.answered = status
            self._answer(status, body, content_type, head=head, headers=headers)

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        """Write the response; an ASGI connection answers through its server instead."""
        respond(self.transport, status, body, content_type, head=head, headers=headers)

    def refuse(
        self,
        status: int,
        why: str,
        *,
        level: int = logging.INFO,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Refuse before the upgrade, with one log line (unless it was answered already)."""
        if self.answered is None:
            logger.log(level, "%s refused with HTTP %d: %s", self, status, bounded(why))
            self.respond(status, (why + "\n").encode(), headers=headers)

    def fault(self, exc: Exception) -> None:
        """Whatever escaped this connection's work: a status or a close code, and a line."""
        session = self.session
        if session is None:
            status = _status(exc)
            level = logging.WARNING if status < 500 else logging.ERROR
            logger.log(
                level,
                "%s refused with HTTP %d: %s: %s",
                self,
                status,
                type(exc).__name__,
                bounded(str(exc)),
                exc_info=exc if status >= 500 else None,
            )
            # A refusal the client caused may say why; a 500 says nothing of our insides.
            self.respond(status, f"{exc}\n".encode() if status < 500 else b"")
            return
        code = _close_code(exc)
        level = logging.ERROR if code == CloseCode.INTERNAL_ERROR else logging.WARNING
        logger.log(
            level,
            "%s closed with %d: %s: %s",
            self,
            code,
            type(exc).__name__,
            bounded(str(exc)),
            exc_info=exc if code == CloseCode.INTERNAL_ERROR else None,
        )
        session.close(code, _REASONS.get(code, "internal error"), anyio.current_time())

    def ended(self) -> None:
        """The session ended without a fault: one line if we closed it for the peer's doing."""
        session = self.session
        if session is not None and session.closed_here and session.close_code in _PEER_CLOSES:
            logger.info("%s closed with %d: %s", self, session.close_code, session.close_reason)

    def expire(self, timeout: float) -> None:
        """Its request was not whole by the handshake deadline: 408, and drop it (the
        task reading it sees the end of the stream)."""
        self.refuse(408, f"no complete request within {timeout:g}s")
        self.transport.abort()

    def evict(self) -> None:
        """Pushed out of the handshake caps by a newer socket: 503, and drop it."""
        logger.debug("%s dropped in its handshake: too many pending handshakes", self)
        self.respond(503, b"too many pending handshakes\n")
        self.transport.abort()


@final
class Background:
    """The boundary of a server's background tasks (a writer, the ticker, the listener):
    a fault is logged with its traceback and counted, and the process goes on. A task
    started as a service (one the server cannot do without) that ends on a fault is
    remembered in :attr:`failed`, and the server says it is not ready."""

    __slots__ = ("_group", "_stats", "failed")

    def __init__(self, stats: Stats, group: Callable[[], anyio.abc.TaskGroup]) -> None:
        self._stats = stats
        self._group = group
        self.failed: set[str] = set()

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start a background task in the server's task group, behind its boundary."""
        self._group().start_soon(self._run, None, function, *args)

    def service(
        self, name: str, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any
    ) -> None:
        """Start a task the server cannot do without: if a fault ends it, not ready."""
        self._group().start_soon(self._run, name, function, *args)

    def check(self, checks: dict[str, str], *, ticker_failing: bool) -> bool:
        """Add the background tasks' words to a readiness report; True if all is well."""
        if ticker_failing:
            checks["ticker"] = "failing"
        for service in sorted(self.failed):
            checks[service] = "failed"
        return not (ticker_failing or self.failed)

    async def _run(
        self,
        service: str | None,
        function: Callable[..., Coroutine[Any, Any, Any]],
        *args: Any,
    ) -> None:
        try:
            await function(*args)
        except Exception as exc:
            name = service or str(getattr(function, "__qualname__", type(function).__name__))
            self._stats.faults[name] += 1
            if service is not None:
                self.failed.add(service)
            logger.error(
                "background task %s failed%s: %s: %s",
                name,
                " (not ready from now on)" if service is not None else "",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )


@final
class _Overload:
    """One warning per cap per ``interval`` with the count, not one line per socket:
    a flood of refusals must not also flood the log."""

    __slots__ = ("_hint", "_interval", "_next", "_setting", "_suppressed")

    def __init__(self, setting: str, hint: str = "", interval: float = 10.0) -> None:
        self._setting = setting
        self._hint = hint
        self._interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def note(self, guard: Guard[Any], what: str) -> None:
        now = anyio.current_time()
        logger.debug("%s %s (SocketLimits.%s)", guard, what, self._setting)
        if now < self._next:
            self._suppressed += 1
            return
        logger.warning(
            "%s %s (SocketLimits.%s%s)%s",
            guard,
            what,
            self._setting,
            self._hint,
            f"; {self._suppressed} more since the last warning" if self._suppressed else "",
        )
        self._next = now + self._interval
        self._suppressed = 0


@final
class Admission:
    """The caps of ``SocketLimits`` on sockets in their handshake and on open sockets."""

    __slots__ = (
        "_limits",
        "_open",
        "_open_by_address",
        "_overload",
        "_pending",
        "_pending_by_address",
        "_stats",
        "clock",
    )

    def __init__(self, limits: SocketLimits, stats: Stats) -> None:
        self._limits = limits
        self._stats = stats
        #: The event loop's time; a server sets its loop's own clock, found once.
        self.clock: Callable[[], float] = anyio.current_time
        #: In accept order (dicts keep it): the first is the oldest.
        self._pending: dict[Guard[Any], None] = {}
        self._pending_by_address: Counter[str | None] = Counter()
        self._open = 0
        self._open_by_address: Counter[str | None] = Counter()
        proxied = "; behind a proxy every socket has the proxy's address: raise it"
        self._overload = {
            "max_pending_handshakes": _Overload("max_pending_handshakes"),
            "max_pending_per_address": _Overload("max_pending_per_address", proxied),
            "max_connections": _Overload("max_connections"),
            "max_connections_per_address": _Overload("max_connections_per_address", proxied),
        }

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def expire_handshakes(self) -> None:
        """Answer 408 to every socket whose request is not whole by its deadline: one
        task for all of them, rather than a timer (a cancel scope) per connection
        around its read (``read_upgrade(..., swept=True)``).

        Every deadline is its accept time plus the one ``handshake_timeout``, so the
        pending sockets (in accept order) are in deadline order: the sweep looks at the
        oldest only. One that has read its request and waits for ``authenticate`` has
        a timer of its own (503) and is left to it."""
        timeout = self._limits.handshake_timeout
        while True:
            now = self.clock()
            due: list[Guard[Any]] = []
            waiting = False  # an expired socket in authenticate: its own timer ends it
            for guard in self._pending:
                if guard.deadline > now:
                    break
                if guard.path is None:
                    due.append(guard)
                else:
                    waiting = True
            for guard in due:
                self.leave(guard)
                guard.expire(timeout)
            oldest = next((g.deadline for g in self._pending if g.deadline > now), now + timeout)
            await anyio.sleep(min(oldest - now, 0.05) if waiting else oldest - now)

    @property
    def open(self) -> int:
        return self._open

    async def finish(self, guard: Guard[Any], cleanup: Callable[[], Awaitable[None]]) -> None:
        """The end of a connection's task: it counts nowhere, ``cleanup`` (the core and the
        close hook) runs, and the socket is closed, whatever ``cleanup`` raises."""
        self.leave(guard)
        self._stats.ended(guard.answered, guard.session)
        with anyio.CancelScope(shield=True):
            try:
                await cleanup()
            except Exception as exc:
                logger.error(
                    "%s: cleaning up failed: %s: %s", guard, type(exc).__name__, exc, exc_info=exc
                )
            finally:
                await guard.transport.drain_and_close(self._limits.close_timeout)

    def begin(self, guard: Guard[Any]) -> int | None:
        """A new socket enters its handshake; or the status that refuses it (429). Called
        at accept, so "oldest" is in the order the listener accepted."""
        limits, address = self._limits, guard.address
        pending_here = self._pending_by_address[address] if address is not None else 0
        if pending_here >= limits.max_pending_per_address:
            self._overload["max_pending_per_address"].note(guard, "refused: too many handshakes")
            return 429
        if len(self._pending) >= limits.max_pending_handshakes:
            oldest = next(iter(self._pending))
            self._overload["max_pending_handshakes"].note(oldest, "dropped for a newer socket")
            self.leave(oldest)
            oldest.evict()
        self._pending[guard] = None
        self._pending_by_address[address] += 1
        guard.stage = Stage.PENDING
        guard.deadline = self.clock() + limits.handshake_timeout
        return None

    def refusal(self, guard: Guard[Any]) -> int | None:
        """The status that refuses ``guard`` an open socket (503 for the server, 429 for
        its address), or None if :meth:`upgrade` may count it."""
        limits, address = self._limits, guard.client_address
        if self._open >= limits.max_connections:
            self._overload["max_connections"].note(guard, "refused: too many connections")
            return 503
        if (
            address is not None
            and self._open_by_address[address] >= limits.max_connections_per_address
        ):
            self._overload["max_connections_per_address"].note(
                guard, "refused: too many connections from its address"
            )
            return 429
        return None

    def upgrade(self, guard: Guard[Any]) -> None:
        """Count ``guard`` as open from now (its :meth:`refusal` was None just before)."""
        self.leave(guard)
        self._open += 1
        self._open_by_address[guard.client_address] += 1
        guard.stage = Stage.OPEN

    def leave(self, guard: Guard[Any]) -> None:
        """The socket counts nowhere any more (idempotent)."""
        if guard.stage is Stage.PENDING:
            del self._pending[guard]
            _decrement(self._pending_by_address, guard.address)
        elif guard.stage is Stage.OPEN:
            self._open -= 1
            _decrement(self._open_by_address, guard.client_address)
        guard.stage = Stage.DONE


def _decrement(counter: Counter[str | None], key: str | None) -> None:
    """No zero entries are kept: a map a peer can grow holds only live addresses."""
    if counter[key] <= 1:
        del counter[key]
    else:
        counter[key] -= 1


async def read_upgrade(
    guard: Guard[Transport],
    limits: SocketLimits,
    serve_http: Callable[[Guard[Transport], HandshakeRequest], None],
    *,
    swept: bool = False,
) -> tuple[HandshakeRequest, bytes] | None:
    """Read the request by the handshake deadline and answer it unless it is a valid
    upgrade: plain HTTP goes to ``serve_http``, the rest gets its status. Returns the
    upgrade request and the bytes read behind it, or None once answered. Behind a
    trusted proxy, the request's ``remote`` is the client the proxy forwarded for.
    ``swept``: the admission's :meth:`~Admission.expire_handshakes` runs, and keeps
    the deadline (no timer here)."""
    reader = RequestReader(limits.max_header_bytes, guard.remote)
    outcome: HandshakeRequest | int | None = None
    if swept:
        outcome = await read_request(guard.transport, reader)
        if guard.answered is not None:
            return None  # expired (408) or evicted (503) while it read
    else:
        with anyio.CancelScope(deadline=guard.deadline):
            outcome = await read_request(guard.transport, reader)
    if outcome is None:
        guard.refuse(408, f"no complete request within {limits.handshake_timeout:g}s")
        return None
    if isinstance(outcome, int):
        guard.refuse(outcome, reader.error)
        return None
    guard.path = outcome.path
    if guard.remote is not None and limits.trusted_proxies:
        guard.client = forwarded_for(outcome, guard.remote, limits.trusted_proxies)
        if guard.client is not None:
            outcome = attrs.evolve(outcome, remote=guard.client)
    if not outcome.is_websocket:
        serve_http(guard, outcome)
        return None
    refusal = upgrade_refusal(outcome)
    if refusal is not None:
        status, why = refusal
        guard.refuse(status, why, headers=(("sec-websocket-version", "13"),))
        return None
    return outcome, reader.trailing


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _forwarded_nodes(request: HandshakeRequest) -> list[str]:
    """The addresses a chain of proxies listed, the client first: ``Forwarded``'s
    ``for=`` (RFC 7239) if present, else ``X-Forwarded-For``; every header line counts."""
    forwarded = [value for name, value in request.headers if name == "forwarded"]
    if forwarded:
        return [
            pair.partition("=")[2].strip().strip('"')
            for value in forwarded
            for element in value.split(",")
            for pair in element.split(";")
            if pair.strip().lower().startswith("for=")
        ]
    return [
        node.strip()
        for name, value in request.headers
        if name == "x-forwarded-for"
        for node in value.split(",")
    ]


def _node(text: str) -> tuple[str, int] | None:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80`` or ``2001:db8::1`` as (address, port)."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # "unknown", an obfuscated "_name", or garbage
    # Bounded before int() (which refuses over 4,300 digits): a port that is no port is ignored.
    valid = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) < 65536
    return str(address), int(port) if valid else 0


def forwarded_for(
    request: HandshakeRequest, peer: tuple[str, int], trusted: frozenset[Network]
) -> tuple[str, int] | None:
    """The client a trusted proxy forwarded ``request`` for, or None to keep the peer.

    Only a peer in ``trusted`` is believed. The chain is read from the right (the
    nearest proxy's entry) and trusted proxies are skipped, as uvicorn's
    ``--forwarded-allow-ips`` does: the first other address is the client, since
    what lies left of it was written by the client itself. An entry that is no
    address (``unknown``) ends the search with the nearest proxy's word.
    """

    def is_trusted(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in trusted)

    if not is_trusted(peer[0]):
        return None
    client = None
    for text in reversed(_forwarded_nodes(request)):
        node = _node(text)
        if node is None:
            break
        client = node
        if not is_trusted(node[0]):
            break
    return client
