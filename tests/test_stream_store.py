"""Channel streams numbered by a stream store (JetStream, Redis Streams): the core's side of
the contract in ``megapresence_core._stream_store``, driven by a model store that does what
a backend must (offsets per channel, an epoch drawn when a stream has no entries, every
publication to every process in order, a read answered in order with the live ones)."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import pytest

from megapresence_core import (
    LocalUsageError,
    Message,
    Presence,
    PresenceConfig,
    PublishRequested,
    Subscribe,
    Unsubscribe,
)
from megapresence_core.actions import Action, Deliver, Log, StreamAppend, StreamRead
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    StreamPosition,
    StreamPublished,
    StreamReadDone,
    StreamStoreChanged,
    StreamStoreState,
)

from .helpers import deliveries, drive, open_joined, refusals

READY, DOWN, ABSENT = StreamStoreState.READY, StreamStoreState.DOWN, StreamStoreState.ABSENT


class ModelStore:
    """What a backend does, in memory: the streams of every channel, shared by processes."""

    def __init__(self, size: int = 5) -> None:
        self.size = size
        self.streams: dict[str, tuple[str, int, list[tuple[int, str]]]] = {}
        self.epochs = 0
        self.processes: dict[str, Presence] = {}

    def _stream(self, channel: str) -> tuple[str, int, list[tuple[int, str]]]:
        if channel not in self.streams:  # an epoch from the first read or append on
            self.epochs += 1
            self.streams[channel] = (f"store.{self.epochs}", 0, [])
        return self.streams[channel]

    def perform(self, actions: list[Action]) -> list[Action]:
        """Do the store's actions; the actions every process answers with, by process."""
        out: list[Action] = []
        for action in actions:
            if isinstance(action, StreamAppend):
                epoch, top, entries = self._stream(action.channel)
                top += 1
                entries = [*entries, (top, action.data)][-self.size :]
                self.streams[action.channel] = (epoch, top, entries)
                for presence in self.processes.values():
                    out += presence.handle(
                        StreamPublished(
                            channel=action.channel,
                            offset=top,
                            epoch=epoch,
                            data=action.data,
                            now=0.0,
                        )
                    )
            elif isinstance(action, StreamRead):
                raise AssertionError("reads are answered by read()")
            else:
                out.append(action)
        return out

    def read(self, presence: Presence, action: StreamRead) -> list[Action]:
        epoch, top, entries = self._stream(action.channel)
        since = action.since
        kept: tuple[tuple[int, str], ...] = ()
        if since is not None and since.epoch == epoch and top - since.offset <= action.limit:
            kept = tuple(e for e in entries if e[0] > since.offset)
        position = StreamPosition(offset=top, epoch=epoch)
        return presence.handle(
            StreamReadDone(request=action.request, position=position, entries=kept, now=0.0)
        )


def process(store: ModelStore, name: str, **history: Any) -> Presence:
    config = HistoryConfig(boot_id=f"boot-{name}", **{"size": 5, "max_recovery": 3, **history})
    presence = Presence(PresenceConfig(history=config))
    assert drive(presence, StreamStoreChanged(state=READY, now=0.0)) == []
    store.processes[name] = presence
    return presence


def reads(actions: list[Action]) -> list[StreamRead]:
    return [a for a in actions if isinstance(a, StreamRead)]


def publish(store: ModelStore, presence: Presence, conn: Hashable, n: int) -> list[Action]:
    message = Message(type="n", payload=n)
    actions = presence.handle(PublishRequested(channel="room", message=message, conn=conn))
    assert [type(a) for a in actions] == [StreamAppend]  # delivered nothing itself
    return store.perform(actions)


def subscribe(
    store: ModelStore,
    presence: Presence,
    conn: Hashable,
    since: StreamPosition | None = None,
) -> list[dict[str, Any]]:
    actions = drive(presence, Subscribe(conn=conn, channel="room", now=0.0, since=since))
    (read,) = reads(actions)
    assert deliveries(actions) == {}  # nothing until the store answers
    return deliveries(store.read(presence, read))[conn]


def numbers(actions: list[Action], conn: Hashable) -> list[tuple[int, int, str]]:
    return [
        (m["payload"], m["offset"], m["epoch"])
        for m in deliveries(actions).get(conn, [])
        if m["type"] == "n"
    ]


@pytest.fixture
def pair() -> tuple[ModelStore, Presence, Presence]:
    store = ModelStore()
    a, b = process(store, "A"), process(store, "B")
    open_joined(a, "ann", "ann", "a1")
    open_joined(b, "bob", "bob", "b1")
    assert subscribe(store, a, "ann")[0]["offset"] == 0
    subscribe(store, b, "bob")
    return store, a, b


def test_the_store_numbers_a_channel_once_for_every_process_the_origin_included(
    pair: tuple[ModelStore, Presence, Presence],
) -> None:
    store, a, b = pair
    first = publish(store, a, "ann", 1)
    second = publish(store, b, "bob", 2)
    epoch = store.streams["room"][0]
    assert numbers(first, "ann") == numbers(first, "bob") == [(1, 1, epoch)]
    assert numbers(second, "ann") == numbers(second, "bob") == [(2, 2, epoch)]


def test_a_subscriber_recovers_on_another_process_exactly(
    pair: tuple[ModelStore, Presence, Presence],
) -> None:
    store, a, b = pair
    publish(store, a, "ann", 1)
    epoch = store.streams["room"][0]
    drive(b, Unsubscribe(conn="bob", channel="room", now=0.0))
    publish(store, a, "ann", 2)
    publish(store, a, "ann", 3)
    got = subscribe(store, b, "bob", StreamPosition(offset=1, epoch=epoch))
    assert got[0] == {
        "type": "subscribed",
        "channel": "room",
        "presence": "none",
        "offset": 3,
        "epoch": epoch,
        "recovered": True,
    }
    assert [(m["payload"], m["offset"]) for m in got[1:]] == [(2, 2), (3, 3)]
    assert numbers(publish(store, a, "ann", 4), "bob") == [(4, 4, epoch)]


def test_a_recovery_leaves_out_what_the_session_was_excluded_from(
    pair: tuple[ModelStore, Presence, Presence],
) -> None:
    store, a, b = pair
    epoch = store.streams["room"][0]
    drive(b, Unsubscribe(conn="bob", channel="room", now=0.0))
    message = Message(type="n", payload=1)
    store.perform(
        a.handle(
            PublishRequested(channel="room", message=message, except_session_ids=("b1",), conn=None)
        )
    )
    publish(store, a, "ann", 2)
    got = subscribe(store, b, "bob", StreamPosition(offset=0, epoch=epoch))
    assert got[0]["recovered"] is True
    assert [m["payload"] for m in got[1:]] == [2]


@pytest.mark.parametrize(
    ("since", "published", "reason"),
    [
        (StreamPosition(offset=0, epoch="another"), 1, "epoch"),
        (StreamPosition(offset=9, epoch=""), 1, "epoch"),  # beyond the stream's offset
        (StreamPosition(offset=0, epoch=""), 4, "too_many"),  # over max_recovery (3)
        (StreamPosition(offset=0, epoch=""), 7, "too_many"),  # over the size (5) too
    ],
)
def test_what_cannot_be_recovered_says_why_and_sends_nothing(
    pair: tuple[ModelStore, Presence, Presence],
    since: StreamPosition,
    published: int,
    reason: str,
) -> None:
    store, a, b = pair
    epoch = store.streams["room"][0]
    since = StreamPosition(offset=since.offset, epoch=since.epoch or epoch)
    drive(b, Unsubscribe(conn="bob", channel="room", now=0.0))
    for n in range(published):
        publish(store, a, "ann", n)
    got = subscribe(store, b, "bob", since)
    assert (got[0]["recovered"], got[0]["reason"]) == (False, reason)
    assert [m["type"] for m in got[1:]] == []


def read_done(
    presence: Presence, read: StreamRead, top: int, entries: tuple[tuple[int, str], ...]
) -> list[Action]:
    position = StreamPosition(offset=top, epoch="e")
    return drive(
        presence, StreamReadDone(request=read.request, position=position, entries=entries, now=0.0)
    )


def ask(presence: Presence, since: StreamPosition | None) -> StreamRead:
    open_joined(presence, "cat", "cat", "c1")
    (read,) = reads(drive(presence, Subscribe(conn="cat", channel="room", now=0.0, since=since)))
    assert read.limit == 3
    return read


def stored(n: int, excepted: tuple[str, ...] = ()) -> str:
    payload: dict[str, Any] = {"channel": "room", "message": {"type": "n", "payload": n}}
    if excepted:
        payload["exceptSessionIds"] = list(excepted)
    return json.dumps({"type": "PUBLISH", "payload": payload})


@pytest.mark.parametrize(
    ("size", "reason"),
    [(5, "expired"), (2, "too_many")],  # a gap: expired, unless the size dropped them
)
def test_a_gap_in_what_the_store_keeps_is_not_recovered(size: int, reason: str) -> None:
    presence = process(ModelStore(), "A", size=size)
    read = ask(presence, StreamPosition(offset=1, epoch="e"))
    got = deliveries(read_done(presence, read, 4, ((3, stored(3)), (4, stored(4)))))["cat"]
    assert (got[0]["recovered"], got[0]["reason"]) == (False, reason)
    assert len(got) == 1


def test_an_entry_that_is_no_publication_fails_the_recovery_and_is_logged() -> None:
    presence = process(ModelStore(), "A")
    read = ask(presence, StreamPosition(offset=0, epoch="e"))
    actions = read_done(presence, read, 2, ((1, stored(1)), (2, '{"type":"HEARTBEAT"}')))
    got = deliveries(actions)["cat"]
    assert (got[0]["recovered"], got[0]["reason"]) == (False, "epoch")
    assert [a.event for a in actions if isinstance(a, Log)] == ["stream.entry.invalid"]


def test_a_failed_read_is_answered_from_this_process() -> None:
    presence = process(ModelStore(), "A")
    read = ask(presence, StreamPosition(offset=0, epoch="e"))
    actions = drive(presence, StreamReadDone(request=read.request, position=None, now=0.0))
    got = deliveries(actions)["cat"][0]
    assert (got["recovered"], got["reason"], got["epoch"]) == (False, "epoch", "boot-A.1")
    # A late or unknown answer changes nothing.
    assert read_done(presence, read, 0, ()) == []


def test_an_unsubscribe_while_the_read_is_out_cancels_the_subscribe() -> None:
    presence = process(ModelStore(), "A")
    read = ask(presence, None)
    drive(presence, Unsubscribe(conn="cat", channel="room", now=0.0))
    assert read_done(presence, read, 0, ()) == []
    assert presence.subscriptions("cat") == {}


def test_the_store_down_refuses_publishes_and_answers_waiting_subscribes_here(
    pair: tuple[ModelStore, Presence, Presence],
) -> None:
    store, a, _b = pair
    publish(store, a, "ann", 1)
    read = ask(a, None)
    actions = drive(a, StreamStoreChanged(state=DOWN, now=0.0))
    got = deliveries(actions)
    assert got["cat"][0]["type"] == "subscribed"  # answered from this process
    assert "ann" not in got  # ann holds the store's position: told when the store is back
    assert read_done(a, read, 0, ()) == []
    message = Message(type="n", payload=2)
    refused = drive(a, PublishRequested(channel="room", message=message, conn="ann"))
    assert refusals(refused) == [("ann", "unavailable", "room")]
    # Late publications of the store are not delivered: the stream started again here.
    late = StreamPublished(channel="room", offset=2, epoch="e", data=stored(2), now=0.0)
    assert drive(a, late) == []
    assert drive(a, StreamStoreChanged(state=DOWN, now=0.0)) == []  # no change


def test_a_store_back_is_asked_where_each_stream_is_and_a_subscriber_behind_is_told(
    pair: tuple[ModelStore, Presence, Presence],
) -> None:
    store, a, b = pair
    publish(store, a, "ann", 1)
    epoch = store.streams["room"][0]
    assert drive(a, StreamStoreChanged(state=DOWN, now=0.0)) == []
    publish(store, b, "bob", 2)  # A is away: ann does not get it
    (probe,) = reads(drive(a, StreamStoreChanged(state=READY, now=0.0)))
    assert (probe.channel, probe.since) == ("room", None)
    got = deliveries(store.read(a, probe))
    assert got == {
        "ann": [{"type": "stream.missed", "channel": "room", "offset": 2, "epoch": epoch}]
    }
    recovered = subscribe(store, a, "ann", StreamPosition(offset=1, epoch=epoch))
    assert (recovered[0]["recovered"], recovered[1]["payload"]) == (True, 2)
    # Back again with nothing missed meanwhile: asked, and nothing to tell.
    drive(a, StreamStoreChanged(state=DOWN, now=0.0))
    (probe,) = reads(drive(a, StreamStoreChanged(state=READY, now=0.0)))
    assert store.read(a, probe) == []
    # An answer the store could not read says nothing either.
    drive(a, StreamStoreChanged(state=DOWN, now=0.0))
    (probe,) = reads(drive(a, StreamStoreChanged(state=READY, now=0.0)))
    done = StreamReadDone(request=probe.request, position=None, entries=(), now=0.0)
    assert drive(a, done) == []


def test_without_a_store_each_process_numbers_its_own_streams() -> None:
    store = ModelStore()
    presence = process(store, "A")
    drive(presence, StreamStoreChanged(state=ABSENT, now=0.0))
    open_joined(presence, "ann", "ann", "a1", channels=("room",))
    message = Message(type="n", payload=1)
    actions = drive(presence, PublishRequested(channel="room", message=message, conn="ann"))
    assert numbers(actions, "ann") == [(1, 1, "boot-A.1")]


def test_a_stored_entry_that_is_no_publication_is_logged_not_delivered(
    pair: tuple[ModelStore, Presence, Presence],
) -> None:
    _store, a, _b = pair
    for data in ("{", '{"type":"HEARTBEAT"}'):
        actions = drive(a, StreamPublished(channel="room", offset=1, epoch="e", data=data, now=0.0))
        assert [(type(x), x.event) for x in actions if isinstance(x, Log)] == [
            (Log, "stream.entry.invalid")
        ]
        assert not any(isinstance(x, Deliver) for x in actions)


def test_a_store_needs_history() -> None:
    presence = Presence(PresenceConfig())
    with pytest.raises(LocalUsageError, match="keeps no history"):
        presence.handle(StreamStoreChanged(state=READY, now=0.0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: StreamReadDone(request=1, position=None, entries=[("1", "x")], now=0.0),
        lambda: StreamReadDone(request=1, position=None, entries=[(True, "x")], now=0.0),
        lambda: StreamReadDone(request=1, position=None, entries=[(1, "x", 2)], now=0.0),
        lambda: StreamReadDone(request=-1, position=None, now=0.0),
        lambda: StreamPublished(channel="room", offset=1, epoch="", data="x", now=0.0),
        lambda: StreamStoreChanged(state="ready", now=0.0),
    ],
)
def test_malformed_store_events_are_misuse(make: Any) -> None:
    with pytest.raises(LocalUsageError):
        make()
