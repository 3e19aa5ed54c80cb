"""One connection host: a socket's life from accept to close, the same for every server.

A server (``PresenceServer``, ``HubServer``) tells its host how a connection
opens (``open``, its handshake: read the request, ask the core, answer the
upgrade), what to do once it is open (``opened``: ``on_open``), how it runs
(``run``: its read loop) and what its close means to the core (``closed``). The
host does the rest the same way for every connection, whether its own listener
accepted the socket (plain or TLS), an anyio stream was handed over
(:meth:`ConnectionHost.handle_stream`) or an ASGI server holds it
(:meth:`ConnectionHost.serve`, ``_asgi.py``): the admission's caps from accept
to close (``_admission.py``), one task for every handshake deadline, the
connection's task started as cheaply as the backend allows, and the fault
boundary (``_guard.py``) around all of it.

The backend is looked up once, at :meth:`ConnectionHost.start`: its clock and
how to start a task. anyio's ``start_soon`` gives each task a handle, an event
and a cancel scope (under connection churn on trio, making that cancel scope was
a fifth of the server's time): more than a connection should cost. On asyncio a
connection's task is a plain ``asyncio.Task``, tracked here and cancelled at
:meth:`~ConnectionHost.stop`; on trio it is a task of a plain trio nursery
inside the server's task group.

An idle socket should cost no more than it must. A plain socket of the listener
is read, once open, from a reader callback (``_reader.py``: asyncio's, or on trio
under Linux an epoll of the server's own), and its task ends; elsewhere (TLS, a
stream, an ASGI connection, the hub's bridges, trio off Linux) the task reads it,
and for a plain socket the session's read loop is inlined here with the backend's
own wait, so one frame of the shim's waits while the socket is idle.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Generic, TypeVar, final

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from megapresence_core import LocalUsageError

from ._admission import Admission
from ._background import Background
from ._config import SocketLimits
from ._guard import Guard
from ._listener import accept_forever, open_listener
from ._ops import OpsEndpoints, OpsListener
from ._reader import CallbackReader, EpollLoop, ReaderLoop
from ._session import AGAIN, OVER, ReadLoop
from ._stats import Stats
from ._tls import TlsTransport
from ._transport import Coalescer, SocketTransport, StreamTransport, Transport, readable_wait

__all__ = ["ConnectionHost", "Opening"]

C = TypeVar("C")

#: Opens a connection whose request is known: reads it, checks it, upgrades it; or
#: None once it has been answered (an HTTP page, a refusal).
Opening = Callable[[Any], Awaitable[C | None]]


@final
class ConnectionHost(Generic[C]):
    """Every connection of one server, from accept to close (see the module docstring)."""

    __slots__ = (
        "_background",
        "_callbacks",
        "_closed",
        "_coalesce",
        "_coalescer",
        "_finishing",
        "_limits",
        "_nursery",
        "_open",
        "_opened",
        "_run",
        "_spawn_writer",
        "_stats",
        "_tasks",
        "admission",
        "clock",
        "loop",
        "readers",
    )

    def __init__(
        self,
        *,
        open: Opening[C],
        run: Callable[[C], Awaitable[None]],
        closed: Callable[[Guard[Any]], Awaitable[None]],
        opened: Callable[[C], Awaitable[None]] | None = None,
        limits: SocketLimits,
        stats: Stats,
        background: Background,
        coalesce: bool = False,
        callbacks: bool = True,
    ) -> None:
        """``open(guard)``: a socket's handshake, the upgraded connection or None once
        answered; ``opened(conn)``: upgraded, nothing read yet (``on_open``);
        ``run(conn)``: its read loop, returned and not awaited by the server, so an idle
        socket keeps no frame of the server's (a session's ``ReadLoop``: on asyncio, a
        plain socket of the listener is then read from a loop callback, unless
        ``callbacks`` is False); ``closed(guard)``: over, or never opened (out of the
        core, through the close hook)."""
        self._open = open
        self._opened = opened
        self._run = run
        self._closed = closed
        self._limits = limits
        self._stats = stats
        self._background = background
        #: One bound method for every transport, rather than one each.
        self._spawn_writer = background.spawn
        self.admission = Admission(limits, stats)
        #: Whether plain sockets send each turn's writes in one ``send()`` (``Coalescer``).
        self._coalesce = coalesce
        self._coalescer: Coalescer | None = None
        self._callbacks = callbacks
        #: On asyncio, the connections' tasks; None on trio.
        self._tasks: set[asyncio.Task[Any]] | None = None
        #: On trio, the nursery of the connections' tasks, while the server runs.
        self._nursery: Any = None
        #: On asyncio, the connections read from the loop's reader callback, with no
        #: task (``_reader.py``), and the tasks that close them.
        self.readers: set[CallbackReader] = set()
        self._finishing: set[asyncio.Task[Any]] = set()
        #: What reads the idle sockets, from :meth:`start`: asyncio's event loop, or on
        #: trio (Linux) an epoll of the server's own.
        self.loop: ReaderLoop
        #: The event loop's clock, found once (``anyio.current_time`` looks the backend
        #: up on every call).
        self.clock: Callable[[], float] = anyio.current_time

    async def start(self, group: anyio.abc.TaskGroup) -> None:
        """Find the backend once, and start the one task of every handshake deadline."""
        if sniffio.current_async_library() == "asyncio":
            self._tasks = set()
            loop = self.loop = asyncio.get_running_loop()
            self.clock = loop.time
            proactor = getattr(asyncio, "ProactorEventLoop", None)  # Windows: no add_reader
            if proactor is not None and isinstance(loop, proactor):
                self._callbacks = False
        else:
            import trio

            self.clock = trio.current_time
            self._nursery = await group.start(_trio_nursery)
            if self._callbacks and hasattr(select, "epoll"):
                epoll = EpollLoop()
                self.loop = epoll
                self._background.service("socket reader", epoll.run)
            else:
                self._callbacks = False
        self.admission.clock = self.clock
        if self._coalesce:
            self._coalescer = Coalescer()
        self._background.service("handshake timer", self.admission.expire_handshakes)

    async def stop(self) -> None:
        """Cancel every connection's task and wait for them (on trio the server's task
        group does, with the nursery); end every connection read from a callback, and
        wait for them to close."""
        tasks = self._tasks
        if tasks:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for reader in list(self.readers):
            reader.stop()
        if tasks:  # a hook's task that a reader started meanwhile
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        self._nursery = None

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A connection's task (a reader's hook), cancelled at :meth:`stop`."""
        tasks = self._tasks
        if tasks is None:
            self._nursery.start_soon(_awaited, work, name=_TASK_NAME)
            return
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def finish(self, guard: Guard[Any]) -> None:
        """Close a connection read from a callback, in a short task of its own (which
        :meth:`stop` waits for and does not cancel, on asyncio; on trio the server's task
        group waits for it)."""
        if self._tasks is None:
            self._nursery.start_soon(self._finish, guard, name=_TASK_NAME)
            return
        task = asyncio.get_running_loop().create_task(self._finish(guard))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, guard: Guard[Any]) -> None:
        closed = self._closed
        await self.admission.finish(guard, lambda: closed(guard))

    # ------------------------------------------------------------- arrivals

    def listen(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        backlog: int = 4096,
    ) -> int:
        """Accept connections on ``host:port`` in the background (TLS with
        ``ssl_context``); return the bound port. ``PresenceServer.listen`` says why the
        ``backlog`` is long."""
        sock = open_listener(host, port, reuse_port=reuse_port, backlog=backlog)
        on_accept = self.accept if ssl_context is None else partial(self.accept_tls, ssl_context)
        self._background.service(
            "listener", accept_forever, sock, on_accept, self._stats.accept_failures
        )
        return int(sock.getsockname()[1])

    def listen_ops(self, ops: OpsEndpoints, host: str, port: int) -> int:
        """Answer ``/metrics``, ``/healthz`` and ``/readyz`` (nothing else) on a port of
        their own, in plain HTTP; return the bound port."""
        sock = open_listener(host, port)
        on_accept = OpsListener(ops, self._limits, self._background.spawn).on_accept
        failures = self._stats.accept_failures
        self._background.service("metrics listener", accept_forever, sock, on_accept, failures)
        return int(sock.getsockname()[1])

    def accept(self, sock: socket.socket, remote: tuple[str, int] | None) -> None:
        """A socket of the server's own plain listener."""
        transport = SocketTransport(
            sock,
            spawn=self._spawn_writer,
            max_buffer=self._limits.max_send_buffer,
            coalescer=self._coalescer,
        )
        self._spawn(transport, remote)

    def accept_tls(
        self, context: ssl.SSLContext, sock: socket.socket, remote: tuple[str, int] | None
    ) -> None:
        """A socket of the server's own TLS listener."""
        transport = TlsTransport(
            sock,
            context,
            spawn=self._spawn_writer,
            max_buffer=self._limits.max_send_buffer,
            coalescer=self._coalescer,
        )
        self._spawn(transport, remote)

    async def handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        """A connection accepted elsewhere, as an anyio stream (written through a queue)."""
        transport = StreamTransport(
            stream, spawn=self._spawn_writer, max_buffer=self._limits.max_send_buffer
        )
        guard: Guard[Transport] = Guard(transport, None)
        await self._serve(guard, self.admission.begin(guard), self._open)

    async def serve(self, guard: Guard[Any], opening: Opening[C]) -> None:
        """A connection whose request arrived elsewhere (an ASGI server's), opened by
        ``opening``."""
        await self._serve(guard, self.admission.begin(guard), opening)

    def _spawn(self, transport: Transport, remote: tuple[str, int] | None) -> None:
        guard: Guard[Transport] = Guard(transport, remote)
        refused = self.admission.begin(guard)
        tasks = self._tasks
        if tasks is None:
            nursery = self._nursery
            if nursery is None:
                raise LocalUsageError("a server takes connections inside 'async with server:'")
            # Named: else trio makes the same name anew for every connection.
            nursery.start_soon(self._serve, guard, refused, self._open, name=_TASK_NAME)
            return
        # Nothing but cancellation leaves _serve: its boundary catches the rest.
        self.spawn(self._serve(guard, refused, self._open))

    async def _serve(self, guard: Guard[Any], refused: int | None, opening: Opening[C]) -> None:
        """One connection, from its request to its close, behind its fault boundary:
        nothing it raises reaches the server (see ``_guard.py`` for what it becomes).
        While the socket is open this is the only frame above the session's, so an
        idle connection costs little memory; on asyncio a plain socket of the listener
        is handed to a :class:`CallbackReader` once open, and this task ends."""
        handed = False
        try:
            if refused is not None:
                guard.respond(refused)  # over a handshake cap (logged by the admission)
            else:
                conn = await opening(guard)
                if conn is not None:
                    if self._opened is not None:
                        await self._opened(conn)
                    reading = self._run(conn)
                    sock = guard.transport
                    if not isinstance(reading, ReadLoop):
                        await reading
                    elif type(sock) is not SocketTransport:
                        await reading.read()  # awaited as it is: no wrapper while idle
                    elif self._callbacks:
                        handed = True  # the reader ends it from now on
                        CallbackReader(self, guard, reading.session, reading.on_text).start()
                        return
                    else:
                        # The session's read loop, inlined, with the backend's own wait
                        # (trio's): while idle this frame waits, not three more of ours.
                        session, on_text = reading.session, reading.on_text
                        del reading
                        wait, gone = readable_wait()
                        while True:
                            outcome = session.step(on_text)
                            if not isinstance(outcome, str):
                                await outcome
                                continue
                            if outcome is AGAIN:
                                await anyio.lowlevel.checkpoint()
                                continue
                            if outcome is OVER:
                                break
                            data = sock.read_now()
                            if data is not None:  # there already: one turn per chunk
                                await anyio.lowlevel.checkpoint()
                            while data is None:
                                try:
                                    await wait(sock)
                                except gone:  # aborted while waiting
                                    data = b""
                                else:
                                    data = sock.read_now()
                            if not session.received(data):
                                break
                    guard.ended()
        except Exception as exc:
            guard.fault(exc)
        finally:
            if not handed:
                closed = self._closed
                await self.admission.finish(guard, lambda: closed(guard))


#: The name of every connection's task on trio.
_TASK_NAME = "megapresence connection"


async def _awaited(work: Coroutine[Any, Any, None]) -> None:
    await work


async def _trio_nursery(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
    """A plain trio nursery for the connections' tasks, open while the server runs."""
    import trio

    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()
