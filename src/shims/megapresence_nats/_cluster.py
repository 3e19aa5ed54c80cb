"""``NatsCluster``: moves the core's cluster messages over NATS, and nothing more.

What to publish, what a message means, when to heartbeat, snapshot or sweep:
all of that is the core's (its cluster link). This shim
publishes what it is told, subscribes to the subjects it is given, and turns
connection changes into events: every reconnect is reported as
``ClusterConnected``, which the core treats as a possible gap.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, final

import anyio
import nats
import sniffio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from megapresence_core import Event, LocalUsageError
from megapresence_core.config import redact_url
from megapresence_core.events import ClusterConnected, ClusterLost, ClusterMessageReceived

__all__ = ["ClusterUnavailableError", "NatsCluster"]

logger = logging.getLogger("megapresence.nats")


class ClusterUnavailableError(ConnectionError):
    """NATS could not be reached when the server started."""


class _Connecting(Protocol):
    """What a NATS shim gives ``connect``: its settings and nats-py's callbacks."""

    _url: str
    _name: str | None
    _connect_timeout: float
    _reconnect_wait: float

    async def _on_error(self, error: Any) -> None: ...
    async def _on_disconnected(self) -> None: ...
    async def _on_reconnected(self) -> None: ...


async def connect(owner: _Connecting) -> NatsClient:
    """A nats-py client for ``owner`` that reconnects for ever, or ``TimeoutError``,
    ``OSError`` or ``nats.errors.Error`` within its connect timeout."""
    with anyio.fail_after(owner._connect_timeout):
        return await nats.connect(
            owner._url,
            name=owner._name,
            connect_timeout=max(1, int(owner._connect_timeout)),
            reconnect_time_wait=owner._reconnect_wait,
            max_reconnect_attempts=-1,
            error_cb=owner._on_error,
            disconnected_cb=owner._on_disconnected,
            reconnected_cb=owner._on_reconnected,
        )


@final
class NatsCluster:
    """One NATS connection carrying one app's cluster subjects."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 1.0,
        name: str | None = None,
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._name = name
        self._nc: NatsClient | None = None
        self._dispatch: Callable[[Event], None] | None = None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wake = anyio.Event()
        self._failing = False
        self._closing = False
        self._last_error: BaseException | None = None
        #: Errors met since start (nats-py's error callbacks, failed publishes): a metric.
        self.errors = 0

    @property
    def queued(self) -> int:
        """Messages waiting for the publisher task: a metric."""
        return len(self._queue)

    @property
    def url(self) -> str:
        """The server URL, password redacted: safe to log."""
        return redact_url(self._url)

    async def start(self, dispatch: Callable[[Event], None], subjects: tuple[str, ...]) -> None:
        """Connect and subscribe, or raise ``ClusterUnavailableError`` within the timeout."""
        if sniffio.current_async_library() != "asyncio":
            raise LocalUsageError(
                "megapresence_nats needs the asyncio backend (nats-py is "
                "asyncio only); run the server with anyio's asyncio backend"
            )
        self._dispatch = dispatch
        try:
            self._nc = await connect(self)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            cause = self._last_error or exc
            raise ClusterUnavailableError(f"cannot reach NATS at {self.url}: {cause!r}") from None
        for subject in subjects:
            await self._nc.subscribe(subject, cb=self._on_message)
        await self._nc.flush()
        logger.info("cluster connected to %s (%s)", self.url, ", ".join(subjects))
        dispatch(ClusterConnected(now=anyio.current_time()))

    async def run(self) -> None:
        """The publisher task: sends queued messages in order, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._queue:
                subject, data = self._queue.popleft()
                await self._send(subject, data)

    async def _send(self, subject: str, data: bytes) -> None:
        assert self._nc is not None
        try:
            await self._nc.publish(subject, data)
        except Exception as exc:
            self.errors += 1
            if not self._failing:
                self._failing = True
                logger.warning("cluster publish failing (local delivery continues): %r", exc)
        else:
            if self._failing:
                self._failing = False
                logger.info("cluster publish recovered")

    def publish(self, subject: str, data: str) -> None:
        """Queue one message for the publisher task (called from the core's actions)."""
        self._queue.append((subject, data.encode("utf-8")))
        self._wake.set()

    async def aclose(self) -> None:
        """Send what is queued (the core's goodbye among it), then close the connection."""
        nc = self._nc
        if nc is None:
            return
        with anyio.move_on_after(self._connect_timeout):
            while self._queue:
                subject, data = self._queue.popleft()
                await self._send(subject, data)
            if nc.is_connected:
                await nc.flush()
        self._closing = True  # the disconnect that close() causes is not an outage
        await nc.close()
        self._nc = None

    # --------------------------------------------------------- nats-py hooks

    def _now(self) -> float:
        return anyio.current_time()

    async def _on_message(self, msg: Msg) -> None:
        assert self._dispatch is not None
        self._dispatch(ClusterMessageReceived(data=msg.data, now=self._now()))

    async def _on_error(self, error: Any) -> None:
        self.errors += 1
        if self._last_error is None or type(error) is not type(self._last_error):
            logger.warning("NATS %s: %r", self.url, error)
        self._last_error = error

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        logger.warning("cluster disconnected from %s; nats-py keeps reconnecting", self.url)
        if self._dispatch is not None:
            self._dispatch(ClusterLost(now=self._now()))

    async def _on_reconnected(self) -> None:
        logger.info("cluster reconnected to %s", self.url)
        self._last_error = None
        if self._dispatch is not None:
            self._dispatch(ClusterConnected(now=self._now()))
