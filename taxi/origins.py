"""Which browser origins may open a socket.

A 403 at the handshake almost always means `ALLOWED_ORIGINS` does not list the page's
origin. Without `ALLOWED_ORIGINS`, only pages served from the same host and port as the
server may connect; the scheme is not compared, so a TLS-terminating proxy in front of
the server works.
"""

from urllib.parse import urlsplit

from settings import normalize_origin


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...] | None) -> bool:
    """Return True when a handshake with this `Origin` header may open a socket.

    `allowed` is the parsed `ALLOWED_ORIGINS`: None for the same-host rule, or normalized
    origins, where "*" allows any. A request without `Origin` comes from a program, not
    a browser, and is allowed; cross-site protection only matters for browsers.
    """
    if origin is None:
        return True
    if allowed is None:
        return _same_host(origin, host)
    if "*" in allowed:
        return True
    return normalize_origin(origin) in allowed


def _same_host(origin: str, host: str | None) -> bool:
    if not host:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.strip().lower()
