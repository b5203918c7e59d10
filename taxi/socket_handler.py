"""The `/taxi/` WebSocket: authentication at the handshake, groups, and messages.

The handshake is a row of gates in `prepare`, each ending the request with an HTTP
error before the upgrade: find the token, authenticate it (401, or 503 when MongoDB does
not answer), then check the origin (403). `open` therefore only runs for an accepted,
active user.
"""

import asyncio
import enum
import logging

import tornado.web
import tornado.websocket

from taxi import messages, tokens
from taxi.auth import AuthenticationFailed
from taxi.database import DatabaseUnavailable
from taxi.origins import origin_allowed
from taxi.web import ClientError, TaxiHandlerMixin

logger = logging.getLogger(__name__)

CLOSE_UNSUPPORTED_DATA = 1003

MISSING_TOKEN_DETAIL = (
    "Authentication credentials were not provided: pass the access token as ?token=<access> "
    "or in an 'Authorization: Bearer <access>' header."
)
EXPIRED_TOKEN_DETAIL = "The access token has expired; refresh it and connect again."
INVALID_TOKEN_DETAIL = "The access token is not valid, or its user is unknown or inactive."
UNAVAILABLE_DETAIL = "The user database is not answering; try again shortly."
ORIGIN_DETAIL = "This origin may not open sockets here; the server's ALLOWED_ORIGINS decides which may."

# Sockets leave their groups in a task started from `on_close`, which Tornado calls
# synchronously; the set keeps those tasks referenced until they finish.
_leave_tasks: set[asyncio.Task] = set()


class SocketState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class TaxiSocket(TaxiHandlerMixin, tornado.websocket.WebSocketHandler):
    def initialize(self, services):
        self.services = services
        self.state = SocketState.CONNECTING
        self.user = None
        self.claims = None
        self.memberships: set[str] = set()

    async def prepare(self):
        token = self.find_token()
        try:
            self.user, self.claims = await self.services.authenticator.authenticate(token, tokens.ACCESS)
        except AuthenticationFailed as failure:
            logger.warning("Socket handshake rejected (401) from %s: %s; user_id=%s jti=%s",
                           self.request.remote_ip, failure.reason, failure.user_id, failure.jti)
            raise ClientError(401, self.detail_for(token, failure)) from None
        except DatabaseUnavailable as error:
            logger.error("Socket handshake failed (503) from %s: MongoDB unavailable: %s",
                         self.request.remote_ip, error)
            self.set_header("Retry-After", "5")
            raise ClientError(503, UNAVAILABLE_DETAIL) from None

        origin = self.request.headers.get("Origin")
        if not origin_allowed(origin, self.request.headers.get("Host"), self.services.settings.allowed_origins):
            logger.warning("Socket handshake rejected (403) for user %s from %s: origin %r is not allowed",
                           self.user.id, self.request.remote_ip, origin)
            raise ClientError(403, ORIGIN_DETAIL)

    def find_token(self) -> str | None:
        """Return the token from `?token=`, else from an `Authorization: Bearer` header."""
        token = self.get_query_argument("token", None)
        if token:
            return token
        scheme, _, credentials = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None

    @staticmethod
    def detail_for(token, failure: AuthenticationFailed) -> str:
        if not token:
            return MISSING_TOKEN_DETAIL
        if failure.reason == "token has expired":
            return EXPIRED_TOKEN_DETAIL
        return INVALID_TOKEN_DETAIL

    def check_origin(self, origin: str) -> bool:
        # `prepare` has already applied the origin rule, with its own 403 body.
        return True

    async def open(self):
        self.state = SocketState.OPEN
        self.services.sockets.add(self)
        logger.info("Socket opened for user %s (%s) from %s", self.user.id, self.user.group, self.request.remote_ip)
        for group in initial_groups(self.user):
            await self.join(group)

    async def join(self, group: str) -> None:
        """Add this socket to `group`, unless it closed meanwhile."""
        if self.state is not SocketState.OPEN:
            return
        self.memberships.add(group)
        await self.services.groups.group_add(group, self)
        if self.state is not SocketState.OPEN:
            # The socket closed while the backend was adding it, after `on_close` had
            # already discarded its memberships; undo the late add.
            await self.services.groups.group_discard(group, self)

    async def leave_all_groups(self) -> None:
        for group in tuple(self.memberships):
            try:
                await self.services.groups.group_discard(group, self)
            except Exception:
                logger.exception("Socket of user %s: leaving group %s failed", self.user.id, group)
        self.memberships.clear()

    def on_message(self, message):
        if isinstance(message, bytes):
            logger.info("Closing socket of user %s: it sent a binary frame", self.user.id)
            self.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
            return
        try:
            self.handle_message(message)
        except messages.InvalidMessage as invalid:
            self.send_message(messages.error(invalid.code, invalid.detail))

    def handle_message(self, text: str) -> None:
        message = messages.parse(text)
        message_type = message["type"]
        if message_type == "echo.message":
            # The client's own text is sent back, which is the same object without re-encoding it.
            self.send_text(text)
            return
        raise messages.unknown_type(message_type)

    def send_message(self, message: dict) -> None:
        self.send_payload(messages.encode(message))

    def send_text(self, text: str) -> None:
        self.send_payload(text.encode("utf-8"))

    def send_payload(self, payload: bytes) -> None:
        """Queue one text frame holding `payload` (UTF-8 JSON); skipped once the socket is closing."""
        if self.state is not SocketState.OPEN or self.ws_connection is None or self.ws_connection.is_closing():
            return
        # Bytes with binary=False go out as a text frame without being decoded and encoded again.
        future = self.ws_connection.write_message(payload, binary=False)
        future.add_done_callback(_ignore_closed_connection)

    def on_close(self):
        was_open = self.state is SocketState.OPEN
        self.state = SocketState.CLOSED
        if self.user is None or not was_open:
            return
        self.services.sockets.discard(self)
        logger.info("Socket closed for user %s (code %s)", self.user.id, self.close_code)
        task = asyncio.ensure_future(self.leave_all_groups())
        _leave_tasks.add(task)
        task.add_done_callback(_leave_tasks.discard)


    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        if self.ws_connection is not None and self.ws_connection.stream is not None:
            # Closing the stream makes Tornado call `on_close`, as for any dropped connection.
            self.ws_connection.stream.close()


def initial_groups(user) -> list[str]:
    """Return the groups a user's socket joins on open: everyone, the user, and riders or drivers."""
    return ["test", f"user.{user.id}", "drivers" if user.group == "driver" else "riders"]


def _ignore_closed_connection(future: asyncio.Future) -> None:
    # A peer that vanished mid-write is normal; `on_close` cleans up after it.
    if not future.cancelled():
        error = future.exception()
        if error is not None and not isinstance(error, tornado.websocket.WebSocketClosedError):
            logger.error("Writing to a socket failed", exc_info=error)
