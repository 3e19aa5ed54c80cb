"""The files a ``PresenceServer`` serves itself: the JavaScript client, at ``/megapresence.js``.

The client is an ES module shipped in the package (``static/megapresence.js``)
and served by every ``PresenceServer``, on its own port or mounted in an ASGI
app (route ``/megapresence.js`` to ``server.asgi()``), so a page loads it with
``import { PresenceClient } from "/megapresence.js"``. Its path has no version
in it, so it is served ``cache-control: no-cache`` with an ``etag``: a browser
keeps its copy and revalidates it on each load, and an unchanged file costs a
``304`` without a body.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from typing import Final

from ._http import HandshakeRequest
from ._ops import Response

__all__ = ["CLIENT_PATH", "client_script", "static_answer"]

#: Where the JavaScript client is served.
CLIENT_PATH: Final = "/megapresence.js"
_CONTENT_TYPE: Final = "text/javascript; charset=utf-8"


@functools.cache
def client_script() -> bytes:
    """The JavaScript client's source."""
    return importlib.resources.files(__package__).joinpath("static/megapresence.js").read_bytes()


@functools.cache
def _etag() -> str:
    return '"' + hashlib.sha256(client_script()).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def static_answer(request: HandshakeRequest) -> Response | None:
    """The answer to a request for the client, or None for any other path."""
    if request.path != CLIENT_PATH:
        return None
    if request.method not in ("GET", "HEAD"):
        return Response(405, b"", headers=(("allow", "GET, HEAD"),))
    etag = _etag()
    headers = (("cache-control", "no-cache"), ("etag", etag))
    if _matches(request.header("if-none-match"), etag):
        return Response(304, b"", _CONTENT_TYPE, headers)
    return Response(200, client_script(), _CONTENT_TYPE, headers)
