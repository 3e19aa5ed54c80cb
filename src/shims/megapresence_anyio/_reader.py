"""Reading an open socket from a reader callback (asyncio's, or on trio an epoll of the
server's own): an idle socket holds no task.

A connection's task, waiting in its read loop, is most of what an idle socket
costs: the task, its coroutine frames (the host's, the session's, the
transport's, anyio's wait) and the future of the wait, about 2 KB of a joined
socket's 8; and every wait registers the socket with the selector and removes
it again. So once a plain socket of the server's own listener is open (after
``on_open``), the host (``_host.py``) lets its task end and reads it from
``loop.add_reader`` instead: a :class:`CallbackReader` (one small object) and the
selector's registration are all an idle socket keeps, for as long as it is idle.

The callback reads as the task did, through the session's synchronous step
(:meth:`~._session.WebSocketSession.step`), so both read alike: one ``recv`` per
callback (one chunk per socket per turn of the loop), at most ``YIELD_EVERY``
frames per step and the rest after the others had their turn (``call_soon``,
the socket unregistered meanwhile, so a flood is not read faster than it is
handled). An ``on_message`` that returns an awaitable stops the reading: it is
awaited in a task of its own, then the reading goes on where it stopped, so
messages are handled in order and a slow hook slows only its own peer.

The fault boundary is the task's: whatever a step raises goes to the guard
(``_guard.py``), never to the loop. When the session ends (the close
handshake, the end of the stream, a fault) the socket is unregistered and the
host's close path (``Admission.finish``, the core and ``on_close``) runs in a
short task. A transport that is aborted (keepalive, a write that failed, the
server's shutdown) tells its reader first (:meth:`CallbackReader.closing`), so
the socket is unregistered before it is closed.

trio has no reader callbacks; on Linux the host makes them (:class:`EpollLoop`):
the idle sockets are registered with an epoll of the server's own, whose
descriptor one task waits for with trio's ``wait_readable``, calling the
callbacks of the sockets that are ready, one ``recv`` each per turn. There the
hooks run in that task's context, not in their connection's. Elsewhere (macOS,
Windows) a connection keeps its task on trio.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol, final

import sniffio

from ._guard import Guard
from ._session import AGAIN, OVER, READ, OnText, WebSocketSession
from ._transport import SocketTransport

__all__ = ["CallbackReader", "EpollLoop", "ReaderHost", "ReaderLoop"]

logger = logging.getLogger("megapresence")


class ReaderLoop(Protocol):
    """What a :class:`CallbackReader` needs of its loop: asyncio's, or an :class:`EpollLoop`."""

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None: ...

    def remove_reader(self, fd: int) -> bool: ...

    def call_soon(self, callback: Callable[[bytes | None], object], data: bytes | None) -> Any: ...


class ReaderHost(Protocol):
    """What a :class:`CallbackReader` needs of its connection host (``_host.py``, which
    imports this module): the loop, the set of readers, and where a hook's task and a
    close go."""

    @property
    def loop(self) -> ReaderLoop: ...

    @property
    def readers(self) -> set[CallbackReader]: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None: ...

    def finish(self, guard: Guard[Any]) -> None: ...


@final
class EpollLoop:
    """Reader callbacks on trio (Linux): the sockets are registered with an epoll of the
    server's own, and one task (:meth:`run`) waits for its descriptor with trio's
    ``wait_readable`` and calls the callbacks of the sockets that are ready."""

    __slots__ = ("_callbacks", "_epoll", "_token")

    def __init__(self) -> None:
        import trio

        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._token = trio.lowlevel.current_trio_token()

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        if self._callbacks.pop(fd, None) is None:
            return False
        self._epoll.unregister(fd)
        return True

    def call_soon(self, callback: Callable[[bytes | None], object], data: bytes | None) -> None:
        self._token.run_sync_soon(_guarded, callback, data)

    async def run(self) -> None:
        """Call the callbacks of the ready sockets, one turn of trio's loop per round."""
        import trio

        epoll, callbacks = self._epoll, self._callbacks
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    callback = callbacks.get(fd)
                    if callback is None:  # removed by a callback of this round
                        continue
                    _guarded(callback)
        finally:
            epoll.close()


def _guarded(callback: Callable[..., object], *args: Any) -> None:
    """A reader's callback on trio: what it raises is a bug, that socket's alone (trio
    would end the whole run for what escapes a ``run_sync_soon`` callback)."""
    try:
        callback(*args)
    except Exception as exc:
        logger.error("a reader callback failed: %r", exc, exc_info=exc)


#: :attr:`CallbackReader._state` flags.
_REGISTERED: Final = 1  #: the socket is registered with the loop's selector
_RUNNING: Final = 2  #: a step, a hook or a step scheduled next: it will register again
_DONE: Final = 4  #: the session has ended: nothing more is read


@final
class CallbackReader:
    """One open socket read from the loop's reader callback (see the module docstring)."""

    __slots__ = ("_guard", "_host", "_on_text", "_session", "_state")

    def __init__(
        self,
        host: ReaderHost,
        guard: Guard[SocketTransport],
        session: WebSocketSession,
        on_text: OnText,
    ) -> None:
        self._host = host
        self._guard = guard
        self._session = session
        self._on_text = on_text
        self._state = 0

    def start(self) -> None:
        """Take over from the connection's task (called in it, which then ends): handle
        what the handshake left in wsproto's buffer, then wait for the socket.

        The callbacks and the hooks' tasks run in a copy of this task's context: what
        ``on_open`` set there is seen by ``on_message`` as before, and sniffio (so
        anyio) knows the loop outside any task."""
        cvar = sniffio.current_async_library_cvar
        if isinstance(self._host.loop, asyncio.AbstractEventLoop) and cvar.get(None) != "asyncio":
            cvar.set("asyncio")  # anyio.run has set it; asyncio.run, uvicorn not
        self._host.readers.add(self)
        self._guard.transport.watcher = self
        self._step(None)

    # ------------------------------------------------------------------ the loop's side

    def _readable(self) -> None:
        """The selector says the socket has bytes, or its end: one ``recv``."""
        data = self._guard.transport.read_now()
        if data is not None:
            self._step(data)

    def _step(self, data: bytes | None) -> None:
        """Give wsproto ``data`` (None: nothing new) and handle what is parsed, as far as
        one step goes; then wait for the socket, step again later, await a hook or end.
        Nothing raised here reaches the loop: a fault goes to the guard."""
        state = self._state
        if state & _DONE:
            return
        self._state = state | _RUNNING
        session, guard = self._session, self._guard
        try:
            if data is not None and not session.received(data):
                outcome: Any = OVER
            else:
                outcome = session.step(self._on_text)
            if not isinstance(outcome, str):  # on_message's awaitable: reading waits for it
                self._unregister()
                self._host.spawn(self._await(outcome))
            elif outcome is READ:
                if guard.transport.closed:  # aborted meanwhile: the end of the stream
                    session.received(b"")
                    self._end(ended=True)
                else:
                    self._register()
            elif outcome is AGAIN:  # a flood of frames: the others go first
                self._unregister()
                self._host.loop.call_soon(self._step, None)
            else:
                self._end(ended=True)
        except Exception as exc:
            guard.fault(exc)
            self._end()

    async def _await(self, pending: Awaitable[None]) -> None:
        """A task for ``on_message``'s awaitable; reading goes on once it is done. (Its
        cancellation, at the server's stop, is the host's to finish.)"""
        try:
            await pending
        except Exception as exc:
            self._guard.fault(exc)
            self._end()
        else:
            self._step(None)

    def _register(self) -> None:
        state = self._state
        if not state & _REGISTERED:
            transport = self._guard.transport
            self._host.loop.add_reader(transport.fileno(), self._readable)
        self._state = _REGISTERED

    def _unregister(self) -> None:
        state = self._state
        if state & _REGISTERED:
            self._host.loop.remove_reader(self._guard.transport.fileno())
            self._state = state & ~_REGISTERED

    def _end(self, *, ended: bool = False) -> None:
        """The session is over: no more reading, and the host's close path."""
        if self._state & _DONE:
            return
        self._unregister()
        self._state = _DONE
        self._host.readers.discard(self)
        if ended:
            self._guard.ended()
        self._host.finish(self._guard)

    # --------------------------------------------------------------- the others' side

    def closing(self) -> None:
        """The transport is being aborted: unregister the socket before it is closed;
        an idle reader then sees the end of the stream (a busy one will, at its read)."""
        state = self._state
        if state & _DONE:
            return
        self._unregister()
        if not state & _RUNNING:
            self._state |= _RUNNING
            self._host.loop.call_soon(self._step, b"")

    def stop(self) -> None:
        """The server stops: end now, whatever is under way."""
        self._end()
