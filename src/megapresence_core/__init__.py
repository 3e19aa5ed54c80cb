"""megapresence_core: the sans-IO heart of megapresence.

Pure state machines (no sockets, clocks, threads or event loops): events in,
actions out. ``Presence`` is a server process's machine, ``Hub`` the hub's.
This module exports what an embedding program needs; the rest lives in named
public submodules: ``megapresence_core.events`` and ``.actions`` (every event
and action, including the hub link's, the cluster's and the hub's),
``.wire`` (frames, cluster messages, browser commands and their codec),
``.config``, ``.errors``, ``.lifecycle`` (every state) and ``.hub``.

Glossary (one word, one meaning, in the code and the docs):

ns
    A WebSocket path; every open connection belongs to exactly one.
channel
    A named group of sessions: the unit of hub routing, of the shared store,
    of channel-scoped delivery (publish) and of presence to watchers.
subscription
    A session's membership of a channel, with a presence mode (``none``,
    ``users``, ``sessions`` or ``count``). The channels of a join are its
    first subscriptions, in mode ``none``; subscriptions belong to the session,
    not to the connection carrying it.
watcher
    A connection subscribed in mode users, sessions or count: it gets a
    snapshot, then coalesced diffs (or counts), of that channel.
connection
    One open WebSocket, known to the core by an opaque hashable id (``conn``).
user
    Who is connected, as the embedding program authenticated them (``user_id``).
session
    A joined connection's globally unique id (``session_id``); it may move to
    another connection of the SAME user, never to another user's.
member
    A session as presence reports it: session id, user id, metadata.
roster
    The members of an ns or a channel: a query's answer. A channel roster is
    also what this process knows of a channel's members, cluster-wide (local
    sessions, plus remote ones learnt through the hub link or the cluster),
    with counts kept as it changes.
grace
    How long a session whose socket closed stays listed (lingering) before
    it leaves; a return within it is no leave and no join.
window
    The time over which a channel's presence changes are coalesced into one
    diff per watcher.
store
    The shared per-channel record of members kept outside the process (Redis):
    this process writes its own entries there, a roster read merges them.
hub
    The hub server machine (``Hub``), which routes between bridges.
hub link
    A bridge's link to the hub (``PresenceConfig.hub_link``).
bridge
    A presence server as the hub sees it (``hub.Bridge``).
interest
    A channel a bridge follows without a member in it (``HubLinkConfig.channels``,
    sent in REGISTER), so the hub routes that channel's traffic to it. (Version
    1 bridges said so with a placeholder session the hub now reads as interest.)
cluster
    The instances of one app linked by NATS; the cluster link is one
    instance's part in it.
instance
    One server process in a cluster.
epoch
    An incarnation: an instance's boot epoch, a hub's id. A newer epoch means
    the old incarnation's state is gone. A channel stream's epoch names one life
    of its history: a new one means publications before it may be lost.
stream, offset
    A channel's publications in order on this process, each with its offset
    (1, 2, 3...); its recent ones are kept as history, so a client that comes
    back with ``since: {offset, epoch}`` recovers what it missed.
stream owner, stream store
    Who numbers the streams when this process does not: the hub (a streaming hub
    link) or a stream store, an engine all processes share (JetStream, Redis
    Streams) that the shim drives with ``StreamAppend``/``StreamRead`` and
    reports through ``StreamPublished``/``StreamReadDone``.
frame, message, command, client frame
    What travels: a hub protocol frame; a cluster message (and, inside both,
    an application ``Message``); a browser's command to its server; a
    server's text frame to a browser.
peer
    Whatever is at the other end of a socket or link (a browser, a bridge,
    the hub, another instance); ``PeerError`` is its bad input.
"""

from ._presence import Presence
from ._values import Member, Message, PresenceMode, Sender
from ._version import __version__ as __version__
from .actions import Action, CloseConnection, Deliver, Log, LogLevel, RequestRefused
from .config import (
    ClusterConfig,
    DuplicateSessionPolicy,
    HubConfig,
    HubLinkConfig,
    Limits,
    PresenceConfig,
    StoreConfig,
)
from .errors import CloseCode, LocalUsageError, PeerError, PresenceError
from .events import (
    BroadcastRequested,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    Event,
    KickRequested,
    MetadataUpdated,
    PublishRequested,
    SessionJoined,
    ShutdownRequested,
    Subscribe,
    Tick,
    Unsubscribe,
)
from .hub import Hub

__all__ = [
    "Action",
    "BroadcastRequested",
    "CloseCode",
    "CloseConnection",
    "ClusterConfig",
    "ConnectionClosed",
    "ConnectionOpened",
    "Deliver",
    "DirectRequested",
    "DuplicateSessionPolicy",
    "Event",
    "Hub",
    "HubConfig",
    "HubLinkConfig",
    "KickRequested",
    "Limits",
    "LocalUsageError",
    "Log",
    "LogLevel",
    "Member",
    "Message",
    "MetadataUpdated",
    "PeerError",
    "Presence",
    "PresenceConfig",
    "PresenceError",
    "PresenceMode",
    "PublishRequested",
    "RequestRefused",
    "Sender",
    "SessionJoined",
    "ShutdownRequested",
    "StoreConfig",
    "Subscribe",
    "Tick",
    "Unsubscribe",
]
