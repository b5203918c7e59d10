"""Logging set-up and the masking of secrets in logged requests.

Tornado's own request summary and access log print the URI with its query string, and
browsers send the access token as `?token=...`, so every handler logs requests through
`mask_uri` instead.
"""

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

access_log = logging.getLogger("taxi.access")

MASK = "********"
SECRET_PARAMETERS = frozenset({"token", "access", "refresh", "password", "api_key"})
_SECRET_IN_QUERY = re.compile(r"(?i)((?:^|[&;])(?:%s)=)[^&;]*" % "|".join(SECRET_PARAMETERS))


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def mask_uri(uri: str) -> str:
    """Return `uri` with the values of secret query parameters replaced by a mask."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if not parts.query:
        return uri
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        # A query that does not parse is masked by pattern, so odd input cannot slip a token through.
        return urlunsplit(parts._replace(query=_SECRET_IN_QUERY.sub(r"\1" + MASK, parts.query)))
    masked = [(name, MASK if name.lower() in SECRET_PARAMETERS else value) for name, value in pairs]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*")))


def request_summary(request) -> str:
    return f"{request.method} {mask_uri(request.uri)} ({request.remote_ip})"


def log_request(handler) -> None:
    """Write one access-log line per request; used as Tornado's `log_function`."""
    status = handler.get_status()
    if status < 400:
        log = access_log.info
    elif status < 500:
        log = access_log.warning
    else:
        log = access_log.error
    duration_ms = 1000.0 * handler.request.request_time()
    log("%d %s %.2fms", status, request_summary(handler.request), duration_ms)
