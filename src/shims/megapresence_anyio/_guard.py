"""The fault boundary of one connection: whatever escapes its work becomes an HTTP
status before the upgrade or a close code after it, and one log line.

Every connection's task (a client socket, a bridge link on the hub) runs
inside one ``try`` in its server, and whatever escapes the work inside it ends
in :meth:`Guard.fault`: before the upgrade an HTTP status, after it a close
code, and one log line naming the peer. The core's errors carry the status and
the close code to use (their hints); anything else is a bug, 500 or 1011. The
README's fault table states the mapping for users.

The guard is generic in what it writes through: a socket's transport, or an
ASGI connection (``_asgi.py``), which answers a refusal in its own way. How
far it got (:class:`Stage`) is what the admission (``_admission.py``) counts.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Final, Generic, TypeVar

import anyio

from megapresence_core import CloseCode, PresenceError

from ._http import respond
from ._logging import bounded
from ._session import Session
from ._transport import Outlet

__all__ = ["Guard", "Stage"]

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
