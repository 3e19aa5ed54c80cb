"""TLS for the listeners (``--certfile``/``--keyfile``) and for ``wss://`` hub links.

An accepted TLS socket is written in place like a plain one
(:class:`TlsTransport`): this turn's frames are sealed into records and sent
with a non-blocking ``send()`` at its end, and only what the kernel does not
take is queued, with a writer task for that socket alone while it lasts. No
task or queue per socket otherwise. anyio's ``TLSStream`` cannot do that: its
``send`` is awaited (one queue and writer task per socket, the cost measured in
``benchmarks/``). asyncio's SSL transport (``loop.start_tls``) writes in place
but trio's ``SSLStream`` has no synchronous write at all; both are an
``ssl.SSLObject`` over memory buffers inside, so the shim drives one itself,
the same way on both loops, through the plain socket's writer and coalescer.

The handshake is done by the first read, so it runs inside the connection's
handshake deadline and counts in the pending-handshake caps like the HTTP
request behind it; a peer that never finishes it gets nothing and is dropped.
The hub link's client side (``_hub_client.py``) stays on anyio's TLS stream:
one socket, whose speed is the hub's.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections import deque
from typing import final

import anyio.lowlevel

from megapresence_core import LocalUsageError

from ._transport import _RECV_BYTES, BATCH_BYTES, Coalescer, SocketTransport, Spawn

__all__ = ["TlsTransport", "client_context", "server_context"]


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
class TlsTransport(SocketTransport):
    """An accepted socket speaking TLS: the socket transport with OpenSSL's record
    layer (an ``ssl.SSLObject`` over memory buffers) between the frames and the wire.

    Writes are those of the plain socket: this turn's frames leave in one
    ``send()`` at its end, sealed into records on the way, and only what the
    kernel does not take is queued. The queue holds frames in the clear behind at
    most one sealed chunk at its head (``_partial``): records are numbered as they
    are sealed, so a sealed chunk goes out whole and in order, and what follows it
    is sealed only when its turn comes, which keeps ``truncate`` (dropping the
    frames behind the head for a close frame) as it is on plain sockets.

    The handshake is done by the first read, so it runs inside the connection's
    handshake deadline; before it is done nothing is written (a peer that never
    finishes it gets no answer). Once it is done a write needs no read (TLS 1.3
    has no renegotiation); should the record layer refuse one anyway (a TLS 1.2
    renegotiation under way, a session that failed), the socket is dropped, as is
    a peer whose records do not decrypt."""

    __slots__ = ("_incoming", "_outgoing", "_ready", "_tls")

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        spawn: Spawn,
        max_buffer: int,
        coalescer: Coalescer | None = None,
    ) -> None:
        super().__init__(sock, spawn=spawn, max_buffer=max_buffer, coalescer=coalescer)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        #: The handshake is complete: frames may be sealed.
        self._ready = False

    def _seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """``data`` as TLS records; b"" (and the socket aborted) if it cannot be."""
        if not self._ready:
            return b""  # an answer before the handshake is done: nobody to read it
        try:
            self._tls.write(data)
        except ssl.SSLError:  # a renegotiation, or the session has failed
            self.abort()
            return b""
        return self._outgoing.read()

    def _send(self, data: bytes | bytearray) -> None:
        sealed = self._seal(data)
        if sealed:
            super()._send(sealed)
            if self._queue:  # the rest of a sealed chunk: it goes out whole
                self._partial = True

    def _head(self, queue: deque[memoryview]) -> memoryview:
        """Seal the frames at the head of the queue (up to ``BATCH_BYTES``) into one chunk."""
        parts = [queue.popleft()]
        size = len(parts[0])
        while queue and size < BATCH_BYTES:
            parts.append(queue.popleft())
            size += len(parts[-1])
        sealed = memoryview(self._seal(b"".join(parts)))
        if self._closed:  # it could not be sealed: the writer stops at the socket's end
            return sealed
        queue.appendleft(sealed)
        self._pending += len(sealed) - size
        self._partial = True
        return sealed

    def _emit(self) -> None:
        """Put on the wire what the record layer wrote by itself (handshake messages,
        alerts, a key update's answer), in its place: after the sealed head, before
        the frames still in the clear. (A queue's head is sealed whenever this can
        run: the writer task seals it before it waits.)"""
        data = self._outgoing.read()
        if not data or self._closed:
            return
        queue = self._queue
        if not queue:
            super()._send(data)
            if self._queue:
                self._partial = True
        else:
            queue[0] = memoryview(bytes(queue[0]) + data)
            self._pending += len(data)

    async def _read_records(self) -> bool:
        """Feed the record layer the next bytes from the socket; False at its end."""
        self._emit()
        data = await super().receive()
        if not data:
            return False
        self._incoming.write(data)
        return True

    async def receive(self) -> bytes:
        """The next bytes in the clear; ``b""`` at the end of the stream, once aborted,
        or when the peer's bytes are not TLS (or not a handshake this context accepts)."""
        tls = self._tls
        read = False
        try:
            while not self._ready:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    if not await self._read_records():
                        return b""
                else:
                    self._ready = True
                    self._emit()
            while True:
                try:
                    data = tls.read(_RECV_BYTES)
                except ssl.SSLWantReadError:
                    if not await self._read_records():
                        return b""
                    read = True
                else:
                    self._emit()
                    if not read:  # a record read before: one turn per record, as per chunk
                        await anyio.lowlevel.checkpoint()
                    return data
        except ssl.SSLError:  # not TLS, a bad record, or the peer's close_notify
            self._emit()  # the alert that says why, if the socket takes it
            return b""

    def abort(self) -> None:
        """As on a plain socket: this turn's frames are offered to the kernel first."""
        batch = self._batch
        if batch is not None and not self._closed:
            self._batch = None
            sealed = self._seal(batch)
            if not self._closed:
                self._batch = sealed or None
        super().abort()

    async def drain_and_close(self, timeout: float) -> None:
        """Let queued bytes go out (within ``timeout``), then say close_notify and close."""
        self.flush()
        await self._wait_flushed(timeout)
        if self._ready and not self._closed and not self._queue:
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            SocketTransport._send(self, self._outgoing.read())  # the bytes as they are
        await super().drain_and_close(0)
