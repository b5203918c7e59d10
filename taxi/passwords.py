"""Password hashing with Argon2id, run off the event loop.

Hashing is deliberately slow (tens of milliseconds), so it runs in a small thread pool:
argon2-cffi releases the GIL while it works, and open sockets keep being served during
a log-in.
"""

import asyncio
import concurrent.futures

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-hash")

# Verified against when the username is unknown, so a failed log-in takes as long for
# an unknown user as for a wrong password and does not reveal which usernames exist.
_UNKNOWN_USER_HASH = _hasher.hash("taxi: no such user")


async def hash_password(password: str) -> str:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, _hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Return True when `password` matches `password_hash`; None stands for an unknown user."""
    loop = asyncio.get_running_loop()
    stored = _UNKNOWN_USER_HASH if password_hash is None else password_hash
    matches = await loop.run_in_executor(_executor, _verify, stored, password)
    return matches and password_hash is not None


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
