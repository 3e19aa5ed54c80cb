"""TLS for the listeners (``--certfile``/``--keyfile``) and for ``wss://`` hub links.

A TLS socket cannot be written in place with a bare non-blocking ``send()``:
the record layer owns the bytes, and a write may need a read first. The
simplest correct transport is anyio's ``TLSStream`` under the queued writer
(``StreamTransport``), one writer task per socket while it has a backlog;
its cost against plain sockets is measured in ``benchmarks/``.

An accepted socket's TLS handshake is done by its first read
(:class:`TlsServerStream`), so it runs inside the connection's handshake
deadline and counts in the pending-handshake caps like the HTTP request
behind it; a peer that never finishes it gets nothing and is dropped.
"""

from __future__ import annotations

import socket
import ssl
from typing import final

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from megapresence_core import LocalUsageError

__all__ = ["TlsServerStream", "client_context", "server_context"]


def _load_chain(context: ssl.SSLContext, what: str, certfile: str, keyfile: str | None) -> None:
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        key = f"with the key {keyfile!r}" if keyfile else "(no keyfile: the key must be in it too)"
        raise LocalUsageError(
            f"cannot load the {what} {certfile!r} {key}: {exc} (PEM certificates expected)"
        ) from None


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server context with a certificate chain (misuse if it cannot be loaded)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, "TLS certificate", certfile, keyfile)
    return context


def client_context(
    cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A client context: the system's trust store, or ``cafile``; with a client certificate
    when ``certfile`` is given. Host names are checked."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise LocalUsageError(f"cannot load the CA file {cafile!r}: {exc}") from None
    if certfile is not None:
        _load_chain(context, "client certificate", certfile, keyfile)
    elif keyfile is not None:
        raise LocalUsageError("a client key needs its certificate (certfile) too")
    return context


@final
class TlsServerStream(anyio.abc.ByteStream):
    """An accepted socket whose TLS handshake happens at its first read."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self._sock = sock
        self._context = context
        self._tls: TLSStream | None = None
        self._opened = anyio.Event()
        self._opening: anyio.CancelScope | None = None
        self._closed = False

    async def _open(self) -> TLSStream:
        if self._tls is None:
            with anyio.CancelScope() as self._opening:
                if not self._closed:
                    plain = await anyio.abc.SocketStream.from_socket(self._sock)
                    try:
                        self._tls = await TLSStream.wrap(
                            plain,
                            server_side=True,
                            ssl_context=self._context,
                            standard_compatible=False,
                        )
                    except BaseException:
                        await anyio.aclose_forcefully(plain)
                        raise
            if self._tls is None:  # closed before or while the handshake ran
                self._sock.close()
                raise anyio.ClosedResourceError
            self._opened.set()
        return self._tls

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await (await self._open()).receive(max_bytes)
        except ssl.SSLError as exc:  # not TLS, or a bad handshake: the peer's doing
            raise anyio.BrokenResourceError from exc

    async def send(self, item: bytes) -> None:
        await self._opened.wait()  # nothing is written before the handshake
        if self._tls is None:
            raise anyio.ClosedResourceError
        await self._tls.send(item)

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS streams cannot send an EOF alone")

    async def aclose(self) -> None:
        self._closed = True
        if self._tls is not None:
            await self._tls.aclose()
        elif self._opening is not None:
            self._opening.cancel()  # the reader's handshake closes the socket
        else:
            self._sock.close()  # no read began
        self._opened.set()  # a writer waiting for the handshake gives up
