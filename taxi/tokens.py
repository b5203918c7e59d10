"""JWT access and refresh tokens, HS256 only.

The claims follow djangorestframework-simplejwt (`token_type`, `user_id`, `exp`, `iat`,
`jti`), so another service that shares `SECRET_KEY` can mint tokens this server accepts.
`decode()` is the one place that decides whether a token is valid for a purpose. Its
`InvalidToken.reason` is written for the log and never contains the token itself.
"""

import dataclasses
import re
import time
import uuid

import jwt

ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"

# A real token is a few hundred bytes. The cap keeps a megabyte of garbage in a query
# string from reaching the base64 and JSON decoders.
MAX_TOKEN_LENGTH = 4096

USER_ID_PATTERN = re.compile(r"[0-9a-f]{24}")
# Only used to pick a jti out of an unverified token for a log line, so it must not let
# newlines or markup through.
LOGGABLE_JTI_PATTERN = re.compile(r"[0-9A-Za-z-]{1,64}")
REQUIRED_CLAIMS = ("token_type", "user_id", "exp", "iat", "jti")


class InvalidToken(Exception):
    """The token cannot be used; `reason` explains why, for the log."""

    def __init__(self, reason: str, user_id: str | None = None, jti: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.user_id = user_id
        self.jti = jti


@dataclasses.dataclass(frozen=True)
class Claims:
    token_type: str
    user_id: str
    exp: int
    iat: int
    jti: str


def mint(secret_key: str, token_type: str, user_id: str, lifetime: int, now: float | None = None) -> str:
    """Return a signed token of `token_type` for `user_id`, valid for `lifetime` seconds."""
    issued_at = int(time.time() if now is None else now)
    payload = {
        "token_type": token_type,
        "user_id": user_id,
        "exp": issued_at + lifetime,
        "iat": issued_at,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, secret_key, algorithm=ALGORITHM)


def decode(token: object, secret_key: str, token_type: str, leeway: int) -> Claims:
    """Return the claims of `token` when it is a valid token of `token_type`.

    Raises `InvalidToken` for anything else: a token that is not a string or is too long,
    a header naming another algorithm, a bad signature, an expired token or one issued in
    the future (beyond `leeway` seconds), a missing claim, a claim of the wrong type, or
    the wrong `token_type`. Whether the user exists is the caller's concern.
    """
    if not isinstance(token, str) or not token:
        raise InvalidToken("token is missing")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"token is longer than {MAX_TOKEN_LENGTH} characters")

    try:
        payload = jwt.decode(
            token,
            secret_key,
            algorithms=[ALGORITHM],
            leeway=leeway,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.InvalidTokenError as error:
        # PyJWT rejects a header naming another algorithm before anything else, so the
        # header is parsed a second time only for a rejected token, to log the reason.
        _check_algorithm(token)
        raise _rejection(token, error) from None

    claims = _claims_from_payload(payload)
    if claims.token_type != token_type:
        raise InvalidToken(f"token_type is {claims.token_type!r} where {token_type!r} is required",
                           claims.user_id, claims.jti)
    return claims


def _rejection(token: str, error: jwt.InvalidTokenError) -> InvalidToken:
    """Return the `InvalidToken` whose reason explains, for the log, why PyJWT rejected `token`."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return InvalidToken("token has expired", *_unverified_ids(token))
    if isinstance(error, jwt.InvalidSignatureError):
        return InvalidToken("token signature does not match", *_unverified_ids(token))
    if isinstance(error, jwt.ImmatureSignatureError):
        return InvalidToken("token is issued in the future (check clock skew and JWT_LEEWAY)")
    return InvalidToken(f"token is malformed: {error}")


def _check_algorithm(token: str) -> None:
    # PyJWT has already rejected the token, since only HS256 is passed to it; this gives
    # the log a precise reason for "alg: none" and key-confusion attempts.
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as error:
        raise InvalidToken(f"token is malformed: {error}") from None
    algorithm = header.get("alg")
    if algorithm != ALGORITHM:
        raise InvalidToken(f"token algorithm {algorithm!r} is not allowed, only {ALGORITHM}")


def _claims_from_payload(payload: dict) -> Claims:
    token_type = payload["token_type"]
    user_id = payload["user_id"]
    jti = payload["jti"]
    if not isinstance(token_type, str):
        raise InvalidToken("token_type claim is not a string")
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidToken("user_id claim is not a 24-character hex string")
    if not isinstance(jti, str) or not jti:
        raise InvalidToken("jti claim is not a non-empty string")
    for name in ("exp", "iat"):
        # bool is a subclass of int, and PyJWT accepts floats; the contract wants integers.
        if type(payload[name]) is not int:
            raise InvalidToken(f"{name} claim is not an integer")
    return Claims(token_type, user_id, payload["exp"], payload["iat"], jti)


def _unverified_ids(token: str) -> tuple[str | None, str | None]:
    """Return the `user_id` and `jti` claims without checking the signature, for log lines only."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None, None
    user_id = payload.get("user_id")
    jti = payload.get("jti")
    user_id = user_id if isinstance(user_id, str) and USER_ID_PATTERN.fullmatch(user_id) else None
    jti = jti if isinstance(jti, str) and LOGGABLE_JTI_PATTERN.fullmatch(jti) else None
    return user_id, jti
