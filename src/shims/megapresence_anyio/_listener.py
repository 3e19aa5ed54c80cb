"""Listening sockets owned by megapresence, so every accepted socket can be written in place."""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable

import anyio
import anyio.lowlevel

__all__ = ["accept_forever", "open_listener"]

logger = logging.getLogger("megapresence")

_HINTS = {
    "EMFILE": "; raise the open-files limit (ulimit -n, LimitNOFILE=): docs/sizing.md",
    "ENFILE": "; the system's file table is full (fs.file-max): docs/sizing.md",
}

#: Called for each accepted socket; it starts whatever serves it.
OnAccept = Callable[[socket.socket, tuple[str, int] | None], None]


def open_listener(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """A non-blocking listening TCP socket (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


#: Accepted sockets between two yields to the tasks serving them. Their requests
#: are usually in the kernel already: read them before a flood of newer sockets
#: pushes them out of the pending-handshake cap.
ACCEPT_BATCH = 64


#: At most one warning per this many seconds about failing accepts, with the count.
ACCEPT_WARNING_INTERVAL = 10.0
#: How long the listener waits after a failed accept before it tries again.
ACCEPT_RETRY = 0.1


async def accept_forever(
    sock: socket.socket, on_accept: OnAccept, failures: Counter[str] | None = None
) -> None:
    """Accept connections until cancelled, calling ``on_accept(conn, address)`` for each.

    An accept that fails (EMFILE: out of file descriptors; ENFILE, ENOBUFS,
    ENOMEM) is counted in ``failures`` by its errno name, logged at most once
    per ``ACCEPT_WARNING_INTERVAL`` with the count since, and retried after
    ``ACCEPT_RETRY``: the connection waits in the kernel's queue meanwhile, and
    the listener serves again as soon as descriptors are free."""
    batch = 0
    next_warning = float("-inf")
    failed = 0
    try:
        while True:
            if batch >= ACCEPT_BATCH:
                batch = 0
                await anyio.lowlevel.checkpoint()
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                batch = 0
                await anyio.wait_readable(sock)
                continue
            except OSError as exc:  # e.g. EMFILE: say so, and back off instead of spinning
                name = errno.errorcode.get(exc.errno or 0, "other")
                if failures is not None:
                    failures[name] += 1
                failed += 1
                now = anyio.current_time()
                if now >= next_warning:
                    next_warning = now + ACCEPT_WARNING_INTERVAL
                    logger.warning(
                        "cannot accept connections on port %s: %s (%d failed accepts since the "
                        "last warning)%s",
                        sock.getsockname()[1],
                        exc.strerror or name,
                        failed,
                        _HINTS.get(name, ""),
                    )
                    failed = 0
                await anyio.sleep(ACCEPT_RETRY)
                continue
            batch += 1
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            on_accept(conn, address[:2] if isinstance(address, tuple) else None)
    finally:
        anyio.notify_closing(sock)
        sock.close()
