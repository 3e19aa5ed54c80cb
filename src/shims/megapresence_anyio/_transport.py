"""Byte transports with a synchronous write path.

The write path decides the speed of fan-out (DESIGN.md, measured on 2 cores:
awaiting a send per connection reaches half of ``websockets.broadcast()``,
writing in place reaches 1.5x of it). So :meth:`SocketTransport.write` is
synchronous: it tries a non-blocking ``send()`` on the socket right away and
queues only what the kernel did not take; a writer task is spawned for that
connection only while something is queued, so order per connection is kept
and an idle connection costs no task. The queue is bounded: when what waits
behind the frame in flight would pass ``max_buffer`` bytes, ``write`` reports
overflow and the caller closes the slow consumer (1013) without slowing anyone
else. The frame in flight is not counted, so a single frame larger than the
bound still reaches a peer that reads (frames are bounded by the message
limits, so a peer costs at most one frame plus ``max_buffer``); and a close
frame is written with ``force``, past the bound, so a slow consumer is told
why it is dropped.

:class:`StreamTransport` gives the same interface over any anyio byte stream,
for frameworks that accept connections themselves and for TLS; its writes
always go through the queue (it cannot write in place).

An :class:`Outlet` is the sending half alone: what a session writes through and
what a connection's fault boundary ends. An ASGI connection (``_asgi.py``),
whose server reads the socket, is an outlet and not a transport.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, final

import anyio
import anyio.abc

__all__ = ["Outlet", "SocketTransport", "Spawn", "StreamTransport", "Transport"]

#: Starts a background task; the server passes its task group's ``start_soon``.
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]

_RECV_BYTES = 65536


class Outlet(Protocol):
    """The sending half of a connection."""

    def write(self, data: bytes, *, force: bool = False) -> bool: ...

    def abort(self) -> None: ...

    def truncate(self) -> None: ...

    async def drain_and_close(self, timeout: float) -> None: ...

    @property
    def queued(self) -> int: ...


class Transport(Outlet, Protocol):
    """What a WebSocket session needs from the bytes underneath it."""

    async def receive(self) -> bytes: ...


class _QueuedWriter:
    """What both transports share: the bound on queued bytes and waiting for the flush."""

    __slots__ = ("_closed", "_flushed", "_max_buffer", "_pending", "_spawn", "_writing")

    def __init__(self, spawn: Spawn, max_buffer: int) -> None:
        self._spawn = spawn
        self._max_buffer = max_buffer
        #: Bytes accepted by ``write`` but not yet taken by the kernel or the stream.
        self._pending = 0
        self._writing = False
        self._closed = False
        self._flushed: anyio.Event | None = None

    @property
    def queued(self) -> int:
        """Bytes accepted by ``write`` and not yet written (the send queue's depth)."""
        return self._pending

    def _flush_done(self) -> None:
        self._writing = False
        if self._flushed is not None:
            self._flushed.set()

    def _accepts(self, size: int, in_flight: int) -> bool:
        """Whether ``size`` more bytes fit behind the frame in flight."""
        return self._pending - in_flight + size <= self._max_buffer

    async def _wait_flushed(self, timeout: float) -> None:
        """Let the writer task finish what is queued, for at most ``timeout`` seconds."""
        if self._writing and not self._closed:
            self._flushed = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._flushed.wait()


@final
class SocketTransport(_QueuedWriter):
    """A connected non-blocking socket, owned by this object."""

    __slots__ = ("_partial", "_queue", "_sock")

    def __init__(self, sock: socket.socket, *, spawn: Spawn, max_buffer: int) -> None:
        super().__init__(spawn, max_buffer)
        sock.setblocking(False)
        self._sock = sock
        #: Only while the kernel does not take everything: an idle socket holds no deque.
        self._queue: deque[memoryview] | None = None
        self._pending = 0
        #: The head of the queue is the rest of a frame the kernel took in part.
        self._partial = False

    def write(self, data: bytes, *, force: bool = False) -> bool:
        """Send ``data`` now as far as the kernel takes it; queue the rest.

        Returns False when ``data`` would not fit behind the frame in flight
        (the peer is not reading); it is then not queued, unless ``force``. A
        frame the kernel took in part is always queued whole, so the stream
        stays well-formed.
        """
        if self._closed:
            return True
        queue = self._queue
        if not queue:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()  # the reader will see the end of the stream
                return True
            if sent < len(data):  # the rest is the frame in flight, whatever its size
                self._partial = sent > 0
                self._enqueue(memoryview(data)[sent:])
            return True
        if not (force or self._accepts(len(data), len(queue[0]))):
            return False
        self._enqueue(memoryview(data))
        return True

    def _enqueue(self, data: memoryview) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(data)
        self._pending += len(data)
        if not self._writing:
            self._writing = True
            self._spawn(self._flush)

    async def _flush(self) -> None:
        sock, queue = self._sock, self._queue
        assert queue is not None
        try:
            while queue and not self._closed:
                chunk = queue[0]
                try:
                    sent = sock.send(chunk)
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                    continue
                self._pending -= sent
                if sent == len(chunk):
                    queue.popleft()
                    self._partial = False
                else:
                    queue[0] = chunk[sent:]
                    self._partial = True
        except (OSError, anyio.ClosedResourceError):
            self.abort()
        finally:
            if not queue:
                self._queue = None
            self._flush_done()

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at the end of the stream or once aborted."""
        sock = self._sock
        while not self._closed:
            try:
                return sock.recv(_RECV_BYTES)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(sock)
                except anyio.ClosedResourceError:
                    return b""
            except OSError:
                return b""
        return b""

    def truncate(self) -> None:
        """Drop every queued frame but the one the kernel has begun, so a close frame
        can follow it at once and the stream stays well-formed."""
        queue = self._queue
        if not queue:
            return
        keep = queue[0] if self._partial else None
        queue.clear()
        if keep is not None:
            queue.append(keep)
        self._pending = len(keep) if keep is not None else 0

    def abort(self) -> None:
        """Close now, dropping anything queued; wakes a task blocked in ``receive``."""
        if self._closed:
            return
        self._closed = True
        self._queue = None
        self._pending = 0
        anyio.notify_closing(self._sock)
        self._sock.close()

    async def drain_and_close(self, timeout: float) -> None:
        """Let queued bytes go out (within ``timeout``), then close."""
        await self._wait_flushed(timeout)
        if not self._closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
        self.abort()


@final
class StreamTransport(_QueuedWriter):
    """Any anyio byte stream; every write is queued for one writer task."""

    __slots__ = ("_in_flight", "_queue", "_stream")

    def __init__(self, stream: anyio.abc.ByteStream, *, spawn: Spawn, max_buffer: int) -> None:
        super().__init__(spawn, max_buffer)
        self._stream = stream
        self._queue: deque[bytes] = deque()
        #: The size of the chunk being sent, 0 between chunks.
        self._in_flight = 0

    def write(self, data: bytes, *, force: bool = False) -> bool:
        if self._closed:
            return True
        queue = self._queue
        if self._writing and not force:
            in_flight = self._in_flight or (len(queue[0]) if queue else 0)
            if not self._accepts(len(data), in_flight):
                return False
        queue.append(data)
        self._pending += len(data)
        if not self._writing:
            self._writing = True
            self._spawn(self._flush)
        return True

    async def _flush(self) -> None:
        try:
            while self._queue and not self._closed:
                chunk = self._queue.popleft()
                self._in_flight = len(chunk)
                await self._stream.send(chunk)
                self._pending -= len(chunk)
                self._in_flight = 0
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.abort()
        finally:
            self._flush_done()

    async def receive(self) -> bytes:
        if self._closed:
            return b""
        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return b""

    def truncate(self) -> None:
        """Drop every queued chunk; chunks go out whole, so no frame is cut."""
        self._queue.clear()
        self._pending = self._in_flight

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._pending = 0
        self._spawn(self._aclose)

    async def _aclose(self) -> None:
        """Close the stream in the background. A peer that is gone makes closing fail
        (a TLS close_notify to a reset socket): that is its end, not a fault."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._stream.aclose()

    async def drain_and_close(self, timeout: float) -> None:
        await self._wait_flushed(timeout)
        self.abort()
