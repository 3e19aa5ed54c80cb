"""Printing a server URL without its secret (for the shims' logs and errors)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with any password (or token in the user part) replaced by ``***``."""
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
