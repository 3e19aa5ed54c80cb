"""The client a trusted proxy forwarded a request for (``Forwarded``, ``X-Forwarded-For``)."""

from __future__ import annotations

import ipaddress

from ._config import Network
from ._http import HandshakeRequest

__all__ = ["forwarded_for"]


def _forwarded_nodes(request: HandshakeRequest) -> list[str]:
    """The addresses a chain of proxies listed, the client first: ``Forwarded``'s
    ``for=`` (RFC 7239) if present, else ``X-Forwarded-For``; every header line counts."""
    forwarded = [value for name, value in request.headers if name == "forwarded"]
    if forwarded:
        return [
            pair.partition("=")[2].strip().strip('"')
            for value in forwarded
            for element in value.split(",")
            for pair in element.split(";")
            if pair.strip().lower().startswith("for=")
        ]
    return [
        node.strip()
        for name, value in request.headers
        if name == "x-forwarded-for"
        for node in value.split(",")
    ]


def _node(text: str) -> tuple[str, int] | None:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80`` or ``2001:db8::1`` as (address, port)."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # "unknown", an obfuscated "_name", or garbage
    # Bounded before int() (which refuses over 4,300 digits): a port that is no port is ignored.
    valid = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) < 65536
    return str(address), int(port) if valid else 0


def forwarded_for(
    request: HandshakeRequest, peer: tuple[str, int], trusted: frozenset[Network]
) -> tuple[str, int] | None:
    """The client a trusted proxy forwarded ``request`` for, or None to keep the peer.

    Only a peer in ``trusted`` is believed. The chain is read from the right (the
    nearest proxy's entry) and trusted proxies are skipped, as uvicorn's
    ``--forwarded-allow-ips`` does: the first other address is the client, since
    what lies left of it was written by the client itself. An entry that is no
    address (``unknown``) ends the search with the nearest proxy's word.
    """

    def is_trusted(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in trusted)

    if not is_trusted(peer[0]):
        return None
    client = None
    for text in reversed(_forwarded_nodes(request)):
        node = _node(text)
        if node is None:
            break
        client = node
        if not is_trusted(node[0]):
            break
    return client
