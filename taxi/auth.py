"""Authentication: from a token to an active user.

`Authenticator.authenticate` has three outcomes, kept apart on purpose: it returns the
user and the token's claims, raises `AuthenticationFailed` (bad credentials; the reason
is for the log), or raises `DatabaseUnavailable` (the credentials could not be checked).
The socket handshake and the refresh endpoint both use it.
"""

import asyncio
import time

from taxi import tokens
from taxi.database import DatabaseUnavailable
from taxi.users import User, UserStore

# The socket handshake must be answered 503 within 3 seconds when MongoDB is down, and
# the driver's own timeouts only cover server selection, so the lookup has its own.
USER_LOOKUP_TIMEOUT = 2.5
# Past this many cached users, expired entries are dropped; past it again, all are.
MAX_CACHED_USERS = 100_000


class AuthenticationFailed(Exception):
    """The token does not identify an active user; `reason` is for the log only."""

    def __init__(self, reason: str, user_id: str | None = None, jti: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.user_id = user_id
        self.jti = jti


class Authenticator:
    """Checks tokens and looks their users up.

    With `user_cache_seconds` above 0, an active user found by one lookup is reused for
    that many seconds. Until the entry expires, a user made inactive can still open
    sockets, and the inactive-user watcher closes them. Inactive and unknown users are
    never cached, so a reactivated or new user is seen at once.
    """

    def __init__(self, users: UserStore, secret_key: str, leeway: int, user_cache_seconds: float = 0.0):
        self.users = users
        self.secret_key = secret_key
        self.leeway = leeway
        self.user_cache_seconds = user_cache_seconds
        # user id -> (time.monotonic() after which the entry is stale, the active user)
        self._user_cache: dict[str, tuple[float, User]] = {}

    def decode(self, token: object, token_type: str) -> tokens.Claims:
        """Check the token alone, without the database; raises `AuthenticationFailed`."""
        try:
            return tokens.decode(token, self.secret_key, token_type, self.leeway)
        except tokens.InvalidToken as error:
            raise AuthenticationFailed(error.reason, error.user_id, error.jti) from None

    async def authenticate(self, token: object, token_type: str = tokens.ACCESS) -> tuple[User, tokens.Claims]:
        """Return the active user named by a valid `token_type` token, and its claims."""
        claims = self.decode(token, token_type)
        user = await self.load_user(claims.user_id)
        if user is None:
            raise AuthenticationFailed("user does not exist", claims.user_id, claims.jti)
        if not user.is_active:
            raise AuthenticationFailed("user is inactive", claims.user_id, claims.jti)
        return user, claims

    async def load_user(self, user_id: str) -> User | None:
        if self.user_cache_seconds:
            cached = self._user_cache.get(user_id)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
        try:
            user = await asyncio.wait_for(self.users.get(user_id), USER_LOOKUP_TIMEOUT)
        except asyncio.TimeoutError:
            raise DatabaseUnavailable(f"user lookup timed out after {USER_LOOKUP_TIMEOUT} s") from None
        if self.user_cache_seconds:
            self._remember(user_id, user)
        return user

    def _remember(self, user_id: str, user: User | None) -> None:
        now = time.monotonic()
        if user is None or not user.is_active:
            self._user_cache.pop(user_id, None)
            return
        if len(self._user_cache) >= MAX_CACHED_USERS:
            self._user_cache = {key: entry for key, entry in self._user_cache.items() if entry[0] > now}
            if len(self._user_cache) >= MAX_CACHED_USERS:
                self._user_cache.clear()
        self._user_cache[user_id] = (now + self.user_cache_seconds, user)
