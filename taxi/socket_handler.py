"""The `/taxi/` WebSocket: authentication at the handshake, groups, and messages.

The handshake is a row of gates in `prepare`, each ending the request with an HTTP
error before the upgrade: find the token, authenticate it (401, or 503 when MongoDB does
not answer), check the origin (403), then count the user's sockets (429). `open`
therefore only runs for an accepted, active user.

An open socket is closed by the server when its access token runs out (4001, unless an
`auth.refresh` message extended it), when its client sends faster than the message
rate limit allows (1008), or when its unsent backlog passes `MAX_SEND_BACKLOG` (1008).
Every close the server starts drops the connection if the client has not completed
the closing handshake within `CLOSE_GRACE` seconds.
"""

import asyncio
import enum
import logging
import time

import tornado.web
import tornado.websocket

from taxi import messages, tokens
from taxi.auth import AuthenticationFailed
from taxi.database import DatabaseUnavailable
from taxi.limits import MessageRateLimiter, Verdict
from taxi.origins import origin_allowed
from taxi.protocol import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNSUPPORTED_DATA,
    TaxiProtocol,
    unsent_bytes,
)
from taxi.web import ClientError, TaxiHandlerMixin

logger = logging.getLogger(__name__)

# Seconds a close started by the server waits for the client's close frame. A slow
# consumer's close frame sits behind its unsent backlog and may never arrive, so the
# connection is dropped after this instead of Tornado's own 5 seconds.
CLOSE_GRACE = 2.0

MISSING_TOKEN_DETAIL = (
    "Authentication credentials were not provided: pass the access token as ?token=<access> "
    "or in an 'Authorization: Bearer <access>' header."
)
EXPIRED_TOKEN_DETAIL = "The access token has expired; refresh it and connect again."
INVALID_TOKEN_DETAIL = "The access token is not valid, or its user is unknown or inactive."
UNAVAILABLE_DETAIL = "The user database is not answering; try again shortly."
NOT_AN_UPGRADE_DETAIL = "This endpoint only accepts WebSocket handshakes (Upgrade: websocket)."
ORIGIN_DETAIL = "This origin may not open sockets here; the server's ALLOWED_ORIGINS decides which may."
TOO_MANY_SOCKETS_DETAIL = (
    "This user already has {count} open sockets, the most MAX_SOCKETS_PER_USER allows; close one and connect again."
)

RATE_LIMITED_DETAIL = (
    "Too many messages: at most {rate:g} per second, in bursts of up to {burst}; this message was dropped."
)
REFRESH_NEEDS_TOKEN_DETAIL = 'auth.refresh needs "data": {"token": "<access token>"}.'
REFRESH_INVALID_DETAIL = (
    "The token is not a valid access token for an active user; the socket keeps its old expiry."
)
REFRESH_OTHER_USER_DETAIL = "The token belongs to another user; the socket keeps its old expiry."

# Sockets leave their groups in a task started from `on_close`, which Tornado calls
# synchronously; the set keeps those tasks referenced until they finish.
_leave_tasks: set[asyncio.Task] = set()


class SocketState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    # The server has sent its close frame and waits for the client's.
    CLOSING = "closing"
    CLOSED = "closed"


class TaxiSocket(TaxiHandlerMixin, tornado.websocket.WebSocketHandler):
    def initialize(self, services):
        self.services = services
        self.state = SocketState.CONNECTING
        self.user = None
        self.claims = None
        self.memberships: set[str] = set()
        self.stream = None
        self.rate_limiter = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None

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

        # Nothing awaits between the end of `prepare` and `open` adding the socket to
        # `services.sockets`, so concurrent handshakes of one user cannot all pass this.
        limit = self.services.settings.max_sockets_per_user
        count = self.services.sockets.count_of_user(self.user.id)
        if limit and count >= limit:
            logger.warning("Socket handshake rejected (429) for user %s from %s: %d sockets open, "
                           "MAX_SOCKETS_PER_USER is %d", self.user.id, self.request.remote_ip, count, limit)
            raise ClientError(429, TOO_MANY_SOCKETS_DETAIL.format(count=count))

        # Tornado makes the same check after `prepare`, but responds in plain text.
        connection = self.request.headers.get("Connection", "").lower()
        if self.request.headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            raise ClientError(400, NOT_AN_UPGRADE_DETAIL)

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

    def get_websocket_protocol(self):
        base = super().get_websocket_protocol()
        if base is None:
            return None
        return TaxiProtocol(self, False, base.params)

    async def open(self):
        self.state = SocketState.OPEN
        # Kept because `close()` sets `ws_connection` to None, and `abort` still needs the stream.
        self.stream = self.ws_connection.stream
        self.schedule_expiry()
        self.services.sockets.add(self)
        self.services.watcher.ensure_running()
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
        """Handle one client message; returns an awaitable only for `auth.refresh`.

        Tornado waits for that awaitable before it reads the next frame, so a client's
        messages are handled in order. Everything else is answered synchronously,
        without a task per message.
        """
        if self.state is not SocketState.OPEN:
            return None
        if isinstance(message, bytes):
            logger.info("Closing socket of user %s: it sent a binary frame", self.user.id)
            self.close_with(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
            return None
        verdict = self.check_rate()
        if verdict is Verdict.REJECT:
            settings = self.services.settings
            detail = RATE_LIMITED_DETAIL.format(rate=settings.max_messages_per_second, burst=settings.message_burst)
            self.send_message(messages.error(messages.RATE_LIMITED, detail))
            return None
        if verdict is Verdict.CLOSE:
            logger.warning("Closing socket of user %s with %d: it kept sending over the message rate limit",
                           self.user.id, CLOSE_POLICY_VIOLATION)
            self.close_with(CLOSE_POLICY_VIOLATION, "message rate limit exceeded")
            return None
        try:
            return self.handle_message(message)
        except messages.InvalidMessage as invalid:
            self.send_message(messages.error(invalid.code, invalid.detail))
            return None

    def check_rate(self) -> Verdict:
        settings = self.services.settings
        if not settings.max_messages_per_second:
            return Verdict.ACCEPT
        if self.rate_limiter is None:
            # Made at the first message rather than at open, so that idle sockets do not
            # carry it; its bucket starts full either way.
            self.rate_limiter = MessageRateLimiter(settings.max_messages_per_second, settings.message_burst)
        return self.rate_limiter.check()

    def handle_message(self, text: str):
        message = messages.parse(text)
        message_type = message["type"]
        if message_type == "echo.message":
            # The client's own text is sent back, which is the same object without re-encoding it.
            self.send_text(text)
            return None
        if message_type == "auth.refresh":
            return self.refresh_token(message.get("data"))
        raise messages.unknown_type(message_type)

    async def refresh_token(self, data) -> None:
        """Extend the socket's lifetime to that of a newer access token for the same user."""
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            self.send_message(messages.error(messages.INVALID_MESSAGE, REFRESH_NEEDS_TOKEN_DETAIL))
            return
        try:
            user, claims = await self.services.authenticator.authenticate(token, tokens.ACCESS)
        except AuthenticationFailed as failure:
            logger.warning("auth.refresh rejected for user %s: %s; token user_id=%s jti=%s",
                           self.user.id, failure.reason, failure.user_id, failure.jti)
            self.send_message(messages.error(messages.INVALID_TOKEN, REFRESH_INVALID_DETAIL))
            return
        except DatabaseUnavailable as error:
            logger.error("auth.refresh for user %s failed: MongoDB unavailable: %s", self.user.id, error)
            self.send_message(messages.error(messages.UNAVAILABLE, UNAVAILABLE_DETAIL))
            return
        if user.id != self.user.id:
            logger.warning("auth.refresh rejected for user %s: the token is for user %s (jti=%s)",
                           self.user.id, user.id, claims.jti)
            self.send_message(messages.error(messages.INVALID_TOKEN, REFRESH_OTHER_USER_DETAIL))
            return
        if self.state is not SocketState.OPEN:
            return
        # A token that expires sooner than the current one does not shorten the socket.
        if claims.exp > self.claims.exp:
            self.claims = claims
            self.schedule_expiry()
        logger.info("Socket of user %s refreshed until exp %d (jti=%s)", self.user.id, self.claims.exp, claims.jti)
        self.send_message({"type": "auth.refreshed", "data": {"exp": self.claims.exp}})

    def schedule_expiry(self) -> None:
        """Arm the one timer that closes this socket when its access token runs out.

        The deadline is `exp` plus JWT_LEEWAY, the same tolerance the handshake allows.
        """
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        deadline = self.claims.exp + self.services.authenticator.leeway
        # `exp` is wall-clock time; the loop's clock is monotonic, so convert through the delay.
        delay = max(0.0, deadline - time.time())
        self._expiry_timer = loop.call_at(loop.time() + delay, self.on_token_expired)

    def on_token_expired(self) -> None:
        self._expiry_timer = None
        if self.state is SocketState.OPEN:
            logger.info("Closing socket of user %s with %d: access token expired (exp %d)",
                        self.user.id, CLOSE_TOKEN_EXPIRED, self.claims.exp)
            self.close_with(CLOSE_TOKEN_EXPIRED, "access token expired")

    def close_with(self, code: int, reason: str) -> bool:
        """Start the closing handshake, and drop the connection if it is not done in CLOSE_GRACE seconds.

        Returns False, doing nothing, once the socket is closing or closed, so that
        callers log each close once.
        """
        if self.state is not SocketState.OPEN:
            return False
        self.state = SocketState.CLOSING
        self.close(code, reason)
        self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.abort)
        return True

    def send_message(self, message: dict) -> None:
        self.send_payload(messages.encode(message))

    def send_text(self, text: str) -> None:
        self.send_payload(text.encode("utf-8"))

    def send_payload(self, payload: bytes) -> None:
        """Queue one text frame holding `payload` (UTF-8 JSON); skipped once the socket is closing.

        A client that does not read what it is sent is closed as a slow consumer rather
        than let its backlog grow past MAX_SEND_BACKLOG.
        """
        if self.state is not SocketState.OPEN or self.ws_connection is None or self.ws_connection.is_closing():
            return
        backlog = unsent_bytes(self.stream)
        if backlog + len(payload) > self.services.settings.max_send_backlog:
            self.close_slow_consumer(backlog)
            return
        # Bytes with binary=False go out as a text frame without being decoded and encoded again.
        future = self.ws_connection.write_message(payload, binary=False)
        future.add_done_callback(_ignore_closed_connection)

    def close_slow_consumer(self, backlog: int) -> None:
        counters = self.services.counters
        counters["slow_consumers_closed"] += 1
        logger.warning("Closing socket of user %s with %d: %d bytes unsent, over MAX_SEND_BACKLOG (%d); "
                       "%d slow consumers closed since start", self.user.id, CLOSE_POLICY_VIOLATION, backlog,
                       self.services.settings.max_send_backlog, counters["slow_consumers_closed"])
        self.close_with(CLOSE_POLICY_VIOLATION, "send backlog over MAX_SEND_BACKLOG: read faster")

    def on_close(self):
        was_open = self.state in (SocketState.OPEN, SocketState.CLOSING)
        self.state = SocketState.CLOSED
        for timer in (self._expiry_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._abort_timer = None
        if self.user is None or not was_open:
            return
        self.services.sockets.discard(self)
        logger.info("Socket closed for user %s (code %s)", self.user.id, self.close_code)
        task = asyncio.ensure_future(self.leave_all_groups())
        _leave_tasks.add(task)
        task.add_done_callback(_leave_tasks.discard)

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        if self.stream is not None and not self.stream.closed():
            # Closing the stream makes Tornado call `on_close`, as for any dropped connection.
            self.stream.close()


def initial_groups(user) -> list[str]:
    """Return the groups a user's socket joins on open: everyone, the user, and riders or drivers."""
    return ["test", f"user.{user.id}", "drivers" if user.group == "driver" else "riders"]


def _ignore_closed_connection(future: asyncio.Future) -> None:
    # A peer that vanished mid-write is normal; `on_close` cleans up after it.
    if not future.cancelled():
        error = future.exception()
        if error is not None and not isinstance(error, tornado.websocket.WebSocketClosedError):
            logger.error("Writing to a socket failed", exc_info=error)
