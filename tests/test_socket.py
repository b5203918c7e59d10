"""The `/taxi/` socket: handshake, messages and frame limits."""

import asyncio
import base64
import json
import time

import jwt
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.testing

import settings as settings_module
from conftest import (
    SECRET_KEY,
    connect,
    devdb,
    create_user,
    handshake_status,
    receive_json,
    reconfigure,
    send_json,
    wait_closed,
)
from taxi import tokens
from taxi.app import create_services, make_app

# The tutorial's four socket tests, ported.


async def test_can_connect_to_server(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    assert socket.protocol is not None


async def test_can_send_and_receive_messages(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    message = {"type": "echo.message", "data": "This is a test message."}
    await send_json(socket, message)
    assert await receive_json(socket) == message


async def test_can_send_and_receive_broadcast_messages(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    message = {"type": "echo.message", "data": "This is a test message."}
    await services.groups.group_send("test", message)
    assert await receive_json(socket) == message


async def test_cannot_connect_to_socket(port):
    assert await handshake_status(port) == 401


# Handshake


async def test_bearer_header_is_accepted(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, headers={"Authorization": f"Bearer {access}"}, sockets=sockets)
    await send_json(socket, {"type": "echo.message", "data": 1})
    assert await receive_json(socket) == {"type": "echo.message", "data": 1}


async def test_query_token_wins_over_header(services, port):
    _, access = await create_user(services)
    status = await handshake_status(port, "not-a-token", headers={"Authorization": f"Bearer {access}"})
    assert status == 401


async def test_other_authorization_scheme_is_no_token(services, port):
    _, access = await create_user(services)
    assert await handshake_status(port, headers={"Authorization": f"Token {access}"}) == 401


def _forge(payload, header=None, key=SECRET_KEY):
    """Sign `payload` with HS256 under any header, so tests can hand-craft bad tokens."""
    header = header or {"alg": "HS256", "typ": "JWT"}

    def encode(part):
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    signing_input = f"{encode(header)}.{encode(payload)}"
    signature = jwt.api_jws.get_algorithm_by_name("HS256").sign(signing_input.encode(), key.encode())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _claims(user_id, **changes):
    now = int(time.time())
    claims = {"token_type": "access", "user_id": user_id, "exp": now + 300, "iat": now, "jti": "a" * 32}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not ...}


BAD_TOKENS = {
    "expired": lambda uid: tokens.mint(SECRET_KEY, "access", uid, 300, now=time.time() - 3600),
    "wrongly signed": lambda uid: tokens.mint("another-secret-key-of-a-proper-length!!", "access", uid, 300),
    "alg none": lambda uid: jwt.encode(_claims(uid), None, algorithm="none"),
    "alg HS512": lambda uid: jwt.encode(_claims(uid), SECRET_KEY, algorithm="HS512"),
    "alg RS256 with HMAC key": lambda uid: _forge(_claims(uid), {"alg": "RS256", "typ": "JWT"}),
    "refresh instead of access": lambda uid: tokens.mint(SECRET_KEY, "refresh", uid, 300),
    "malformed": lambda uid: "not.a.token",
    "garbage base64": lambda uid: "eyJ!!!.eyJ!!!.abc",
    "user_id not a string": lambda uid: _forge(_claims(12345)),
    "user_id not hex": lambda uid: _forge(_claims("z" * 24)),
    "exp a string": lambda uid: _forge(_claims(uid, exp="tomorrow")),
    "exp a float": lambda uid: _forge(_claims(uid, exp=time.time() + 300)),
    "exp missing": lambda uid: _forge(_claims(uid, exp=...)),
    "token_type a list": lambda uid: _forge(_claims(uid, token_type=["access"])),
    "payload a list": lambda uid: _forge([uid]),
    "unknown user": lambda uid: tokens.mint(SECRET_KEY, "access", "0" * 24, 300),
    "very long": lambda uid: "a" * 10_000,
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_token_is_rejected_with_401(services, port, case):
    user, _ = await create_user(services)
    token = BAD_TOKENS[case](user.id)
    status = await handshake_status(port, headers={"Authorization": f"Bearer {token}"})
    assert status == 401


async def test_inactive_user_is_rejected_with_401(services, port):
    _, access = await create_user(services, is_active=False)
    assert await handshake_status(port, access) == 401


async def test_rejection_body_says_what_was_wrong(services, base_url):
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"{base_url}/taxi/", raise_error=False)
    assert response.code == 401
    assert "token" in json.loads(response.body)["detail"]


async def test_database_down_gives_503_within_3_seconds(environment, tmp_path, io_loop):
    environment["MONGODB_URI"] = f"mongodb://127.0.0.1:{devdb.free_port()}/taxi"
    services = create_services(settings_module.load(environment, secret_key_file=tmp_path / "key"))
    server = tornado.httpserver.HTTPServer(make_app(services))
    listener, port = tornado.testing.bind_unused_port()
    server.add_socket(listener)
    access = tokens.mint(SECRET_KEY, "access", "0" * 24, 300)
    try:
        started = time.monotonic()
        status = await handshake_status(port, access)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
        await services.close()
    assert status == 503
    assert elapsed < 3.0


# Messages


@pytest.mark.parametrize("text, code", [
    ("not json", "invalid_message"),
    ("[1, 2]", "invalid_message"),
    ('"a string"', "invalid_message"),
    ("{}", "invalid_message"),
    ('{"type": 5}', "invalid_message"),
    ('{"type": "echo.message", "data": NaN}', "invalid_message"),
    ("[" * 100_00 + "]" * 100_00, "invalid_message"),
    ('{"type": "no.such.type"}', "unknown_type"),
])
async def test_bad_message_gets_error_and_socket_stays_open(services, port, sockets, text, code):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    await socket.write_message(text)
    reply = await receive_json(socket)
    assert reply["type"] == "error"
    assert reply["data"]["code"] == code
    assert reply["data"]["detail"]
    await send_json(socket, {"type": "echo.message", "data": "still open"})
    assert await receive_json(socket) == {"type": "echo.message", "data": "still open"}


async def test_binary_frame_closes_with_1003(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    await socket.write_message(b"\x00\x01", binary=True)
    assert await wait_closed(socket) == 1003


async def test_oversize_frame_closes_with_1009(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    data = "x" * services.settings.max_message_size
    await send_json(socket, {"type": "echo.message", "data": data})
    assert await wait_closed(socket) == 1009


async def test_server_keeps_serving_after_bad_clients(services, port, sockets):
    _, access = await create_user(services)
    bad = await connect(port, access, sockets=sockets)
    await bad.write_message(b"\xff", binary=True)
    assert await wait_closed(bad) == 1003
    good = await connect(port, access, sockets=sockets)
    await send_json(good, {"type": "echo.message", "data": "ok"})
    assert await receive_json(good) == {"type": "echo.message", "data": "ok"}


# Origin


@pytest.mark.parametrize("allowed, origin, expected", [
    (None, None, 101),
    (None, "http://127.0.0.1:{port}", 101),
    (None, "https://127.0.0.1:{port}", 101),
    (None, "http://evil.example", 403),
    (None, "null", 403),
    ("https://app.example", "https://app.example", 101),
    ("https://app.example", "https://APP.example:443", 101),
    ("https://app.example", "http://app.example", 403),
    ("https://app.example", None, 101),
    ("*", "http://anything.example", 101),
])
async def test_origin_rule(environment, services, port, allowed, origin, expected):
    if allowed is not None:
        reconfigure(services, environment, ALLOWED_ORIGINS=allowed)
    _, access = await create_user(services)
    headers = {} if origin is None else {"Origin": origin.format(port=port)}
    assert await handshake_status(port, access, headers=headers) == expected


async def test_bad_origin_and_bad_token_gives_401(port):
    assert await handshake_status(port, "bad", headers={"Origin": "http://evil.example"}) == 401


async def test_handshake_does_not_block_other_sockets(environment, services, port, sockets):
    """Many handshakes at once all succeed; the lookups run concurrently on one loop."""
    reconfigure(services, environment, MAX_SOCKETS_PER_USER="0")
    _, access = await create_user(services)
    opened = await asyncio.gather(*(connect(port, access, sockets=sockets) for _ in range(20)))
    assert len(opened) == 20


async def test_plain_get_with_valid_token_is_400_json(services, base_url):
    _, access = await create_user(services)
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"{base_url}/taxi/?token={access}", raise_error=False)
    assert response.code == 400
    assert "WebSocket" in json.loads(response.body)["detail"]
