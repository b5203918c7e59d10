"""Token minting and decoding, without a server."""

import time

import jwt
import pytest

from conftest import SECRET_KEY
from taxi import tokens

USER_ID = "5f0c6b2e9d1a4c3b2a190807"


def test_minted_access_token_has_the_claims():
    token = tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 300)
    payload = jwt.decode(token, SECRET_KEY, algorithms=["HS256"])
    assert set(payload) == {"token_type", "user_id", "exp", "iat", "jti"}
    assert payload["token_type"] == "access"
    assert payload["user_id"] == USER_ID
    assert payload["exp"] - payload["iat"] == 300
    assert len(payload["jti"]) == 32
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_each_token_has_its_own_jti():
    first = tokens.decode(tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 300), SECRET_KEY, tokens.ACCESS, 0)
    second = tokens.decode(tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 300), SECRET_KEY, tokens.ACCESS, 0)
    assert first.jti != second.jti


def test_token_from_another_service_with_the_same_key_is_accepted():
    """A token minted elsewhere with the simplejwt claim names is valid here."""
    now = int(time.time())
    token = jwt.encode(
        {"token_type": "access", "user_id": USER_ID, "exp": now + 60, "iat": now, "jti": "0" * 32},
        SECRET_KEY,
        algorithm="HS256",
    )
    assert tokens.decode(token, SECRET_KEY, tokens.ACCESS, 10).user_id == USER_ID


def test_expiry_within_leeway_is_accepted():
    token = tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 60, now=time.time() - 65)
    assert tokens.decode(token, SECRET_KEY, tokens.ACCESS, leeway=10).user_id == USER_ID


def test_expiry_beyond_leeway_is_rejected():
    token = tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 60, now=time.time() - 75)
    with pytest.raises(tokens.InvalidToken, match="expired") as caught:
        tokens.decode(token, SECRET_KEY, tokens.ACCESS, leeway=10)
    assert caught.value.user_id == USER_ID


def test_issued_slightly_in_the_future_is_accepted():
    token = tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 300, now=time.time() + 5)
    assert tokens.decode(token, SECRET_KEY, tokens.ACCESS, leeway=10).user_id == USER_ID


def test_issued_far_in_the_future_is_rejected():
    token = tokens.mint(SECRET_KEY, tokens.ACCESS, USER_ID, 300, now=time.time() + 3600)
    with pytest.raises(tokens.InvalidToken, match="future"):
        tokens.decode(token, SECRET_KEY, tokens.ACCESS, leeway=10)


def test_wrong_token_type_names_both_types():
    token = tokens.mint(SECRET_KEY, tokens.REFRESH, USER_ID, 300)
    with pytest.raises(tokens.InvalidToken, match="'refresh' where 'access' is required"):
        tokens.decode(token, SECRET_KEY, tokens.ACCESS, 10)


@pytest.mark.parametrize("algorithm", ["none", "HS384", "HS512"])
def test_other_algorithms_are_rejected(algorithm):
    key = None if algorithm == "none" else SECRET_KEY
    now = int(time.time())
    claims = {"token_type": "access", "user_id": USER_ID, "exp": now + 60, "iat": now, "jti": "0" * 32}
    token = jwt.encode(claims, key, algorithm=algorithm)
    with pytest.raises(tokens.InvalidToken, match="not allowed"):
        tokens.decode(token, SECRET_KEY, tokens.ACCESS, 10)


@pytest.mark.parametrize("token", [None, "", 42, b"bytes", "a" * (tokens.MAX_TOKEN_LENGTH + 1)])
def test_non_tokens_are_rejected(token):
    with pytest.raises(tokens.InvalidToken):
        tokens.decode(token, SECRET_KEY, tokens.ACCESS, 10)


def test_reason_never_contains_the_token():
    token = tokens.mint("another-secret-key-of-a-proper-length-0123456789", tokens.ACCESS, USER_ID, 300)
    with pytest.raises(tokens.InvalidToken) as caught:
        tokens.decode(token, SECRET_KEY, tokens.ACCESS, 10)
    assert token not in caught.value.reason
    assert token.split(".")[2] not in caught.value.reason
