"""Listening sockets owned by megapresence, so every accepted socket can be written in place."""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio
import anyio.lowlevel

__all__ = ["accept_forever", "open_listener"]

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


async def accept_forever(sock: socket.socket, on_accept: OnAccept) -> None:
    """Accept connections until cancelled, calling ``on_accept(conn, address)`` for each."""
    batch = 0
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
            except OSError:  # e.g. EMFILE: back off instead of spinning
                await anyio.sleep(0.1)
                continue
            batch += 1
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            on_accept(conn, address[:2] if isinstance(address, tuple) else None)
    finally:
        anyio.notify_closing(sock)
        sock.close()
