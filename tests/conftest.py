"""Fixtures shared by the tests.

One MongoDB-compatible server serves the whole run: the one at `TAXI_TEST_MONGODB_URI`
when that is set, else a fresh FerretDB (or `mongod`) started by `scripts/devdb.py` in a
temporary folder and stopped at the end. Each test gets a database of its own, dropped
afterwards, so tests do not see each other's users.
"""

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.websocket
from argon2 import PasswordHasher

import settings as settings_module
from taxi import tokens
from taxi.app import create_services, make_app

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import devdb  # noqa: E402
import devredis  # noqa: E402

SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256-and-for-hs512-as-well"
API_KEY = "test-api-key"
PASSWORD = "pAssw0rd!"
RECEIVE_TIMEOUT = 5.0

# Hashing with production parameters takes a few hundred milliseconds; tests that only
# need a user with a known password share one hash made at import time.
_PASSWORD_HASH = PasswordHasher().hash(PASSWORD)


@pytest.fixture(scope="session")
def mongodb_server_uri(tmp_path_factory):
    """Return `mongodb://host:port` of the server for this run, starting one if needed."""
    given = os.environ.get("TAXI_TEST_MONGODB_URI")
    if given:
        yield given.rstrip("/")
        return
    server = devdb.DatabaseServer(tmp_path_factory.mktemp("mongodb"), devdb.free_port())
    server.start()
    try:
        yield server.uri("").rstrip("/")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url():
    """Return the URL of a Redis server started for this run; tests that use it skip without redis-server."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH; install it with `apt-get install -y redis-server`")
    server = devredis.RedisServer(devdb.free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def environment(mongodb_server_uri, request):
    """The environment a test server is configured from; tests may change it before `services` is built.

    A test that needs other settings from the start, such as those Tornado reads once
    when the application is made, passes them by indirect parametrization:
    `@pytest.mark.parametrize("environment", [{"PING_INTERVAL": "0.2"}], indirect=True)`.
    """
    return {
        "MONGODB_URI": f"{mongodb_server_uri}/taxi_test_{uuid.uuid4().hex[:12]}",
        "SECRET_KEY": SECRET_KEY,
        "API_KEY": API_KEY,
        **getattr(request, "param", {}),
    }


@pytest.fixture
def taxi_settings(environment, tmp_path):
    return settings_module.load(environment, secret_key_file=tmp_path / "secret_key")


@pytest.fixture
def services(taxi_settings, io_loop):
    services = create_services(taxi_settings)
    io_loop.run_sync(services.users.ensure_indexes)
    yield services
    io_loop.run_sync(lambda: drop_database(services))
    io_loop.run_sync(services.close)


async def drop_database(services):
    try:
        await services.client.drop_database(services.settings.database_name)
    except Exception:
        pass  # The test may have stopped or replaced the server on purpose.


@pytest.fixture
def app(services):
    return make_app(services)


@pytest.fixture
def port(http_server, http_server_port):
    return http_server_port[1]


@pytest.fixture
def base_url(port):
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def sockets(io_loop):
    """A list the test appends its client sockets to; every one is closed afterwards."""
    opened = []
    yield opened
    for socket in opened:
        socket.close()


def reconfigure(services, environment, **variables):
    """Apply extra environment variables to a running test server's settings."""
    changed = settings_module.load({**environment, **variables})
    services.settings = dataclasses.replace(changed, secret_key=services.settings.secret_key)


async def create_user(services, username=None, group="rider", is_active=True):
    """Insert a user with password `PASSWORD`; return it and an access token for it."""
    username = username or f"user.{uuid.uuid4().hex[:10]}@example.com"
    user = await services.users.create(username, _PASSWORD_HASH, "Test", "User", group, is_active=is_active)
    access = tokens.mint(SECRET_KEY, tokens.ACCESS, user.id, services.settings.access_token_lifetime)
    return user, access


async def connect(port, token=None, headers=None, sockets=None, path="/taxi/"):
    """Open a socket to the test server; raises `tornado.httpclient.HTTPClientError` on a rejected handshake."""
    url = f"ws://127.0.0.1:{port}{path}"
    if token is not None:
        url += f"?token={token}"
    request = tornado.httpclient.HTTPRequest(url, headers=headers or {})
    socket = await tornado.websocket.websocket_connect(request)
    if sockets is not None:
        sockets.append(socket)
    return socket


async def handshake_status(port, token=None, headers=None):
    """Return the HTTP status of a handshake: 101 when the socket opened, else the error status."""
    try:
        socket = await connect(port, token, headers)
    except tornado.httpclient.HTTPClientError as error:
        return error.code
    socket.close()
    return 101


async def receive_json(socket, timeout=RECEIVE_TIMEOUT):
    message = await asyncio.wait_for(socket.read_message(), timeout)
    assert message is not None, f"socket closed with code {socket.close_code} ({socket.close_reason})"
    return json.loads(message)


async def send_json(socket, message):
    await socket.write_message(json.dumps(message))


async def receive_nothing(socket, within=0.5):
    """Assert that no message arrives on `socket` within `within` seconds."""
    try:
        message = await asyncio.wait_for(socket.read_message(), within)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"expected no message, got {message!r}")


async def wait_until(condition, timeout=5.0, interval=0.02):
    """Poll `condition()` until it is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def wait_closed(socket, timeout=RECEIVE_TIMEOUT):
    """Read until the server closes `socket`; return the close code."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        message = await asyncio.wait_for(socket.read_message(), max(remaining, 0.01))
        if message is None:
            return socket.close_code


async def post_json(base_url, path, body, headers=None, raw=None):
    """POST `body` as JSON (or `raw` bytes as they are); return (status, parsed JSON body)."""
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(
        base_url + path,
        method="POST",
        body=raw if raw is not None else json.dumps(body),
        headers=headers or {},
        raise_error=False,
    )
    return response.code, json.loads(response.body) if response.body else None
