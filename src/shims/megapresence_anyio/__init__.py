"""megapresence_anyio: presence over real WebSockets on asyncio and trio (anyio + wsproto).

``PresenceServer`` serves client sockets (on its own port, or mounted in an
ASGI app as ``PresenceASGI``), ``HubServer`` is the hub, and the
``megapresence`` command runs either from a shell.
"""

from typing import TYPE_CHECKING, Any

from megapresence_core import PresenceMode, Sender
from megapresence_core import __version__ as __version__

from ._asgi import PresenceASGI
from ._commands import handle_command
from ._config import DEFAULT_HUB_LIMITS, DEFAULT_SOCKET_LIMITS, SocketLimits
from ._http import HandshakeRequest
from ._ops import DEFAULT_METRICS_ACCESS, MetricsAccess
from ._server import Client, PresenceServer, SubscriptionHook
from ._tls import client_context, server_context
from ._types import (
    ChannelStats,
    ClusterBackend,
    Identity,
    Refusal,
    RosterBackend,
    StreamStoreBackend,
    Verdict,
)

if TYPE_CHECKING:
    from ._hub_server import HubServer
    from ._jwt import JwtAuthenticator

#: Names a presence server does not use, imported on first use (it boots sooner).
_LAZY = {"HubServer": "._hub_server", "JwtAuthenticator": "._jwt"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_HUB_LIMITS",
    "DEFAULT_METRICS_ACCESS",
    "DEFAULT_SOCKET_LIMITS",
    "ChannelStats",
    "Client",
    "ClusterBackend",
    "HandshakeRequest",
    "HubServer",
    "Identity",
    "JwtAuthenticator",
    "MetricsAccess",
    "PresenceASGI",
    "PresenceMode",
    "PresenceServer",
    "Refusal",
    "RosterBackend",
    "Sender",
    "SocketLimits",
    "StreamStoreBackend",
    "SubscriptionHook",
    "Verdict",
    "client_context",
    "handle_command",
    "server_context",
]
