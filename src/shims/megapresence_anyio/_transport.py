"""Byte transports with a synchronous write path.

The write path decides the speed of fan-out (DESIGN.md, measured on 2 cores:
awaiting a send per connection reaches half of ``websockets.broadcast()``,
writing in place reaches 1.5x of it). So :meth:`SocketTransport.write` is
synchronous: it sends with a non-blocking ``send()`` on the socket, no task
and no await, and queues only what the kernel did not take; a writer task is
spawned for that connection only while something is queued, so order per
connection is kept and an idle connection costs no task. The queue is bounded
by the rule of every writer (:class:`SendBuffer`, the ASGI connection's too):
when what waits behind the chunk in flight would pass ``max_buffer`` bytes,
``write`` reports overflow and the caller closes the slow consumer (1013)
without slowing anyone else. The chunk in flight is not counted, and one frame
alone behind it always fits, so a single frame larger than the bound still
reaches a peer that reads; and a close frame is written with ``force``, past
the bound, so a slow consumer is told why it is dropped.

One ``send()`` of a ~100-byte frame costs as much as writing ten in one, so a
server's sockets write through a :class:`Coalescer`: the frames written to one
socket in one turn of the event loop are kept in a list and leave together in
one ``send()`` at the end of that turn (one ``call_soon`` per turn on asyncio,
one ``run_sync_soon`` on trio, for all the sockets written). A burst of
broadcasts costs one system call per socket, not one per message; a single
broadcast costs what it did. A turn's batch is sent at once when it reaches
``BATCH_BYTES``, so the chunk in flight is at most that plus one frame, and a
slow consumer costs at most that plus ``max_buffer``.

:class:`StreamTransport` gives the same interface over any anyio byte stream,
for frameworks that accept connections themselves and for a ``wss://`` hub
link; its writes always go through the queue (it cannot write in place).

Every writer counts the bytes that left its queue (``drained``: the session's
keepalive closes a peer whose queue holds bytes that do not move) and names the
buffers its queue keeps alive (``held``: the rest of a frame is a view that
keeps the whole frame alive; the send-queue metric counts those).

The asyncio flush is a loop callback, outside any task; it runs in a context
that tells sniffio the loop, so what it starts (a writer task) or ends (a
socket) works whoever started the loop: ``anyio.run``, ``asyncio.run``, uvicorn.

An :class:`Outlet` is the sending half alone: what a session writes through and
what a connection's fault boundary ends. An ASGI connection (``_asgi.py``),
whose server reads the socket, is an outlet and not a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar, final

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

__all__ = [
    "Coalescer",
    "Outlet",
    "SendBuffer",
    "SocketTransport",
    "Spawn",
    "StreamTransport",
    "Transport",
    "Watcher",
    "readable_wait",
]

#: Starts a background task; the server passes its task group's ``start_soon``.
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]

logger = logging.getLogger("megapresence")

_RECV_BYTES = 65536
#: A turn's batch for one socket is sent at once when it reaches this size.
BATCH_BYTES = 65536


_D_contra = TypeVar("_D_contra", contravariant=True)


class Outlet(Protocol[_D_contra]):
    """The sending half of a connection: it writes frames (``bytes``) to a socket, or
    messages (an ASGI connection)."""

    def write(self, data: _D_contra, *, force: bool = False) -> bool: ...

    def abort(self) -> None: ...

    def truncate(self) -> None: ...

    async def drain_and_close(self, timeout: float) -> None: ...

    @property
    def queued(self) -> int: ...

    @property
    def drained(self) -> int: ...

    def held(self) -> Iterator[object]: ...


class Watcher(Protocol):
    """Whoever reads a socket without a task (``_reader.py``): told before it closes."""

    def closing(self) -> None: ...


class Transport(Outlet[bytes], Protocol):
    """What a WebSocket session needs from the bytes underneath it."""

    async def receive(self) -> bytes: ...


def readable_wait() -> tuple[Callable[[Any], Awaitable[None]], type[Exception]]:
    """The running backend's own wait for a readable socket, and what it raises once the
    socket is closed meanwhile: trio's itself (anyio's adds a frame and a translation of
    its errors to every idle socket), anyio's on asyncio."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.wait_readable, trio.ClosedResourceError
    return anyio.wait_readable, anyio.ClosedResourceError


class SendBuffer:
    """The send-buffer rule of every writer (a socket, a TLS socket, a stream, an ASGI
    connection), and the counts that the keepalive's stall rule and the send-queue
    metric read. What a peer that breaks it gets (1013) is the session's to say
    (``SessionBase``)."""

    __slots__ = ("_closed", "_drained", "_max_buffer", "_pending")

    def __init__(self, max_buffer: int) -> None:
        self._max_buffer = max_buffer
        #: Bytes accepted by ``write`` but not yet taken by the kernel or the stream.
        self._pending = 0
        #: Bytes that left the queue for the kernel or the stream, ever: a send queue
        #: whose count stands still while it holds bytes is stalled.
        self._drained = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """Aborted or closed: nothing more is written or read."""
        return self._closed

    @property
    def queued(self) -> int:
        """Bytes accepted by ``write`` and not yet written (the send queue's depth)."""
        return self._pending

    @property
    def drained(self) -> int:
        """Bytes that have left the send queue so far."""
        return self._drained

    def _accepts(self, size: int, head: int) -> bool:
        """Whether ``size`` more bytes may wait behind ``head``, the chunk in flight (or
        next to go, whole): what waits behind it stays within ``max_buffer``, except
        that one message alone behind it always fits, so a single message larger than
        the bound (a big snapshot) still reaches a peer that reads. A peer costs at most
        the head, plus the bound or one message."""
        behind = self._pending - head
        return not behind or behind + size <= self._max_buffer


class _QueuedWriter(SendBuffer):
    """What both transports share beside the rule: waiting for the writer task."""

    __slots__ = ("_flushed", "_spawn", "_writing")

    def __init__(self, spawn: Spawn, max_buffer: int) -> None:
        super().__init__(max_buffer)
        self._spawn = spawn
        self._writing = False
        self._flushed: anyio.Event | None = None

    def _flush_done(self) -> None:
        self._writing = False
        if self._flushed is not None:
            self._flushed.set()

    async def _wait_flushed(self, timeout: float) -> None:
        """Let the writer task finish what is queued, for at most ``timeout`` seconds."""
        if self._writing and not self._closed:
            self._flushed = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._flushed.wait()


@final
class Coalescer:
    """Sends, once at the end of a turn of the event loop, what each socket was
    written in that turn: one ``send()`` per socket per turn. One per server,
    made inside its event loop.

    On asyncio the flush is one ``call_soon`` per turn. On trio it is a system
    task parked until the first write of a turn reschedules it: it runs once the
    tasks ready now have run, with no system call (``run_sync_soon`` would wake
    the loop through its wakeup socket, about 10 µs per turn); before that task
    starts and once it is gone, ``run_sync_soon`` serves."""

    __slots__ = ("_parked", "_reschedule", "_task", "dirty", "schedule")

    def __init__(self) -> None:
        #: The sockets with a batch, in the order they were first written this turn.
        self.dirty: list[SocketTransport] = []
        #: Runs :meth:`_flush` once the tasks and callbacks ready now have run.
        self.schedule: Callable[[], object]
        self._task: Any = None  # trio's Task, while it is parked or flushing
        self._parked = False
        if sniffio.current_async_library() == "trio":
            import trio

            token = trio.lowlevel.current_trio_token()
            self._reschedule = trio.lowlevel.reschedule

            def schedule() -> None:
                if self._parked:
                    self._parked = False
                    self._reschedule(self._task)
                else:
                    token.run_sync_soon(self._flush)

            self.schedule = schedule
            trio.lowlevel.spawn_system_task(self._flusher, name="megapresence write coalescer")
        else:
            loop = asyncio.get_running_loop()
            # A callback runs outside any task, where sniffio (and so anyio) cannot tell
            # the loop unless it is told: the flush may start a writer task or close a
            # socket, which must work whoever started the loop (asyncio.run, uvicorn),
            # not only under anyio.run, which tells it for every callback.
            context = contextvars.Context()
            context.run(sniffio.current_async_library_cvar.set, "asyncio")
            self.schedule = lambda: loop.call_soon(self._flush, context=context)

    async def _flusher(self) -> None:
        import trio

        def cancelled(_: object) -> trio.lowlevel.Abort:
            self._parked = False
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        self._task = trio.lowlevel.current_task()
        while True:
            self._flush()
            self._parked = True
            await trio.lowlevel.wait_task_rescheduled(cancelled)

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for transport in dirty:  # SocketTransport.flush, inlined: this is the hot loop
            batch = transport._batch
            if batch is not None:
                transport._batch = None
                if not transport._closed:
                    try:
                        transport._send(batch)
                    except Exception as exc:  # a bug, not the network: that socket alone
                        logger.error("a coalesced write failed: %r", exc, exc_info=exc)
                        transport.abort()


class SocketTransport(_QueuedWriter):
    """A connected non-blocking socket, owned by this object. ``TlsTransport``
    (``_tls.py``) is the same writer with a record layer between it and the socket."""

    __slots__ = ("_batch", "_coalescer", "_partial", "_queue", "_sock", "watcher")

    def __init__(
        self,
        sock: socket.socket,
        *,
        spawn: Spawn,
        max_buffer: int,
        coalescer: Coalescer | None = None,
    ) -> None:
        super().__init__(spawn, max_buffer)
        sock.setblocking(False)
        self._sock = sock
        #: Only while the kernel does not take everything: an idle socket holds no deque.
        self._queue: deque[memoryview] | None = None
        self._pending = 0
        #: The head of the queue is the rest of a chunk the kernel took in part.
        self._partial = False
        #: Without one, every write is sent at once (a hub link, an ops socket).
        self._coalescer = coalescer
        #: What was written in this turn, sent at its end: the first frame as it is,
        #: then a bytearray of them all; None while there is none.
        self._batch: bytes | bytearray | None = None
        #: Who reads this socket from the loop's reader callback (``_reader.py``), told
        #: before the socket is closed; None while a task reads it.
        self.watcher: Watcher | None = None

    def write(self, data: bytes, *, force: bool = False) -> bool:
        """Send ``data`` at the end of this turn (or now, without a coalescer) as far
        as the kernel takes it; queue the rest.

        Returns False when ``data`` would not fit behind the chunk in flight
        (the peer is not reading); it is then not queued, unless ``force``. A
        chunk the kernel took in part is always queued whole, so the stream
        stays well-formed.
        """
        if self._closed:
            return True
        queue = self._queue
        if not queue:
            batch = self._batch
            if batch is None:
                coalescer = self._coalescer
                if coalescer is None:
                    self._send(data)
                    return True
                self._batch = data  # the hot path: one frame per socket per turn
                dirty = coalescer.dirty
                if not dirty:
                    coalescer.schedule()
                dirty.append(self)
                return True
            if not isinstance(batch, bytearray):
                batch = self._batch = bytearray(batch)
            batch += data
            if len(batch) >= BATCH_BYTES:
                self.flush()
            return True
        if not (force or self._accepts(len(data), len(queue[0]))):
            return False
        self._enqueue(memoryview(data))
        return True

    def flush(self) -> None:
        """Send this turn's batch now (the coalescer calls this at the end of the turn)."""
        batch = self._batch
        if batch is not None:
            self._batch = None
            if not self._closed:
                self._send(batch)

    def _send(self, data: bytes | bytearray) -> None:
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()  # the reader will see the end of the stream
            return
        if sent < len(data):  # the rest is the chunk in flight, whatever its size
            self._partial = sent > 0
            self._enqueue(memoryview(data)[sent:])

    def _enqueue(self, data: memoryview) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(data)
        self._pending += len(data)
        if not self._writing:
            self._writing = True
            self._spawn(self._flush)

    async def _flush(self) -> None:
        sock, queue = self._sock, self._queue  # None if aborted before this task ran
        try:
            while queue and not self._closed:
                chunk = queue[0] if self._partial else self._head(queue)
                try:
                    sent = sock.send(chunk)
                except BlockingIOError:
                    sent = -1
                if sent < 0:  # waited for outside the handler, which would keep the exception
                    await anyio.wait_writable(sock)
                    continue
                self._pending -= sent
                self._drained += sent
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

    def _head(self, queue: deque[memoryview]) -> memoryview:
        """The head of the queue as it goes on the wire, once the one before it is sent."""
        return queue[0]

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_now(self) -> bytes | None:
        """One ``recv``, without waiting: the bytes, ``b""`` at the end of the stream or
        once aborted, None if the kernel has none yet."""
        if self._closed:
            return b""
        try:
            return self._sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at the end of the stream or once aborted.

        Always a checkpoint: bytes the kernel had already are returned after one
        yield to the loop, so a peer that writes as fast as the link allows gets
        one turn per chunk like everyone else, not the loop to itself."""
        sock = self._sock
        waited = False
        while not self._closed:
            try:
                data = sock.recv(_RECV_BYTES)
            except BlockingIOError:
                pass  # wait outside the handler: an idle socket keeps no exception alive
            except OSError:
                return b""
            else:
                if not waited:
                    await anyio.lowlevel.checkpoint()
                return data
            try:
                await anyio.wait_readable(sock)
            except anyio.ClosedResourceError:
                return b""
            waited = True
        return b""

    def held(self) -> Iterator[object]:
        """The buffers the queue keeps alive: the rest of a frame or of a turn's batch
        is a view of it, which keeps all of it alive, not only what is left to send."""
        for view in self._queue or ():
            yield view.obj

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
        """Close now, dropping anything queued; wakes a task blocked in ``receive``.
        This turn's batch is offered to the kernel first, once, as a write in place
        would have been (an HTTP answer written right before an abort)."""
        if self._closed:
            return
        self._closed = True
        batch = self._batch
        if batch is not None:  # then nothing is queued: the batch is next on the wire
            self._batch = None
            with contextlib.suppress(OSError):
                self._sock.send(batch)
        self._queue = None
        self._pending = 0
        if self.watcher is not None:
            self.watcher.closing()
        anyio.notify_closing(self._sock)
        self._sock.close()

    async def drain_and_close(self, timeout: float) -> None:
        """Let queued bytes go out (within ``timeout``), then close."""
        self.flush()
        await self._wait_flushed(timeout)
        if not self._closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
        self.abort()


@final
class StreamTransport(_QueuedWriter):
    """Any anyio byte stream; every write is queued for one writer task, which sends
    what has queued meanwhile together (up to ``BATCH_BYTES`` and a frame per send:
    one TLS record for a burst, not one per message)."""

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
        queue = self._queue
        try:
            while queue and not self._closed:
                chunk = queue.popleft()
                if queue and len(chunk) < BATCH_BYTES:  # what queued meanwhile: one send
                    parts, size = [chunk], len(chunk)
                    while queue and size < BATCH_BYTES:
                        parts.append(queue.popleft())
                        size += len(parts[-1])
                    chunk = b"".join(parts)
                self._in_flight = len(chunk)
                await self._stream.send(chunk)
                self._pending -= len(chunk)
                self._drained += len(chunk)
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

    def held(self) -> Iterator[object]:
        return iter(self._queue)

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
