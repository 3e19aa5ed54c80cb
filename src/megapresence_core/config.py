"""Validated configuration: every limit is named, has a default and a reason.

A bad value raises ``LocalUsageError`` when the config is built, so a
misconfigured server fails at start, not on its first peer. The limits form
one chain counted in bytes: whatever ``Presence`` accepts from the embedding
program fits the hub frame and the cluster message that carry it
(:class:`Limits` checks its own numbers agree; ``Presence`` measures each
frame it builds), and the hub's frame limit defaults to the bridges'.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any, Final, final
from urllib.parse import urlsplit, urlunsplit

import attrs

from ._values import Message, enum_member, non_empty_str, str_tuple, utf8_len
from .errors import CloseCode, LocalUsageError, over_limit
from .wire import MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_HISTORY_TTL",
    "DEFAULT_LEAVE_GRACE",
    "DEFAULT_MAX_CHANNELS_PER_SESSION",
    "DEFAULT_MAX_HUB_FRAME_BYTES",
    "DEFAULT_MAX_MEMBERS_PER_CHANNEL",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_METADATA_BYTES",
    "DEFAULT_MAX_NAME_BYTES",
    "DEFAULT_MAX_RECOVERY",
    "DEFAULT_PRESENCE_WINDOW",
    "ClusterConfig",
    "DuplicateSessionPolicy",
    "HistoryConfig",
    "HubConfig",
    "HubLinkConfig",
    "Limits",
    "PresenceConfig",
    "StoreConfig",
    "redact_url",
]

#: A chat line or a game event fits many times over; a document does not
#: belong in a presence broadcast.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Status, avatar URL, a few flags; metadata is copied into every roster read.
DEFAULT_MAX_METADATA_BYTES: Final = 4 * 1024
#: Each channel costs an index entry here and on the hub for the session's life.
DEFAULT_MAX_CHANNELS_PER_SESSION: Final = 64
DEFAULT_COMMAND_RATE: Final = 100.0
DEFAULT_COMMAND_BURST: Final = 200
#: A command that brings a snapshot (``sync``, a ``subscribe`` in mode users or
#: sessions) costs its connection one more command per this many characters of the
#: snapshot's text: building and sending 1 MB is not the cost of a ``ping``, so the rate
#: of snapshots falls with their size (64 more commands for a 1 MiB ``presence.state``).
SNAPSHOT_CHARS_PER_COMMAND: Final = 16 * 1024
#: ns, channel, user and session ids travel in every frame: an id, not a text.
DEFAULT_MAX_NAME_BYTES: Final = 256
#: A hub frame carries one message plus routing: the message limit plus headroom.
DEFAULT_MAX_HUB_FRAME_BYTES: Final = DEFAULT_MAX_MESSAGE_BYTES + 16 * 1024
#: A users or sessions snapshot of 10,000 members with small metadata is about
#: 1 MB: as much as a browser should parse at once. Bigger channels want counts.
DEFAULT_MAX_MEMBERS_PER_CHANNEL: Final = 10_000
#: The hub's frame rate per bridge (sustained, and the burst above it): a hub states
#: its own in REGISTERED; a bridge paces by these when an older hub states none.
DEFAULT_HUB_FRAMES_PER_SECOND: Final = 2_000.0
DEFAULT_HUB_FRAME_BURST: Final = 4_000.0
#: Seconds of presence changes coalesced into one diff per watcher: below what a
#: person notices (about 100 ms), long enough that a join storm costs each
#: watcher 20 messages a second instead of one per join.
DEFAULT_PRESENCE_WINDOW: Final = 0.05
#: Seconds a session whose socket closed stays listed: a browser reload
#: reconnects in 1-3 s and the JS client's first retry waits 0.5-1 s, so 5 s
#: covers a reload plus one retry, while a real departure shows within seconds.
DEFAULT_LEAVE_GRACE: Final = 5.0
#: Publications a channel's history keeps: a blip of a few seconds on a busy
#: chat channel, at most this many messages of ``max_message_bytes`` in memory.
DEFAULT_HISTORY_SIZE: Final = 300
#: Seconds a publication stays recoverable: a network change, a laptop lid, a
#: server restart plus the reconnect backoff (Socket.IO and Ably keep two minutes).
DEFAULT_HISTORY_TTL: Final = 120.0
#: Publications one recovery returns at most (Centrifugo's default): past it the
#: client reloads from the application's own store, which is cheaper than a replay.
DEFAULT_MAX_RECOVERY: Final = 300


def routing_bytes(max_name_bytes: int) -> int:
    """The most a BROADCAST frame adds to its message, but for its except list.

    ``{"type":"BROADCAST","payload":{"ns":N,"channel":C,"message":M}}`` is 55
    bytes of JSON around two names, and a name of n bytes takes at most 6n + 2
    once escaped (a control character becomes a six-byte escape).
    """
    return 64 + 2 * (6 * max_name_bytes + 2)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        owner = type(instance).__name__
        raise LocalUsageError(f"{owner}: {attribute.name} must be a positive number, got {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value >= 0
        or not math.isfinite(value)
    ):
        owner = type(instance).__name__
        raise LocalUsageError(
            f"{owner}: {attribute.name} must be a number of seconds >= 0, got {value!r}"
        )


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    non_empty_str(type(instance).__name__, attribute.name, value)


def _channels(value: Any) -> tuple[str, ...]:
    return str_tuple("HubLinkConfig", "channels", value)


def _capabilities(value: Any) -> tuple[str, ...]:
    return str_tuple("HubLinkConfig", "capabilities", value)


class DuplicateSessionPolicy(enum.Enum):
    """What a join does when its session id is already held by another open connection."""

    #: The seed's rule: the prior connection loses its identity and leaves every
    #: index but stays open; its later close touches nothing of the new owner.
    DETACH_PRIOR = "detach_prior"
    #: As DETACH_PRIOR, and the prior connection is also closed (1008).
    CLOSE_PRIOR = "close_prior"
    #: The new connection is closed (1008) and the prior one keeps the session.
    REFUSE_NEW = "refuse_new"


@final
@attrs.frozen(kw_only=True)
class Limits:
    """Caps on everything the embedding program or a peer can make us hold."""

    max_message_bytes: int = attrs.field(default=DEFAULT_MAX_MESSAGE_BYTES, validator=_positive)
    max_metadata_bytes: int = attrs.field(default=DEFAULT_MAX_METADATA_BYTES, validator=_positive)
    max_channels_per_session: int = attrs.field(
        default=DEFAULT_MAX_CHANNELS_PER_SESSION, validator=_positive
    )
    #: Every hub frame this bridge sends or accepts; must hold the largest message.
    max_hub_frame_bytes: int = attrs.field(default=DEFAULT_MAX_HUB_FRAME_BYTES, validator=_positive)
    #: ns, channel, user id and session id, each in UTF-8 bytes.
    max_name_bytes: int = attrs.field(default=DEFAULT_MAX_NAME_BYTES, validator=_positive)
    #: Members of one channel (as this process knows them, cluster-wide) past
    #: which a new subscription is refused with ``channel_full``.
    max_members_per_channel: int = attrs.field(
        default=DEFAULT_MAX_MEMBERS_PER_CHANNEL, validator=_positive
    )
    #: Commands one client connection may send per second, on average
    #: (``CommandReceived``); past it a command is refused with ``rate_limited``.
    #: A command that brings a snapshot costs one more per 16 KiB of it
    #: (``SNAPSHOT_CHARS_PER_COMMAND``): ``sync`` of a large channel is many commands.
    command_rate: float = attrs.field(default=DEFAULT_COMMAND_RATE, validator=_positive)
    #: ...and at once after a quiet while (a reconnect resubscribing everything).
    command_burst: int = attrs.field(default=DEFAULT_COMMAND_BURST, validator=_positive)

    def __attrs_post_init__(self) -> None:
        needed = self.max_message_bytes + routing_bytes(self.max_name_bytes)
        if self.max_hub_frame_bytes < needed:
            raise LocalUsageError(
                f"Limits: max_hub_frame_bytes ({self.max_hub_frame_bytes}) must hold the largest "
                f"message plus its routing: at least {needed} (max_message_bytes "
                f"{self.max_message_bytes} + {needed - self.max_message_bytes} for two names of "
                f"max_name_bytes {self.max_name_bytes})"
            )

    def check_name(self, owner: str, field: str, name: str) -> None:
        """Refuse a name (ns, channel, user or session id) longer than ``max_name_bytes``."""
        if len(name) * 4 <= self.max_name_bytes:
            return  # no character takes more than four bytes: surely within the limit
        size = utf8_len(name)
        if size > self.max_name_bytes:
            raise over_limit(
                f"{owner}: {field} is {size} bytes; the limit is {self.max_name_bytes} "
                "(Limits.max_name_bytes)"
            )

    def check_channels(self, owner: str, channels: tuple[str, ...]) -> None:
        if len(channels) > self.max_channels_per_session:
            raise over_limit(
                f"{owner}: {len(channels)} channels; the limit is "
                f"{self.max_channels_per_session} (Limits.max_channels_per_session)"
            )
        for channel in channels:
            self.check_name(owner, "channel", channel)

    def check_metadata(self, owner: str, size: int) -> None:
        if size > self.max_metadata_bytes:
            raise over_limit(
                f"{owner}: metadata is {size} bytes of JSON; the limit is "
                f"{self.max_metadata_bytes} (Limits.max_metadata_bytes)"
            )

    def check_message(self, owner: str, message: Message) -> None:
        if message.size > self.max_message_bytes:
            raise over_limit(
                f"{owner}: message is {message.size} bytes of JSON; the limit is "
                f"{self.max_message_bytes} (Limits.max_message_bytes)",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )


@final
@attrs.frozen(kw_only=True)
class HubLinkConfig:
    """How a bridge registers with a hub and keeps the link alive.

    The URL and token belong to the transport, so they live in the shim.
    """

    bridge_id: str = attrs.field(validator=_non_empty)
    instance_id: str = attrs.field(validator=_non_empty)
    #: Channels this bridge follows without a member in them (REGISTER ``channels``):
    #: their broadcasts, publishes and rosters reach it, so their counts are known here.
    channels: tuple[str, ...] = attrs.field(default=(), converter=_channels)
    #: Named in REGISTER; ``batch`` (several frames per WebSocket message) is used when
    #: the hub names it too.
    capabilities: tuple[str, ...] = attrs.field(
        default=("broadcast", "direct", "disconnect", "metadata", "batch"),
        converter=_capabilities,
    )
    #: Used until REGISTERED says otherwise (the hub's value must lie within
    #: MIN_HEARTBEAT_INTERVAL..MAX_HEARTBEAT_INTERVAL, 0.05 s to an hour).
    heartbeat_interval: float = attrs.field(default=15.0, validator=_positive)
    #: A link that hears nothing for this many heartbeat intervals is dead.
    #: Three tolerates one lost heartbeat and a slow one.
    dead_after_intervals: float = attrs.field(default=3.0, validator=_positive)
    #: Time allowed from ConnectHub to REGISTERED before the attempt is dropped.
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    backoff_initial: float = attrs.field(default=0.5, validator=_positive)
    backoff_max: float = attrs.field(default=30.0, validator=_positive)
    backoff_multiplier: float = attrs.field(default=2.0, validator=_positive)
    #: Seed of the jitter RNG; None derives one from instance_id, so replays of
    #: the same configuration draw the same delays.
    jitter_seed: int | None = None
    #: Seconds of the hub's rate (REGISTERED's ``maxFramesPerSecond``) that the frames
    #: held for it may take to leave before clients share what is left: past
    #: ``rate * max_queue_delay`` held frames (at least one), a client's command that
    #: would send one more is refused with ``busy`` if its connection holds more than its
    #: fair share of them (that many divided by the connections holding any, itself
    #: included), so a flood is refused and a connection sending little is not. One
    #: presence window: a change still reaches the other servers within about one.
    max_queue_delay: float = attrs.field(default=DEFAULT_PRESENCE_WINDOW, validator=_positive)
    #: Frames held past which every client's command that would send one more is
    #: refused with ``busy``, whatever its share (many connections with one frame each).
    #: What the link itself sends (a resync, leaves) and what the embedding program
    #: asks are held whatever the count.
    max_queued_frames: int = attrs.field(default=10_000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise LocalUsageError("HubLinkConfig: backoff_max must be >= backoff_initial")
        if self.backoff_multiplier < 1:
            raise LocalUsageError("HubLinkConfig: backoff_multiplier must be >= 1")


_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _app_name(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _SUBJECT_TOKEN.fullmatch(value):
        raise LocalUsageError(
            f"ClusterConfig: app must be letters, digits, '_' or '-' (a NATS subject token), "
            f"got {value!r}"
        )


def _epoch(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LocalUsageError(f"ClusterConfig: epoch must be a non-negative int, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class ClusterConfig:
    """This instance's place in a cluster of instances of one app (over NATS)."""

    #: Names the subjects: ``megapresence.<app>.fanout`` and ``.members``.
    app: str = attrs.field(validator=_app_name)
    instance_id: str = attrs.field(validator=_non_empty)
    #: The boot of this instance, in milliseconds since the Unix epoch: a larger epoch
    #: under the same instance id means a restart, and this instance's session claims
    #: start at it (times 1000), so its joins outrank claims made before it booted.
    epoch: int = attrs.field(validator=_epoch)
    #: Share members with the other instances (a cluster-wide roster); False
    #: fans out messages only and each instance lists its own members.
    sync_members: bool = True
    #: Often enough that a lost add/remove is healed within seconds, rarely
    #: enough to cost nothing: one small message per instance per interval.
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    #: Three heartbeats: one may be lost, and a crashed instance's members go
    #: from every roster within this many seconds.
    ttl: float = attrs.field(default=15.0, validator=_positive)
    #: Snapshots are sent in parts well under NATS's 1 MiB default payload.
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.ttl <= self.heartbeat_interval:
            raise LocalUsageError("ClusterConfig: ttl must be longer than heartbeat_interval")


@final
@attrs.frozen(kw_only=True)
class StoreConfig:
    """A shared per-channel member store (Redis) wired to this process."""

    #: Seconds a member stays in the shared store without a refresh: how long
    #: a crashed process's members can linger.
    ttl: float = attrs.field(default=60.0, validator=_positive)
    #: A third of the TTL: two refreshes may be lost before a live member expires.
    refresh_interval: float = attrs.field(default=20.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.refresh_interval >= self.ttl:
            raise LocalUsageError("StoreConfig: refresh_interval must be shorter than ttl")


def _boot_id(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    non_empty_str("HistoryConfig", "boot_id", value)
    if len(value) > 64:
        raise LocalUsageError(f"HistoryConfig: boot_id is over 64 characters: {value[:70]!r}")


@final
@attrs.frozen(kw_only=True)
class HistoryConfig:
    """Channel streams: offsets, epochs and a bounded history for recovery after a blip.

    A channel has a stream while a session of this process is subscribed to it
    (lingering ones included): every publication gets the stream's next offset,
    and the last ``size`` publications of the last ``ttl`` seconds are kept, so a
    client that comes back with ``since`` gets what it missed. History costs at
    most ``size`` channel messages (each within ``Limits.max_message_bytes`` plus
    its envelope) per channel; :attr:`Presence.history_bytes` counts it.
    """

    #: New at every start of the process (a random id): the streams' epochs are
    #: made from it, so an epoch never repeats after a restart, when history is lost.
    boot_id: str = attrs.field(validator=_boot_id)
    size: int = attrs.field(default=DEFAULT_HISTORY_SIZE, validator=_positive)
    ttl: float = attrs.field(default=DEFAULT_HISTORY_TTL, validator=_positive)
    #: Publications one recovery returns at most; more missed is ``too_many``.
    max_recovery: int = attrs.field(default=DEFAULT_MAX_RECOVERY, validator=_positive)

    def __attrs_post_init__(self) -> None:
        for name in ("size", "max_recovery"):
            if not isinstance(getattr(self, name), int):
                raise LocalUsageError(f"HistoryConfig: {name} must be an int")


def _duplicate_session(value: object) -> DuplicateSessionPolicy:
    return enum_member(DuplicateSessionPolicy, "PresenceConfig", "duplicate_session", value)


@final
@attrs.frozen(kw_only=True)
class PresenceConfig:
    """Everything ``Presence`` needs to know about its place in the system."""

    hub_link: HubLinkConfig | None = None
    cluster: ClusterConfig | None = None
    store: StoreConfig | None = None
    #: A ``DuplicateSessionPolicy`` or its name as docs/protocol.md spells it ("refuse_new").
    duplicate_session: DuplicateSessionPolicy = attrs.field(
        default=DuplicateSessionPolicy.DETACH_PRIOR, converter=_duplicate_session
    )
    limits: Limits = Limits()
    #: Presence changes to a channel are sent to its watchers at most once per
    #: window (seconds); 0 sends them at the end of the event that made them.
    presence_window: float = attrs.field(default=DEFAULT_PRESENCE_WINDOW, validator=_not_negative)
    #: A session whose socket closed (not a kick, an unsubscribe or a shutdown)
    #: stays listed this long and is restored if it joins again; 0 disables it.
    leave_grace: float = attrs.field(default=DEFAULT_LEAVE_GRACE, validator=_not_negative)
    #: Offsets, epochs and history of channel messages; None: channel messages carry
    #: no position and a ``since`` is answered ``recovered: false`` (reason ``epoch``).
    history: HistoryConfig | None = None

    def __attrs_post_init__(self) -> None:
        # A cluster message carries what a hub frame carries, with a shorter envelope.
        cluster, limits = self.cluster, self.limits
        if cluster is not None and cluster.max_message_bytes < limits.max_hub_frame_bytes:
            raise LocalUsageError(
                f"PresenceConfig: cluster.max_message_bytes ({cluster.max_message_bytes}) must "
                f"hold what a hub frame holds: at least limits.max_hub_frame_bytes "
                f"({limits.max_hub_frame_bytes})"
            )


@final
@attrs.frozen(kw_only=True)
class HubConfig:
    """Limits and timing of the hub server, each a cap on what one bridge can cost."""

    hub_id: str = attrs.field(validator=_non_empty)
    tokens: tuple[str, ...] = attrs.field(converter=tuple)
    #: Sent to every bridge in REGISTERED; within MIN/MAX_HEARTBEAT_INTERVAL.
    heartbeat_interval: float = attrs.field(default=15.0, validator=_positive)
    dead_after_intervals: float = attrs.field(default=3.0, validator=_positive)
    #: A bridge must REGISTER this soon after the upgrade.
    register_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: The same default as the bridges' ``Limits.max_hub_frame_bytes``: what a
    #: bridge may send, the hub accepts and forwards.
    max_frame_bytes: int = attrs.field(default=DEFAULT_MAX_HUB_FRAME_BYTES, validator=_positive)
    max_sessions_per_bridge: int = attrs.field(default=100_000, validator=_positive)
    max_channels_per_session: int = attrs.field(
        default=DEFAULT_MAX_CHANNELS_PER_SESSION, validator=_positive
    )
    max_metadata_bytes: int = attrs.field(default=DEFAULT_MAX_METADATA_BYTES, validator=_positive)
    #: Sustained frames per second per bridge; bursts up to ``frame_burst``.
    max_frames_per_second: float = attrs.field(
        default=DEFAULT_HUB_FRAMES_PER_SECOND, validator=_positive
    )
    frame_burst: float = attrs.field(default=DEFAULT_HUB_FRAME_BURST, validator=_positive)
    #: Strikes (malformed or unexpected frames) a bridge may hold before it is closed
    #: with 1008. Over-rate input is slowed (back-pressure), and a refusal that
    #: belongs to one session costs that session: neither is a strike.
    max_errors: int = attrs.field(default=3, validator=_positive)
    #: A strike decays over this many seconds (one strike forgiven per period), so
    #: only errors that come faster than that add up to ``max_errors``.
    error_decay: float = attrs.field(default=10.0, validator=_positive)
    #: Channels one bridge may track without a member (REGISTER ``channels``);
    #: each is an index entry and a MEMBERS reply.
    max_interest_channels: int = attrs.field(default=1_000, validator=_positive)
    #: Offer ``batch`` in REGISTERED: with a bridge that offers it too, several frames
    #: travel in one WebSocket message each way (at most ``max_frame_bytes`` in all).
    batch_frames: bool = True
    #: Channel streams kept by the hub (capability ``stream``): the hub numbers every
    #: channel's publications and answers recoveries, so a client recovers on any bridge.
    #: Its ``boot_id`` must be new at every hub start (``HubServer`` draws one).
    history: HistoryConfig | None = None

    def __attrs_post_init__(self) -> None:
        if not self.tokens:
            raise LocalUsageError("HubConfig: tokens must hold at least one token")
        for token in self.tokens:
            non_empty_str("HubConfig", "each token", token)
        if not MIN_HEARTBEAT_INTERVAL <= self.heartbeat_interval <= MAX_HEARTBEAT_INTERVAL:
            raise LocalUsageError(
                f"HubConfig: heartbeat_interval must be from {MIN_HEARTBEAT_INTERVAL:g} to "
                f"{MAX_HEARTBEAT_INTERVAL:g} seconds, got {self.heartbeat_interval!r}"
            )


def redact_url(url: str) -> str:
    """``url`` with any password (or token in the user part) replaced by ``***``.

    For the shims' logs and errors: a server URL may be printed, its secret not.
    """
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    secret = "***" if parts.password is not None else ""
    netloc = f"{user}:{secret}@{host}" if secret else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))
