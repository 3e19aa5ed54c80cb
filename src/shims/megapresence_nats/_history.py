"""``JetStreamHistory``: the channel streams of a NATS cluster, kept in JetStream.

The core's stream store (``megapresence_core._stream_store``): this shim
appends and reads, the core judges. The layout:

- one stream per app, ``MEGAPRESENCE_<app>``, with one subject per channel,
  ``megapresence.<app>.history.<base64url of the channel>``;
  ``max_msgs_per_subject`` is ``HistoryConfig.size`` + 1 and ``max_age`` its
  ``ttl``, so JetStream bounds the history as one process would;
- every entry carries its channel offset and epoch in headers (``Mp-Offset``,
  ``Mp-Epoch``) and the stream sequence of the channel's previous entry
  (``Mp-Prev``), which a read walks back;
- an append reads the subject's last entry and publishes the next offset with
  ``Nats-Expected-Last-Subject-Sequence`` set to that entry's sequence: two
  processes never take one offset (the loser reads again). A subject with no
  entry (never used, purged, expired, the stream recreated, NATS restarted
  without its store) starts a new random epoch: the epoch changes exactly when
  the history is lost. A read of such a subject writes an entry at offset 0
  (no publication), so the position it tells is the one the next append continues;
- every process delivers from one ordered push consumer on the whole stream,
  so a channel's publications come in offset order on every process, its own
  included. A read's answer is held until that consumer has passed the
  read's last entry, and behind the answers of the channel's reads started
  before it; the channel's live entries are held while it has reads out: what a
  recovery returns and what is delivered live neither overlap nor leave a gap.

JetStream not enabled on the server: logged once, and the core numbers each
process's own streams (``ABSENT``). NATS down: ``DOWN`` (publishes are
``unavailable``); back: the stream is made sure of, a new consumer starts after
the stream's last sequence and ``READY`` follows (the core resets its streams:
publications may have been missed meanwhile).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

import anyio
import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from megapresence_core import Event
from megapresence_core.config import HistoryConfig, redact_url
from megapresence_core.events import (
    StreamPosition,
    StreamPublished,
    StreamReadDone,
    StreamStoreChanged,
    StreamStoreState,
)

from ._cluster import ClusterUnavailableError, connect

__all__ = ["JetStreamHistory"]

logger = logging.getLogger("megapresence.nats")

OFFSET: Final = "Mp-Offset"
EPOCH: Final = "Mp-Epoch"
PREV: Final = "Mp-Prev"
EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's "wrong last sequence": another process appended first.
WRONG_LAST_SEQUENCE: Final = 10071
#: JetStream's "stream name already in use with a different configuration".
STREAM_CONFIG_DIFFERS: Final = 10058
#: Appends of one publication tried at most, each after another process's.
MAX_TRIES: Final = 20

_Top = tuple[int, int, str]  # stream sequence, offset, epoch


@final
class _Read:
    """A read out: the stream sequence of the last entry it saw, and its answer once done."""

    __slots__ = ("answer", "last_seq")

    def __init__(self) -> None:
        self.last_seq = 0
        self.answer: StreamReadDone | None = None


def _new_epoch() -> str:
    return uuid.uuid4().hex[:16]


@final
class JetStreamHistory:
    """One NATS connection keeping one app's channel streams in JetStream."""

    def __init__(
        self,
        url: str,
        *,
        app: str,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 1.0,
        name: str | None = None,
        storage: StorageType = StorageType.FILE,
    ) -> None:
        self._url = url
        self._app = app
        self._stream = f"MEGAPRESENCE_{app}"
        self._prefix = f"megapresence.{app}.history."
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._name = name
        self._storage = storage
        self._config: HistoryConfig | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._live: Subscription | None = None
        self._dispatch: Callable[[Event], None] | None = None
        self._state = StreamStoreState.ABSENT
        self._told_absent = False
        #: Appends and reads, in the order the core asked for them.
        self._queue: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._wake = anyio.Event()
        #: channel -> its appends not made yet, in order (channels go side by side).
        self._appends: dict[str, deque[bytes]] = {}
        #: The last stream sequence the live consumer delivered.
        self._consumed = 0
        #: channel -> its reads not answered yet, in the order they started (a later read
        #: sees no less of the stream, so their answers go in that order).
        self._reads: dict[str, deque[_Read]] = {}
        #: channel -> live entries held while it has reads out.
        self._held: dict[str, deque[tuple[int, Event]]] = {}
        #: Errors met since start (failed appends and reads): a metric.
        self.errors = 0

    @property
    def url(self) -> str:
        return redact_url(self._url)

    @property
    def healthy(self) -> bool:
        """Not out of reach (``/readyz``): JetStream numbers the streams, or the server
        has none and each instance numbers its own."""
        return self._state is not StreamStoreState.DOWN

    @property
    def queued(self) -> int:
        return len(self._queue) + sum(len(pending) for pending in self._appends.values())

    def _subject(self, channel: str) -> str:
        token = base64.urlsafe_b64encode(channel.encode("utf-8")).rstrip(b"=").decode("ascii")
        return self._prefix + token

    def _channel(self, subject: str) -> str:
        token = subject[len(self._prefix) :]
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")

    def _tell(self, state: StreamStoreState) -> None:
        self._state = state
        assert self._dispatch is not None
        self._dispatch(StreamStoreChanged(state=state, now=anyio.current_time()))

    # ------------------------------------------------------------ lifetime

    async def start(self, dispatch: Callable[[Event], None], history: HistoryConfig) -> None:
        """Connect and set up the stream, or raise ``ClusterUnavailableError`` in time."""
        self._dispatch, self._config = dispatch, history
        try:
            self._nc = await connect(self)
            await self._set_up()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if self._nc is not None:
                await self.aclose()
            raise ClusterUnavailableError(f"cannot reach NATS at {self.url}: {exc!r}") from None

    async def _set_up(self) -> None:
        """Make sure of the stream and start the live consumer after its last entry; say
        ``READY``, or ``ABSENT`` if the server has no JetStream (logged once)."""
        assert self._nc is not None
        assert self._config is not None
        js = self._nc.jetstream(timeout=self._connect_timeout)
        config = StreamConfig(
            name=self._stream,
            subjects=[self._prefix + ">"],
            max_msgs_per_subject=self._config.size + 1,
            max_age=self._config.ttl,
            storage=self._storage,
            allow_direct=True,
        )
        try:
            try:
                info = await js.add_stream(config)
            except nats.js.errors.APIError as exc:
                if exc.err_code != STREAM_CONFIG_DIFFERS:
                    raise
                info = await js.update_stream(config)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            if not self._told_absent:
                self._told_absent = True
                logger.warning(
                    "NATS at %s has no JetStream (%r): each instance numbers its own channel "
                    "streams, so a client recovers on the instance it left only",
                    self.url,
                    exc,
                )
            if self._state is not StreamStoreState.ABSENT:
                self._tell(StreamStoreState.ABSENT)
            return
        if self._live is not None:
            live, self._live = self._live, None
            # The old consumer may be gone with its server.
            with anyio.move_on_after(1), contextlib.suppress(Exception):
                await live.unsubscribe()
        self._js = js
        self._consumed = info.state.last_seq
        self._live = await js.subscribe(
            self._prefix + ">",
            stream=self._stream,
            cb=self._on_live,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=info.state.last_seq + 1,
            ),
        )
        logger.info("channel history in JetStream stream %s at %s", self._stream, self.url)
        self._tell(StreamStoreState.READY)

    async def run(self) -> None:
        """A channel's appends in order, channels and reads side by side, until cancelled."""
        async with anyio.create_task_group() as task_group:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._queue:
                    op, args = self._queue.popleft()
                    if op == "append":
                        channel, data = args
                        pending = self._appends.get(channel)
                        if pending is None:
                            pending = self._appends[channel] = deque()
                            task_group.start_soon(self._appender, channel, pending)
                        pending.append(data)
                    else:
                        read = _Read()
                        self._reads.setdefault(args[1], deque()).append(read)
                        task_group.start_soon(self._read, read, *args)

    async def aclose(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with anyio.move_on_after(self._connect_timeout):
                await nc.close()

    # ------------------------------------------------------- from the core

    def append(self, channel: str, data: str) -> None:
        self._queue.append(("append", (channel, data.encode("utf-8"))))
        self._wake.set()

    def read(self, request: int, channel: str, since: StreamPosition | None, limit: int) -> None:
        self._queue.append(("read", (request, channel, since, limit)))
        self._wake.set()

    # -------------------------------------------------------------- writing

    async def _last(self, subject: str) -> _Top | None:
        assert self._js is not None
        try:
            msg = await self._js.get_last_msg(self._stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        return msg.seq or 0, int(headers[OFFSET]), headers[EPOCH]

    async def _put(self, subject: str, after: int, entry: _Top, data: bytes) -> _Top | None:
        """``entry`` (its offset and epoch; its sequence comes back) right after the
        subject's entry at sequence ``after`` (0: none), or None if another process
        appended first."""
        assert self._js is not None
        _seq, offset, epoch = entry
        headers = {OFFSET: str(offset), EPOCH: epoch, PREV: str(after), EXPECTED: str(after)}
        try:
            ack = await self._js.publish(subject, data, headers=headers, stream=self._stream)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return None
            raise
        return ack.seq, offset, epoch

    async def _appender(self, channel: str, pending: deque[bytes]) -> None:
        """``channel``'s appends, one after the other (a process's publications keep their
        order); gone when none is left."""
        try:
            while pending:
                await self._append(channel, pending[0])
                pending.popleft()
        finally:
            del self._appends[channel]

    async def _append(self, channel: str, data: bytes) -> None:
        subject = self._subject(channel)
        try:
            for _ in range(MAX_TRIES):
                top = await self._last(subject)
                seq, offset, epoch = top if top is not None else (0, 0, _new_epoch())
                if await self._put(subject, seq, (0, offset + 1, epoch), data) is not None:
                    return
            raise RuntimeError(f"{MAX_TRIES} processes appended first")
        except Exception as exc:
            # NATS down, JetStream gone: logged, counted.
            self.errors += 1
            logger.warning(
                "channel history append to %r failed, publication lost: %r", channel, exc
            )

    # -------------------------------------------------------------- reading

    async def _read(
        self, read: _Read, request: int, channel: str, since: StreamPosition | None, limit: int
    ) -> None:
        subject, last_seq = self._subject(channel), 0
        try:
            top = await self._last(subject)
            while top is None:  # no entry: an epoch now, so the position told is kept
                top = await self._put(subject, 0, (0, 0, _new_epoch()), b"")
                top = top if top is not None else await self._last(subject)
            last_seq, offset, epoch = top
            entries = (
                await self._entries(subject, top, since.offset)
                if since is not None and since.epoch == epoch and 0 < offset - since.offset <= limit
                else ()
            )
            position: StreamPosition | None = StreamPosition(offset=offset, epoch=epoch)
        except Exception as exc:
            # Answered from the process: not recovered.
            self.errors += 1
            logger.warning("channel history read of %r failed: %r", channel, exc)
            position, entries, last_seq = None, (), 0
        read.last_seq = last_seq
        read.answer = StreamReadDone(
            request=request, position=position, entries=entries, now=anyio.current_time()
        )
        self._release()

    async def _entries(self, subject: str, top: _Top, since: int) -> tuple[tuple[int, bytes], ...]:
        """The entries after offset ``since`` still kept, oldest first (walked back from
        ``top``; a trimmed or expired one ends the walk: the core sees the gap)."""
        assert self._js is not None
        seq, offset, epoch = top
        found: list[tuple[int, bytes]] = []
        msg = await self._js.get_msg(self._stream, seq, direct=True)
        while True:
            headers = msg.headers or {}
            if headers.get(EPOCH) != epoch or int(headers[OFFSET]) != offset:
                break
            found.append((offset, msg.data or b""))
            prev = int(headers.get(PREV, "0"))
            offset -= 1
            if offset <= since or prev == 0:
                break
            try:
                msg = await self._js.get_msg(self._stream, prev, direct=True)
            except nats.js.errors.NotFoundError:
                break
        found.reverse()
        return tuple(found)

    # --------------------------------------------------------------- live

    async def _on_live(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self._consumed:
            return  # delivered already (a consumer replaced after a reconnect)
        self._consumed = seq
        headers = msg.headers or {}
        offset = int(headers.get(OFFSET, "0"))
        if offset > 0 and headers.get(EPOCH):
            channel = self._channel(msg.subject)
            event = StreamPublished(
                channel=channel,
                offset=offset,
                epoch=headers[EPOCH],
                data=msg.data,
                now=anyio.current_time(),
            )
            if channel in self._reads:
                self._held.setdefault(channel, deque()).append((seq, event))
            else:
                self._send(event)
        self._release()

    def _send(self, event: Event) -> None:
        assert self._dispatch is not None
        self._dispatch(event)

    def _release(self) -> None:
        """Each channel's answers in the order its reads started, each once the consumer has
        passed the read's last entry and after the channel's live entries up to it; a
        channel's live entries wait until none of its reads is out."""
        for channel in list(self._reads):
            reads, held = self._reads[channel], self._held.get(channel, deque())
            while reads and reads[0].answer is not None and reads[0].last_seq <= self._consumed:
                read = reads.popleft()
                while held and held[0][0] <= read.last_seq:
                    self._send(held.popleft()[1])
                assert read.answer is not None
                self._send(read.answer)
            if not reads:
                del self._reads[channel]
                self._held.pop(channel, None)
                while held:
                    self._send(held.popleft()[1])

    # --------------------------------------------------------- nats-py hooks

    async def _on_error(self, error: Any) -> None:
        logger.debug("NATS (history) %s: %r", self.url, error)

    async def _on_disconnected(self) -> None:
        if self._nc is None or self._state is not StreamStoreState.READY:
            return
        # Nothing waiting will be answered in order now: the core answers it (DOWN).
        self._reads.clear()
        self._held.clear()
        self._tell(StreamStoreState.DOWN)

    async def _on_reconnected(self) -> None:
        try:
            await self._set_up()
        except Exception as exc:
            # It stays DOWN until the next reconnect.
            self.errors += 1
            logger.warning("channel history not set up again at %s: %r", self.url, exc)
