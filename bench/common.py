"""Token minting and user ids shared by the reference servers and the load client.

Both sides derive user ids from a count so that the client can mint tokens that a
reference server accepts without either side storing anything.
"""

import time
import uuid

import jwt

ACCESS_TOKEN_LIFETIME = 3600
JWT_LEEWAY = 10
MAX_MESSAGE_SIZE = 65536

# Groups that every open socket joins, besides its own `user.<id>`.
COMMON_GROUPS = ("test", "riders")


def generate_user_ids(count):
    """Return `count` distinct 24-hex user ids, the same on every call."""
    return [f"{i:024x}" for i in range(1, count + 1)]


def mint_access_token(secret, user_id, lifetime=ACCESS_TOKEN_LIFETIME, token_type="access"):
    """Return an HS256 token with the claims that djangorestframework-simplejwt uses."""
    now = int(time.time())
    claims = {
        "token_type": token_type,
        "user_id": user_id,
        "exp": now + lifetime,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_access_user_id(token, secret, active_user_ids):
    """Return the user id of a valid access token, or None for any invalid token.

    Valid means: HS256 signature checks out, `exp` and `iat` are present and `exp`
    has not passed (with JWT_LEEWAY seconds of skew), `token_type` is `access`,
    and the user id is in `active_user_ids`.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=JWT_LEEWAY,
            options={"require": ["exp", "iat", "jti", "token_type", "user_id"]},
        )
    except jwt.PyJWTError:
        return None
    if claims.get("token_type") != "access":
        return None
    user_id = claims.get("user_id")
    if not isinstance(user_id, str) or user_id not in active_user_ids:
        return None
    return user_id
