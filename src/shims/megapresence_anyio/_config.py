"""Socket-level limits, each a named setting with a default and the close code it leads to."""

from __future__ import annotations

import ipaddress
from typing import Any, Final, final

import attrs

from megapresence_core import LocalUsageError

__all__ = ["DEFAULT_HUB_LIMITS", "DEFAULT_SOCKET_LIMITS", "SocketLimits"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be a positive number, got {value!r}"
        )


def _flag(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise LocalUsageError(
            f"{type(instance).__name__}: {attribute.name} must be True or False, got {value!r}"
        )


def _origins(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise LocalUsageError("SocketLimits: allowed_origins must be a collection of origins")
    return frozenset(str(origin).rstrip("/").lower() for origin in value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(value: Any, *, what: str = "SocketLimits: trusted_proxies") -> frozenset[Network]:
    """Addresses and CIDR ranges (``"10.0.0.0/8"``, ``"::1"``) as networks; misuse raises."""
    if isinstance(value, str):
        raise LocalUsageError(f"{what} must be a collection of addresses or ranges")
    found = set()
    for item in value:
        try:
            found.add(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise LocalUsageError(
                f"{what}: {item!r} is not an address or a CIDR range (10.0.0.0/8, ::1)"
            ) from None
    return frozenset(found)


@final
@attrs.frozen(kw_only=True)
class SocketLimits:
    """What one peer may cost this server, and what happens past each limit."""

    #: A message (all its fragments), in bytes of UTF-8, above this is refused
    #: with 1009 before it is buffered whole.
    max_message_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    #: Fragments per message; more is a protocol abuse, closed with 1008.
    max_fragments: int = attrs.field(default=64, validator=_positive)
    #: Bytes queued for a peer behind the frame it is being sent; past it, 1013
    #: (slow consumer). The frame in flight does not count, so one frame larger
    #: than this still reaches a peer that reads.
    max_send_buffer: int = attrs.field(default=1024 * 1024, validator=_positive)
    #: Queued bytes for a peer that the kernel has not taken any of for this long:
    #: the peer reads nothing, so it is a slow consumer too (1013), however little
    #: is queued. What was queued for it (a snapshot, say) is freed then, not when
    #: the keepalive gives up on it, which a peer that answers pings never lets happen.
    send_stall_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: How long an awaited ``on_open``, ``on_message`` or ``authorize_subscription``
    #: may take: past it the hook is cancelled; ``on_open`` and ``on_message``
    #: close the connection (1011), a subscription is refused (``forbidden``).
    #: (``authenticate`` is bounded by ``handshake_timeout``.)
    hook_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: ``authorize_subscription`` calls awaited at once for one connection; past
    #: it a ``subscribe`` is refused with ``rate_limited`` without asking the hook.
    max_pending_hooks: int = attrs.field(default=16, validator=_positive)
    #: Silence after which a Ping is sent...
    ping_interval: float = attrs.field(default=20.0, validator=_positive)
    #: ...and how long the Pong (or anything) may take before 1011.
    ping_timeout: float = attrs.field(default=20.0, validator=_positive)
    #: From accept to the upgrade: reading the request (HTTP 408 past it) and
    #: ``authenticate`` (HTTP 503 past it). Browsers need milliseconds.
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Request line plus headers; larger gets HTTP 431.
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    #: After our close frame, how long the peer has to answer before we drop it.
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Sockets still in their handshake, from every address. At the cap a new
    #: socket pushes out the oldest pending one (HTTP 503), so half-open
    #: sockets can delay a client but never lock it out.
    max_pending_handshakes: int = attrs.field(default=512, validator=_positive)
    #: Sockets in their handshake from one address; past it a new socket from
    #: that address gets HTTP 429 at once and pushes out nobody.
    max_pending_per_address: int = attrs.field(default=64, validator=_positive)
    #: Open (upgraded) sockets at once; more get HTTP 503. Counted at the
    #: upgrade, not at accept: a socket in its handshake holds none of these.
    max_connections: int = attrs.field(default=10_000, validator=_positive)
    #: Open sockets from one address; more get HTTP 429.
    max_connections_per_address: int = attrs.field(default=1_000, validator=_positive)
    #: Origins allowed to open a socket (HTTP 403 otherwise), each written
    #: ``scheme://host[:port]`` (a trailing ``/`` here is dropped); None allows
    #: any, which suits non-browser clients only.
    allowed_origins: frozenset[str] | None = attrs.field(default=None, converter=_origins)
    #: Reverse proxies (addresses or CIDR ranges) whose ``Forwarded`` or
    #: ``X-Forwarded-For`` header is believed: a socket from one of them counts
    #: under its client's address in the open-connection caps, is logged with
    #: it, and ``HandshakeRequest.remote`` is that client. Empty: believe no one.
    trusted_proxies: frozenset[Network] = attrs.field(default=frozenset(), converter=networks)
    #: Accept permessage-deflate (RFC 7692) when a client offers it: broadcasts
    #: are compressed once for every such client, and what a client sends is
    #: inflated within ``max_message_bytes``. Off by default: on loopback it
    #: costs CPU to save bytes (benchmarks/README.md measures both).
    permessage_deflate: bool = attrs.field(default=False, validator=_flag)

    def origin_allowed(self, origin: str | None) -> bool:
        """A browser sends its serialized origin (RFC 6454: ``scheme://host[:port]``,
        no path, not even ``/``), so only that is compared; case aside, exactly."""
        if self.allowed_origins is None:
            return True
        return origin is not None and origin.lower() in self.allowed_origins


DEFAULT_SOCKET_LIMITS: Final = SocketLimits()

#: ``HubServer``'s default: its open sockets are bridge links (server
#: processes), so the connection caps are those of a cluster, not of a crowd.
#: The hub reads ``max_message_bytes`` from ``HubConfig.max_frame_bytes``.
DEFAULT_HUB_LIMITS: Final = SocketLimits(max_connections=1_000, max_connections_per_address=256)
