"""The caps on how many sockets a peer may hold, in their handshake and open.

:class:`Admission` applies the ``SocketLimits`` caps: sockets in their
handshake are bounded apart from open sockets, globally and per address, and
a socket counts as open from its upgrade, not from its accept. A socket from a
trusted proxy (``SocketLimits.trusted_proxies``) is counted, once its request
is read, under the client address its ``Forwarded`` or ``X-Forwarded-For``
header gives (``_forwarded.py``); its handshake, before any header is read,
counts under the proxy's. One task answers every expired handshake
(:meth:`Admission.expire_handshakes`), rather than a timer per connection.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio

from ._config import SocketLimits
from ._guard import Guard, Stage
from ._stats import Stats

__all__ = ["Admission"]

logger = logging.getLogger("megapresence")


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
