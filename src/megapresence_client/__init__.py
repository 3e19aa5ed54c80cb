"""megapresence_client: a Python client of a megapresence server (asyncio and trio, via anyio).

It speaks the client protocol of docs/protocol.md over wsproto: connects with the
embedder's credentials, subscribes with presence modes and keeps each channel's
map from snapshots and diffs, publishes, broadcasts, sends direct messages and
metadata, asks for the roster, reconnects by close code with jittered backoff,
subscribes again after every reconnect, and recovers missed channel messages
with ``since``. See docs/client.md.
"""

from megapresence_core import __version__ as __version__

from ._client import (
    ClientClosedError,
    ConnectFailedError,
    PresenceClient,
    PresenceMode,
    Subscription,
    SubscriptionRefusedError,
    connect,
    is_reserved,
)
from ._events import (
    Broadcast,
    ChannelMessage,
    Closed,
    Connected,
    CountChanged,
    Direct,
    Disconnected,
    Event,
    PresenceChanged,
    Sender,
    ServerError,
    SessionDetached,
    StreamMissed,
    StreamReset,
    Subscribed,
    Unsubscribed,
)
from ._plan import Backoff, Position, plan_for_close, plan_for_status

__all__ = [
    "Backoff",
    "Broadcast",
    "ChannelMessage",
    "ClientClosedError",
    "Closed",
    "ConnectFailedError",
    "Connected",
    "CountChanged",
    "Direct",
    "Disconnected",
    "Event",
    "Position",
    "PresenceChanged",
    "PresenceClient",
    "PresenceMode",
    "Sender",
    "ServerError",
    "SessionDetached",
    "StreamMissed",
    "StreamReset",
    "Subscribed",
    "Subscription",
    "SubscriptionRefusedError",
    "Unsubscribed",
    "connect",
    "is_reserved",
    "plan_for_close",
    "plan_for_status",
]
