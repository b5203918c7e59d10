"""Property-based tests: any input to the message parser and the token decoder gets a defined result.

`messages.parse` returns a message object or raises `InvalidMessage`; `tokens.decode`
returns claims or raises `InvalidToken`. Any other exception would reach Tornado as an
uncaught error and drop the client's connection.
"""

import base64
import json

import jwt
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SECRET_KEY
from taxi import messages, tokens

# Example counts stay modest so that the whole suite stays quick; no deadline, because
# a shared machine can pause any single example.
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)


def check_parse(text):
    try:
        message = messages.parse(text)
    except messages.InvalidMessage as invalid:
        assert invalid.code == messages.INVALID_MESSAGE
        assert invalid.detail
        return
    assert isinstance(message, dict)
    assert isinstance(message["type"], str)


@PROPERTY_SETTINGS
@given(st.text())
def test_parse_any_text(text):
    check_parse(text)


@PROPERTY_SETTINGS
@given(st.binary())
def test_parse_any_bytes(data):
    check_parse(data)


@PROPERTY_SETTINGS
@given(json_values)
def test_parse_any_json_value(value):
    check_parse(json.dumps(value))


@PROPERTY_SETTINGS
@given(st.dictionaries(st.text(), json_values, max_size=5), json_values)
def test_parse_any_object_with_type(fields, message_type):
    check_parse(json.dumps({**fields, "type": message_type}))


@PROPERTY_SETTINGS
@given(st.sampled_from(["[", "{\"a\":", "[{\"type\":"]), st.integers(min_value=1, max_value=50_000))
def test_parse_deep_nesting(opening, depth):
    check_parse(opening * depth)


def _segment(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(header, payload) -> str:
    """Sign any header and payload with the server's key, so the decoder gets past the signature."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    signature = jwt.api_jws.get_algorithm_by_name("HS256").sign(signing_input.encode(), SECRET_KEY.encode())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def check_decode(token, token_type=tokens.ACCESS):
    try:
        claims = tokens.decode(token, SECRET_KEY, token_type, leeway=10)
    except tokens.InvalidToken as invalid:
        assert invalid.reason
        return
    assert claims.token_type == token_type
    assert type(claims.exp) is int


claim_values = st.one_of(
    json_values,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["access", "refresh", "a" * 24, "0123456789abcdef01234567"]),
)


@PROPERTY_SETTINGS
@given(st.text())
def test_decode_any_text(text):
    check_decode(text)


@PROPERTY_SETTINGS
@given(st.binary() | json_values)
def test_decode_any_object(value):
    check_decode(value)


@PROPERTY_SETTINGS
@given(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=", max_size=60),
                min_size=1, max_size=5))
def test_decode_any_dotted_base64(parts):
    check_decode(".".join(parts))


@PROPERTY_SETTINGS
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=4),
       st.dictionaries(st.sampled_from(tokens.REQUIRED_CLAIMS), claim_values) | json_values)
def test_decode_any_signed_header_and_payload(extra_header, payload):
    check_decode(_signed({**extra_header, "alg": "HS256"}, payload))


@PROPERTY_SETTINGS
@given(st.fixed_dictionaries({
    "token_type": st.sampled_from(["access", "refresh"]) | claim_values,
    "user_id": st.just("0123456789abcdef01234567") | claim_values,
    "exp": st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | claim_values,
    "iat": st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | claim_values,
    "jti": st.text(max_size=40) | claim_values,
}), st.sampled_from([tokens.ACCESS, tokens.REFRESH]))
def test_decode_signed_claims_of_any_type(payload, token_type):
    check_decode(_signed({"alg": "HS256", "typ": "JWT"}, payload), token_type)


def test_decode_infinite_exp():
    # json.dumps writes float('inf') as Infinity, which Python's JSON reader accepts.
    check_decode(_signed({"alg": "HS256"}, {"token_type": "access", "user_id": "a" * 24,
                                            "exp": float("inf"), "iat": 0, "jti": "x"}))
