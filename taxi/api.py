"""The HTTP API: sign up, log in, refresh, health checks and server-side group sends.

Requests and responses are JSON. Field errors return 400 `{field: [message, ...]}`,
and every other error returns `{"detail": message}`.
"""

import asyncio
import hmac
import json
import logging
from typing import NoReturn

import tornado.web

from taxi import messages, passwords, tokens
from taxi.auth import AuthenticationFailed
from taxi.database import DatabaseUnavailable
from taxi.groups import check_group_name
from taxi.users import GROUPS, MAX_NAME_LENGTH, RIDER, UsernameTaken, password_problem, username_problem
from taxi.web import ClientError, TaxiHandlerMixin

logger = logging.getLogger(__name__)

REQUIRED = "This field is required."
BLANK = "This field may not be blank."
NOT_A_STRING = "Not a valid string."
LOG_IN_FAILED = "No active account found with the given credentials."
REFRESH_FAILED = "The refresh token is invalid or expired, or its user is inactive."
UNAVAILABLE = "The user database is not answering; try again shortly."
READY_CHECK_TIMEOUT = 2.0


class FieldErrors(Exception):
    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(errors)
        self.errors = errors


@tornado.web.stream_request_body
class ApiHandler(TaxiHandlerMixin, tornado.web.RequestHandler):
    """Base of the JSON endpoints: reads the body with a size limit and parses it.

    The body is streamed so that one over `MAX_MESSAGE_SIZE` gets a 413 without being
    held in memory; Tornado itself only caps bodies at the server's `max_body_size`.
    """

    def initialize(self, services):
        self.services = services
        self._chunks: list[bytes] = []
        self._body_size = 0

    @property
    def body_limit(self) -> int:
        return self.services.settings.max_message_size

    def prepare(self):
        declared = self.request.headers.get("Content-Length")
        if declared is not None and int(declared) > self.body_limit:
            raise self.body_too_large()

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= self.body_limit:
            self._chunks.append(chunk)
        else:
            # A chunked body has no declared length, so drop it and respond 413 once it ends.
            self._chunks.clear()

    def body_too_large(self) -> ClientError:
        return ClientError(413, f"Request body is larger than MAX_MESSAGE_SIZE ({self.body_limit} bytes).")

    def json_body(self) -> dict:
        """Return the request body as a JSON object, or raise a 400 (413) saying what is wrong."""
        if self._body_size > self.body_limit:
            raise self.body_too_large()
        body = b"".join(self._chunks)
        try:
            value = messages.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ClientError(400, "Request body is not valid UTF-8.") from None
        except (ValueError, RecursionError) as error:
            raise ClientError(400, f"Request body is not valid JSON: {str(error)[:200]}") from None
        if not isinstance(value, dict):
            raise ClientError(400, "Request body must be a JSON object.")
        return value

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, FieldErrors):
            self.write_json(error.errors, status=400)
            return
        super().write_error(status_code, **kwargs)

    def log_exception(self, error_type, error, traceback) -> None:
        if isinstance(error, FieldErrors):
            return
        super().log_exception(error_type, error, traceback)

    def _handle_request_exception(self, error: BaseException) -> None:
        # Field errors and an unavailable database are expected outcomes with their own
        # status, not uncaught exceptions.
        if isinstance(error, FieldErrors):
            self.send_error(400, exc_info=(type(error), error, error.__traceback__))
            return
        if isinstance(error, DatabaseUnavailable):
            logger.error("%s failed: MongoDB unavailable: %s", self._request_summary(), error)
            self.set_header("Retry-After", "5")
            error = ClientError(503, UNAVAILABLE)
            self.send_error(503, exc_info=(type(error), error, None))
            return
        super()._handle_request_exception(error)


class SignUpHandler(ApiHandler):
    async def post(self):
        form = validate_sign_up(self.json_body())
        password_hash = await passwords.hash_password(form["password1"])
        try:
            user = await self.services.users.create(
                form["username"], password_hash, form["first_name"], form["last_name"], form["group"]
            )
        except UsernameTaken:
            raise FieldErrors({"username": ["A user with that username already exists."]}) from None
        logger.info("User %s signed up as a %s", user.id, user.group)
        self.write_json(user.public(), status=201)


class LogInHandler(ApiHandler):
    async def post(self):
        body = self.json_body()
        errors = {}
        username = _required_string(body, "username", errors)
        password = _required_string(body, "password", errors, strip=False)
        if errors:
            raise FieldErrors(errors)

        user = await self.services.users.find_by_username(username)
        password_matches = await passwords.verify_password(user.password_hash if user else None, password)
        if user is None:
            self.reject_log_in("unknown user")
        if not password_matches:
            self.reject_log_in(f"wrong password (user {user.id})")
        if not user.is_active:
            self.reject_log_in(f"inactive user (user {user.id})")

        settings = self.services.settings
        logger.info("User %s logged in", user.id)
        self.write_json({
            "access": tokens.mint(settings.secret_key, tokens.ACCESS, user.id, settings.access_token_lifetime),
            "refresh": tokens.mint(settings.secret_key, tokens.REFRESH, user.id, settings.refresh_token_lifetime),
        })


    def reject_log_in(self, reason: str) -> NoReturn:
        """Log why a log-in failed and raise the one 401 that all failures share."""
        logger.warning("Log-in failed from %s: %s", self.request.remote_ip, reason)
        raise ClientError(401, LOG_IN_FAILED)


class RefreshHandler(ApiHandler):
    async def post(self):
        body = self.json_body()
        errors = {}
        refresh = _required_string(body, "refresh", errors)
        if errors:
            raise FieldErrors(errors)
        try:
            user, _ = await self.services.authenticator.authenticate(refresh, tokens.REFRESH)
        except AuthenticationFailed as failure:
            logger.warning("Token refresh rejected from %s: %s; user_id=%s jti=%s",
                           self.request.remote_ip, failure.reason, failure.user_id, failure.jti)
            raise ClientError(401, REFRESH_FAILED) from None
        settings = self.services.settings
        self.write_json({
            "access": tokens.mint(settings.secret_key, tokens.ACCESS, user.id, settings.access_token_lifetime),
        })


class GroupSendHandler(ApiHandler):
    """`POST /api/groups/<group>/send/`: server-side publishing, guarded by `API_KEY`."""

    def prepare(self):
        api_key = self.services.settings.api_key
        if api_key is None:
            # Without a key the endpoint does not exist, rather than being open to anyone.
            raise ClientError(404, "Not found.")
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "api-key" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            logger.warning("Group send rejected (401) from %s: missing or wrong API key", self.request.remote_ip)
            raise ClientError(401, "Missing or wrong API key: send 'Authorization: Api-Key <API_KEY>'.")
        super().prepare()

    async def post(self, group: str):
        try:
            check_group_name(group)
        except ValueError as error:
            raise ClientError(400, str(error)) from None
        message = self.json_body()
        reached = await self.services.groups.group_send(group, message)
        logger.info("Group send to %s from %s reached %s local sockets", group, self.request.remote_ip, reached)
        self.write_json({"group": group}, status=202)


class HealthHandler(TaxiHandlerMixin, tornado.web.RequestHandler):
    def get(self):
        self.write_json({"status": "ok"})

    def head(self):
        # Load balancers often probe with HEAD; Tornado leaves the body out by itself.
        self.get()


class ReadyHandler(TaxiHandlerMixin, tornado.web.RequestHandler):
    def initialize(self, services):
        self.services = services

    async def get(self):
        mongodb, redis = await asyncio.gather(self.mongodb_status(), self.services.groups.health())
        status = 200 if mongodb == "ok" and redis in ("ok", "disabled") else 503
        self.write_json({"mongodb": mongodb, "redis": redis}, status=status)

    async def mongodb_status(self) -> str:
        try:
            await asyncio.wait_for(self.services.users.ping(), READY_CHECK_TIMEOUT)
        except (DatabaseUnavailable, asyncio.TimeoutError) as error:
            logger.warning("Readiness check: MongoDB is down: %s", str(error) or "timed out")
            return "down"
        return "ok"


def validate_sign_up(body: dict) -> dict:
    """Return the cleaned sign-up fields, or raise `FieldErrors` listing every problem."""
    errors: dict[str, list[str]] = {}
    username = _required_string(body, "username", errors)
    password1 = _required_string(body, "password1", errors, strip=False)
    password2 = _required_string(body, "password2", errors, strip=False)
    first_name = _required_string(body, "first_name", errors)
    last_name = _required_string(body, "last_name", errors)
    group = body.get("group", RIDER)

    if username is not None and username_problem(username):
        errors["username"] = [username_problem(username)]
    if password1 is not None and password_problem(password1):
        errors["password1"] = [password_problem(password1)]
    if password1 is not None and password2 is not None and password1 != password2:
        errors.setdefault("password2", []).append("The two password fields didn't match.")
    for name, value in (("first_name", first_name), ("last_name", last_name)):
        if value is not None and len(value) > MAX_NAME_LENGTH:
            errors.setdefault(name, []).append(f"Ensure this field has no more than {MAX_NAME_LENGTH} characters.")
    if group not in GROUPS:
        errors["group"] = [f"{_shown(group)} is not a valid choice: use 'rider' or 'driver'."]

    if errors:
        raise FieldErrors(errors)
    return {
        "username": username,
        "password1": password1,
        "first_name": first_name,
        "last_name": last_name,
        "group": group,
    }


def _required_string(body: dict, name: str, errors: dict, strip: bool = True) -> str | None:
    """Return `body[name]` if it is a non-blank string, else record why not in `errors`."""
    if name not in body or body[name] is None:
        errors[name] = [REQUIRED]
        return None
    value = body[name]
    if not isinstance(value, str):
        errors[name] = [NOT_A_STRING]
        return None
    if not value.strip():
        errors[name] = [BLANK]
        return None
    return value.strip() if strip else value


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:40] + "..."
