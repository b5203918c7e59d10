"""Logging set-up and the masking of secrets in logged requests.

Tornado's own request summary and access log print the URI with its query string, and
browsers send the access token as `?token=...`, so every handler logs requests through
`mask_uri` instead.
"""

import logging
import re
from urllib.parse import unquote_plus

access_log = logging.getLogger("taxi.access")

MASK = "********"
SECRET_PARAMETERS = frozenset({"token", "access", "refresh", "password", "api_key"})


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def mask_uri(uri: str) -> str:
    """Return `uri` with the values of secret query parameters replaced by a mask.

    Names are compared after percent-decoding, as the server reads them, so
    `?t%6Fken=...` is masked too; both `&` and `;` count as separators, so nothing
    that any parser might read as a token is left in the clear.
    """
    path, separator, query = uri.partition("?")
    if not separator:
        return uri
    pieces = re.split(r"([&;])", query)
    for index in range(0, len(pieces), 2):
        name, equals, _ = pieces[index].partition("=")
        if equals and unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            pieces[index] = f"{name}={MASK}"
    return f"{path}?{''.join(pieces)}"


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
