"""Behaviour shared by every taxi request handler: JSON errors and logs without secrets."""

import http
import json
import logging

import tornado.web

from taxi import logs

logger = logging.getLogger(__name__)


class ClientError(tornado.web.HTTPError):
    """An HTTP error whose body is `body` as JSON, by default `{"detail": detail}`.

    The detail is kept out of the status line (Tornado's `reason`), so it may quote
    what the client sent.
    """

    def __init__(self, status: int, detail: str = "", body: dict | None = None):
        super().__init__(status)
        self.body = body if body is not None else {"detail": detail}


class TaxiHandlerMixin:
    """Mixed into both the HTTP handlers and the socket handler, ahead of Tornado's base class."""

    def _request_summary(self) -> str:
        # Tornado's version prints the raw URI, token included.
        return logs.request_summary(self.request)

    def log_exception(self, error_type, error, traceback) -> None:
        if isinstance(error, tornado.web.HTTPError):
            if error.log_message:
                logger.warning("%d %s: %s", error.status_code, self._request_summary(), error.log_message)
            return
        # Tornado's version also prints repr(request), which contains the URI.
        logger.error("Uncaught exception in %s", self._request_summary(), exc_info=(error_type, error, traceback))

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ClientError):
            body = error.body
        elif status_code >= 500:
            body = {"detail": "Internal server error."}
        else:
            body = {"detail": http.HTTPStatus(status_code).phrase + "."}
        self.write_json(body)

    def write_json(self, body, status: int | None = None) -> None:
        if status is not None:
            self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body, ensure_ascii=False))


class NotFoundHandler(TaxiHandlerMixin, tornado.web.RequestHandler):
    """Respond with a JSON 404 to paths that match no route."""

    def prepare(self):
        raise ClientError(404, "Not found.")
