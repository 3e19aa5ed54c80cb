"""``RedisStreams``: channel streams kept in Redis Streams, numbered by one atomic script.

Layout, per app and channel (one Redis Cluster slot per channel, by hash tag):

- ``megapresence:stream:{<app>:<channel>}``: a STREAM whose entry ids are the
  offsets (``<offset>-0``), each with ``t`` (Redis's clock, ms) and ``d`` (the
  publication, as the core gave it);
- ``megapresence:stream:{<app>:<channel>}:meta``: a HASH with ``e`` (the epoch),
  ``s`` (the top offset) and ``r`` (the ``run_id`` of the Redis process that
  started the epoch).

The append script gives a publication the channel's next offset, adds it with
``MAXLEN`` = size, drops what is older than the TTL, and PUBLISHes it with its
offset and epoch on the app's pub/sub channel, in one atomic call: history and
live delivery cannot disagree, and as Redis runs scripts one at a time, every
instance receives a channel's publications in offset order on its one pub/sub
connection, whoever published them.

The epoch changes exactly when history may have been lost: the meta key is
missing (expired after ``meta_ttl`` idle, flushed, evicted, a Redis restarted
without persistence) or was written by another Redis process (``run_id``: a
restart that reloaded an older snapshot, or a replica promoted, may have lost
the last publications while keeping the counter, so the old epoch would number
new publications at offsets a client already holds). Then the stream starts
again, empty, under a new random epoch. A Redis restarted with a complete copy
(AOF ``always``) is therefore also a new epoch: never a wrong recovery, sometimes
an unneeded refusal. Entries that expired or were trimmed leave the epoch and the
top as they are (the core then says ``expired`` or ``too_many``, not ``epoch``).

A read is a script too: it reads the position (starting an epoch if there is
none, so a position given to a subscriber stays valid), drops expired entries,
returns the position and the entries after ``since`` (when it is of that epoch
and at most ``limit`` behind), and PUBLISHes the read's request number as a
*fence* on this instance's own answer channel, read on the same pub/sub
connection as the publications. The reader hands the answer on where the fence
is (waiting for the script's reply if the fence came first): after every
publication of the channel up to its offset and before any later one, as the
hub's RECOVERED comes: what a recovery returns and what is delivered live neither
overlap nor leave a hole. The entries themselves never go through pub/sub, whose
buffers Redis caps (a storm of recoveries would have the reader disconnected).
The core judges the answer.

The reader says ``READY`` once subscribed and ``DOWN`` when its connection fails
(publications may have been missed meanwhile), then subscribes on a new one:
redis-py is told never to retry, so it never reconnects a pub/sub connection
behind our back and no gap goes unseen. A write that fails answers its reads
with no position and takes the link down too.

Works on Redis >= 6 and Valkey (XADD with an explicit id and MAXLEN, XTRIM
MINID, INFO inside scripts, cjson, effects replication).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

import anyio
import redis.asyncio as aioredis
import sniffio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from megapresence_core import Event, LocalUsageError
from megapresence_core.config import HistoryConfig, redact_url
from megapresence_core.events import (
    StreamPosition,
    StreamPublished,
    StreamReadDone,
    StreamStoreChanged,
    StreamStoreState,
)

from ._roster import RosterUnavailableError, _describe, app_name

__all__ = ["RedisStreams"]

logger = logging.getLogger("megapresence.redis")

# KEYS: stream, meta. ARGV[1..3]: a new epoch, ttl (ms), meta ttl (ms). Returns the
# epoch, the top offset and Redis's clock (ms), the history lost or expired dropped.
_HEAD: Final = """
local function head()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local meta = redis.call('HMGET', KEYS[2], 'e', 's', 'r')
  local epoch, top = meta[1], tonumber(meta[2])
  if not epoch or meta[3] ~= run then
    epoch, top = ARGV[1], 0
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[2], 'e', epoch, 's', 0, 'r', run)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  local horizon = now - tonumber(ARGV[2])
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  while #oldest > 0 and tonumber(oldest[1][2][2]) <= horizon do
    local batch = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 100)
    local kept = nil
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) > horizon then kept = entry[1] break end
    end
    if kept then
      redis.call('XTRIM', KEYS[1], 'MINID', kept)
      break
    end
    local last = tonumber(string.match(batch[#batch][1], '^(%d+)'))
    redis.call('XTRIM', KEYS[1], 'MINID', last + 1)
    oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  end
  return epoch, top, now
end
"""

# ARGV[4..7]: size, pub/sub channel, channel, data.
# Published as "<offset>:<epoch>:<len(channel)>:<channel><data>".
_APPEND: Final = (
    _HEAD
    + """
local epoch, top, now = head()
top = top + 1
redis.call('HSET', KEYS[2], 's', top)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], top, 't', now, 'd', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[5], top .. ':' .. epoch .. ':' .. #ARGV[6] .. ':' .. ARGV[6] .. ARGV[7])
return top
"""
)

# ARGV[4..9]: size, answer channel, request, limit, since offset ('' for none), since
# epoch. Returns the position and, when the since is of this epoch and at most limit
# behind, the entries after it that are kept, as one string "<offset>:<len>:<data>..."
# (one bulk reply parses far faster than an array per entry); publishes the request as a
# fence.
_READ: Final = (
    _HEAD
    + """
local epoch, top = head()
local entries = {}
if ARGV[8] ~= '' and ARGV[9] == epoch then
  local since = tonumber(ARGV[8])
  if since < top and top - since <= tonumber(ARGV[7]) then
    for _, entry in ipairs(redis.call('XRANGE', KEYS[1], since + 1, top)) do
      local data = entry[2][4]
      entries[#entries + 1] = string.match(entry[1], '^(%d+)') .. ':' .. #data .. ':' .. data
    end
  end
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {top, epoch, table.concat(entries)}
"""
)

#: Metadata outlives the history by far: a position stays answerable (``expired``
#: rather than ``epoch``) for a day after the channel's last publication.
DEFAULT_META_TTL: Final = 86_400.0


@final
class RedisStreams:
    """One instance's stream store: the channel streams of an app in Redis.

    The server drives it (``PresenceServer(stream_store=...)``): it performs the
    core's ``StreamAppend`` and ``StreamRead`` and dispatches ``StreamStoreChanged``,
    ``StreamPublished`` and ``StreamReadDone``, in Redis's order.
    """

    def __init__(
        self, url: str, *, app: str, meta_ttl: float = DEFAULT_META_TTL, timeout: float = 5.0
    ) -> None:
        self._url = url
        self._app = app_name(app, "RedisStreams")
        self._meta_ttl = meta_ttl
        self._timeout = timeout
        self._publications = f"megapresence:streams:{{{app}}}"
        #: Ours alone, new per object: an earlier incarnation's answers never reach us.
        self._answers = f"{self._publications}:answers:{secrets.token_hex(8)}"
        self._redis: aioredis.Redis | None = None
        self._dispatch: Callable[[Event], None] | None = None
        self._head: list[Any] = []
        self._queue: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._wake = anyio.Event()
        #: The reader is subscribed and nothing failed since.
        self._up = False
        self._restart: anyio.CancelScope | None = None
        #: The reads' answers by request, from the writer, until their fence comes; None when
        #: the link went down meanwhile (the core answered the read here: its fence, if it
        #: comes, is passed over). ``_replied`` is set at every batch.
        self._replies: dict[int, tuple[StreamPosition, tuple[tuple[int, bytes], ...]] | None] = {}
        self._replied = anyio.Event()
        #: Counts the link's downs: a batch that saw one answers its reads None.
        self._downs = 0
        #: Failed writes, reader restarts and malformed messages since start: a metric.
        self.errors = 0

    @property
    def url(self) -> str:
        return redact_url(self._url)

    @property
    def healthy(self) -> bool:
        """Reading, and no write failed since (``/readyz`` reads it)."""
        return self._up

    @property
    def queued(self) -> int:
        """Appends and reads waiting for the writer task: a metric."""
        return len(self._queue)

    def _keys(self, channel: str) -> list[str]:
        base = f"megapresence:stream:{{{self._app}:{channel}}}"
        return [base, base + ":meta"]

    async def start(self, dispatch: Callable[[Event], None], history: HistoryConfig) -> None:
        """Connect and check the server (or raise ``RosterUnavailableError`` with the cause);
        the streams keep ``history.size`` publications of the last ``history.ttl`` seconds."""
        if sniffio.current_async_library() != "asyncio":
            raise LocalUsageError(
                "megapresence_redis needs the asyncio backend (redis-py's "
                "asyncio client); run the server with anyio's asyncio backend"
            )
        ttl_ms = max(1, int(history.ttl * 1000))
        # ARGV[2..4] of every script (ARGV[1], a new epoch, is drawn per call).
        self._head = [ttl_ms, max(ttl_ms, int(self._meta_ttl * 1000)), history.size]
        # No retries: a script whose reply was lost may have run, and a second run would
        # publish the same message again under the next offset.
        client = aioredis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._scripts = {
            "append": client.register_script(_APPEND),
            "read": client.register_script(_READ),
        }
        try:
            with anyio.fail_after(self._timeout):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise RosterUnavailableError(
                f"cannot reach Redis at {self.url}: {_describe(exc)}"
            ) from None
        self._redis, self._dispatch = client, dispatch
        logger.info("streams connected to %s", self.url)
        # Configured, not yet reading: a publish is refused, not numbered here alone.
        self._state(StreamStoreState.DOWN)

    async def run(self) -> None:
        """The reader and the writer, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write)
            tg.start_soon(self._subscribe)

    # ------------------------------------------------------------- writes

    def append(self, channel: str, data: str) -> None:
        """Number ``data`` as ``channel``'s next publication, keep it and send it to every
        instance (this one included), as ``StreamPublished``."""
        self._enqueue("append", (channel, data))

    def read(self, request: int, channel: str, since: StreamPosition | None, limit: int) -> None:
        """Ask for ``channel``'s position and the entries after ``since`` (when of that
        epoch and at most ``limit`` behind): ``StreamReadDone`` comes in order."""
        offset, epoch = ("", "") if since is None else (str(since.offset), since.epoch)
        self._enqueue("read", (channel, request, limit, offset, epoch))

    def _enqueue(self, op: str, args: tuple[Any, ...]) -> None:
        self._queue.append((op, args))
        self._wake.set()

    def _argv(self, op: str, args: tuple[Any, ...]) -> list[Any]:
        head = [secrets.token_hex(8), *self._head]
        if op == "append":
            return [*head, self._publications, *args]
        return [*head, self._answers, *args[1:]]

    async def _flush(self) -> None:
        """Run what is queued, in order, pipelined. A failure answers its reads with no
        position and takes the link down (its publications may be lost, or kept)."""
        assert self._redis is not None
        assert self._dispatch is not None
        scripts = self._scripts
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            downs = self._downs
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for op, args in batch:
                        keys = self._keys(args[0])
                        await scripts[op](keys=keys, args=self._argv(op, args), client=pipe)
                    results = await pipe.execute()
                for (op, args), result in zip(batch, results, strict=True):
                    if op == "read":
                        top, epoch, entries = result
                        position = StreamPosition(offset=top, epoch=epoch.decode())
                        fresh = downs == self._downs
                        self._replies[args[1]] = (position, _split(entries)) if fresh else None
            except (RedisError, OSError) as exc:
                self.errors += 1
                logger.warning(
                    "streams: writes failing at %s: %s (%d publications may be lost)",
                    self.url,
                    _describe(exc),
                    sum(op == "append" for op, _ in batch),
                )
                self._down()
                now = anyio.current_time()
                for op, args in batch:
                    if op == "read":
                        self._replies[args[1]] = None
                        self._dispatch(StreamReadDone(request=args[1], position=None, now=now))
            finally:
                replied, self._replied = self._replied, anyio.Event()
                replied.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush()

    # -------------------------------------------------------------- reads

    def _state(self, state: StreamStoreState) -> None:
        assert self._dispatch is not None
        self._dispatch(StreamStoreChanged(state=state, now=anyio.current_time()))

    def _down(self) -> None:
        """The link is down: said once, and the reader starts again (subscribing anew)."""
        if self._restart is not None:
            self._restart.cancel()
        self._downs += 1
        self._replies.clear()  # the core answers their reads here
        if self._up:
            self._up = False
            self._state(StreamStoreState.DOWN)

    async def _subscribe(self) -> None:
        """Subscribe, hand on what arrives, and start again after a failure (backing off
        up to ``timeout``)."""
        delay = 0.05
        while True:
            with anyio.CancelScope() as self._restart:
                try:
                    await self._read()
                except (RedisError, OSError, TimeoutError) as exc:
                    self.errors += 1
                    if self._up:
                        logger.warning("streams: lost %s: %s", self.url, _describe(exc))
            self._restart = None
            self._down()
            await anyio.sleep(delay)
            delay = min(delay * 2, self._timeout)

    async def _read(self) -> None:
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        answers = self._answers.encode()
        try:
            await pubsub.subscribe(self._publications, self._answers)
            confirmed, quiet = 0, 0.0
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    quiet += 1.0
                    if quiet > 2 * self._timeout:
                        raise TimeoutError("no answer to pings")
                    if quiet >= self._timeout:
                        await pubsub.ping()
                    continue
                quiet = 0.0
                kind = message["type"]
                if kind == "subscribe":
                    confirmed += 1
                    if confirmed == 2:
                        self._up = True
                        logger.info("streams: reading %s", self.url)
                        self._state(StreamStoreState.READY)
                elif kind == "message" and message["channel"] == answers:
                    await self._answer(int(message["data"]))
                elif kind == "message":
                    self._receive(message["data"])
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()

    async def _answer(self, request: int) -> None:
        """A read's fence: its answer goes here, in order (the writer may still be reading
        the script's reply; it comes, or the write fails, within the timeout)."""
        assert self._dispatch is not None
        while request not in self._replies:
            await self._replied.wait()
        reply = self._replies.pop(request)
        if reply is not None:
            position, entries = reply
            now = anyio.current_time()
            self._dispatch(
                StreamReadDone(request=request, position=position, entries=entries, now=now)
            )

    def _receive(self, data: bytes) -> None:
        assert self._dispatch is not None
        try:
            offset, epoch, channel_len, rest = data.split(b":", 3)
            channel_end = int(channel_len)
            event = StreamPublished(
                channel=rest[:channel_end].decode(),
                offset=int(offset),
                epoch=epoch.decode(),
                data=rest[channel_end:],
                now=anyio.current_time(),
            )
        except ValueError as exc:  # not written by our scripts
            self.errors += 1
            logger.warning("streams: skipping a malformed message: %s", _describe(exc))
            return
        self._dispatch(event)

    async def aclose(self) -> None:
        """Run what is queued (publications accepted before shutdown), then disconnect."""
        if self._redis is None:
            return
        with anyio.move_on_after(self._timeout):
            await self._flush()
        await self._redis.aclose()
        self._redis = None


def _split(entries: bytes) -> tuple[tuple[int, bytes], ...]:
    """The read script's entries, "<offset>:<len>:<data>" after one another."""
    found, at = [], 0
    while at < len(entries):
        first = entries.index(b":", at)
        second = entries.index(b":", first + 1)
        end = second + 1 + int(entries[first + 1 : second])
        found.append((int(entries[at:first]), entries[second + 1 : end]))
        at = end
    return tuple(found)
