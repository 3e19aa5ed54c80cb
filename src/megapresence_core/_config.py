"""Validated configuration: every limit is named, has a default and a reason.

A bad value raises ``LocalUsageError`` when the config is built, so a
misconfigured server fails at start, not on its first peer.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final, final

import attrs

from ._errors import LocalUsageError
from ._values import non_empty_str, str_tuple

__all__ = [
    "DEFAULT_MAX_CHANNELS_PER_SESSION",
    "DEFAULT_MAX_HUB_FRAME_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_METADATA_BYTES",
    "HUB_PROTOCOL_VERSION",
    "ClusterConfig",
    "DuplicateSessionPolicy",
    "HubConfig",
    "HubLinkConfig",
    "Limits",
    "PresenceConfig",
    "RosterConfig",
]

#: The hub protocol spoken by this release (REGISTER ``protocol``).
HUB_PROTOCOL_VERSION: Final = 1

#: A chat line or a game event fits many times over; a document does not
#: belong in a presence broadcast.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Status, avatar URL, a few flags; metadata is copied into every roster read.
DEFAULT_MAX_METADATA_BYTES: Final = 4 * 1024
#: Each channel costs an index entry here and on the hub for the session's life.
DEFAULT_MAX_CHANNELS_PER_SESSION: Final = 64
#: A hub frame carries one message plus routing: the message limit plus headroom.
DEFAULT_MAX_HUB_FRAME_BYTES: Final = DEFAULT_MAX_MESSAGE_BYTES + 16 * 1024


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        owner = type(instance).__name__
        raise LocalUsageError(f"{owner}: {attribute.name} must be a positive number, got {value!r}")


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
    max_hub_frame_bytes: int = attrs.field(default=DEFAULT_MAX_HUB_FRAME_BYTES, validator=_positive)


@final
@attrs.frozen(kw_only=True)
class HubLinkConfig:
    """How a bridge registers with a hub and keeps the link alive.

    The URL and token belong to the transport, so they live in the shim.
    """

    bridge_id: str = attrs.field(validator=_non_empty)
    instance_id: str = attrs.field(validator=_non_empty)
    channels: tuple[str, ...] = attrs.field(default=(), converter=_channels)
    capabilities: tuple[str, ...] = attrs.field(
        default=("broadcast", "direct", "disconnect", "metadata"),
        converter=_capabilities,
    )
    #: Used until REGISTERED says otherwise.
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

    #: Names the subjects: ``megapresence.<app>.fanout`` and ``.roster``.
    app: str = attrs.field(validator=_app_name)
    instance_id: str = attrs.field(validator=_non_empty)
    #: The boot of this instance (milliseconds since the epoch is a good choice):
    #: a larger epoch under the same instance id means a restart.
    epoch: int = attrs.field(validator=_epoch)
    #: Keep a cluster-wide roster; False fans out messages only.
    roster: bool = True
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
class RosterConfig:
    """A shared per-channel roster (Redis) wired to this process."""

    #: Seconds a member stays in the shared roster without a refresh: how long
    #: a crashed process's members can linger.
    ttl: float = attrs.field(default=60.0, validator=_positive)
    #: A third of the TTL: two refreshes may be lost before a live member expires.
    refresh_interval: float = attrs.field(default=20.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.refresh_interval >= self.ttl:
            raise LocalUsageError("RosterConfig: refresh_interval must be shorter than ttl")


@final
@attrs.frozen(kw_only=True)
class PresenceConfig:
    """Everything ``Presence`` needs to know about its place in the system."""

    hub: HubLinkConfig | None = None
    cluster: ClusterConfig | None = None
    roster: RosterConfig | None = None
    duplicate_session: DuplicateSessionPolicy = DuplicateSessionPolicy.DETACH_PRIOR
    limits: Limits = Limits()


@final
@attrs.frozen(kw_only=True)
class HubConfig:
    """Limits and timing of the hub server, each a cap on what one bridge can cost."""

    hub_id: str = attrs.field(validator=_non_empty)
    tokens: tuple[str, ...] = attrs.field(converter=tuple)
    heartbeat_interval: float = attrs.field(default=15.0, validator=_positive)
    dead_after_intervals: float = attrs.field(default=3.0, validator=_positive)
    #: A bridge must REGISTER this soon after the upgrade.
    register_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_frame_bytes: int = attrs.field(default=DEFAULT_MAX_HUB_FRAME_BYTES, validator=_positive)
    max_sessions_per_bridge: int = attrs.field(default=100_000, validator=_positive)
    max_channels_per_session: int = attrs.field(
        default=DEFAULT_MAX_CHANNELS_PER_SESSION, validator=_positive
    )
    max_metadata_bytes: int = attrs.field(default=DEFAULT_MAX_METADATA_BYTES, validator=_positive)
    #: Sustained frames per second per bridge; bursts up to ``frame_burst``.
    max_frames_per_second: float = attrs.field(default=2_000.0, validator=_positive)
    frame_burst: float = attrs.field(default=4_000.0, validator=_positive)
    #: Errors (bad or over-limit frames) a bridge may cause before it is closed.
    max_errors: int = attrs.field(default=3, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not self.tokens:
            raise LocalUsageError("HubConfig: tokens must hold at least one token")
        for token in self.tokens:
            non_empty_str("HubConfig", "each token", token)
