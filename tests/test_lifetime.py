"""How long a socket lives: access token expiry, `auth.refresh`, and deactivated users."""

import asyncio
import os
import subprocess
import sys
import time

import pytest
from bson import ObjectId

from conftest import (
    ROOT,
    SECRET_KEY,
    connect,
    create_user,
    handshake_status,
    receive_json,
    send_json,
    wait_closed,
    wait_until,
)
from taxi import auth, tokens
from taxi.users import User
from taxi.watcher import InactiveUserWatcher

# With no leeway a token's socket closes right at `exp`, which keeps these tests short.
NO_LEEWAY = pytest.mark.parametrize("environment", [{"JWT_LEEWAY": "0"}], indirect=True, ids=["JWT_LEEWAY=0"])
# Tokens carry whole seconds, so a 2-second token has between 1 and 2 seconds left.
SHORT_LIFETIME = 2
# The contract closes a deactivated user's sockets within this many seconds.
DEACTIVATION_DEADLINE = 5.0


def access_token(user_id, lifetime=300):
    return tokens.mint(SECRET_KEY, tokens.ACCESS, user_id, lifetime)


async def refresh(socket, token):
    await send_json(socket, {"type": "auth.refresh", "data": {"token": token}})
    return await receive_json(socket)


# Token expiry


@NO_LEEWAY
async def test_socket_closes_with_4001_at_token_expiry(services, port, sockets):
    user, _ = await create_user(services)
    socket = await connect(port, access_token(user.id, SHORT_LIFETIME), sockets=sockets)
    assert await wait_closed(socket) == 4001
    assert socket.close_reason == "access token expired"
    await wait_until(lambda: not services.sockets)
    assert not services.groups.group_names()


async def test_expiry_allows_jwt_leeway(services, port, sockets):
    user, _ = await create_user(services)
    # Expired one second ago, but within the default JWT_LEEWAY of 10 seconds.
    token = tokens.mint(SECRET_KEY, tokens.ACCESS, user.id, 300, now=time.time() - 301)
    socket = await connect(port, token, sockets=sockets)
    await send_json(socket, {"type": "echo.message", "data": "within leeway"})
    assert await receive_json(socket) == {"type": "echo.message", "data": "within leeway"}


@NO_LEEWAY
async def test_refresh_extends_socket_past_old_expiry(services, port, sockets):
    user, _ = await create_user(services)
    old = access_token(user.id, SHORT_LIFETIME)
    socket = await connect(port, old, sockets=sockets)
    new = access_token(user.id)
    reply = await refresh(socket, new)
    assert reply == {"type": "auth.refreshed", "data": {"exp": tokens.decode(new, SECRET_KEY, "access", 0).exp}}

    old_exp = tokens.decode(old, SECRET_KEY, "access", 0).exp
    await asyncio.sleep(max(0.0, old_exp - time.time()) + 0.5)
    await send_json(socket, {"type": "echo.message", "data": "still here"})
    assert await receive_json(socket) == {"type": "echo.message", "data": "still here"}


@NO_LEEWAY
async def test_bad_refreshes_change_nothing(services, port, sockets):
    user, _ = await create_user(services)
    other, _ = await create_user(services)
    inactive, _ = await create_user(services, is_active=False)
    socket = await connect(port, access_token(user.id, SHORT_LIFETIME), sockets=sockets)
    cases = [
        ({"token": access_token(other.id)}, "invalid_token"),
        ({"token": tokens.mint(SECRET_KEY, tokens.REFRESH, user.id, 300)}, "invalid_token"),
        ({"token": tokens.mint(SECRET_KEY, tokens.ACCESS, user.id, 300, now=time.time() - 400)}, "invalid_token"),
        ({"token": tokens.mint("another-secret-key-of-a-proper-length!!", tokens.ACCESS, user.id, 300)},
         "invalid_token"),
        ({"token": access_token(inactive.id)}, "invalid_token"),
        ({"token": "not.a.token"}, "invalid_token"),
        ({"token": 42}, "invalid_message"),
        ({}, "invalid_message"),
        (None, "invalid_message"),
    ]
    for data, code in cases:
        await send_json(socket, {"type": "auth.refresh", "data": data})
        reply = await receive_json(socket)
        assert reply["type"] == "error", data
        assert reply["data"]["code"] == code, data
    # None of them moved the deadline: the socket still closes when its first token expires.
    assert await wait_closed(socket) == 4001


async def test_refresh_other_user_says_so(services, port, sockets):
    user, access = await create_user(services)
    other, _ = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    reply = await refresh(socket, access_token(other.id))
    assert reply["data"]["code"] == "invalid_token"
    assert "another user" in reply["data"]["detail"]


async def test_refresh_with_earlier_expiry_keeps_later_one(services, port, sockets):
    user, _ = await create_user(services)
    long_token = access_token(user.id, 3600)
    socket = await connect(port, long_token, sockets=sockets)
    reply = await refresh(socket, access_token(user.id, 300))
    assert reply == {"type": "auth.refreshed", "data": {"exp": tokens.decode(long_token, SECRET_KEY, "access", 0).exp}}


# Deactivation


async def test_direct_deactivation_closes_with_4003(services, port, sockets):
    user, access = await create_user(services)
    bystander, bystander_access = await create_user(services)
    first = await connect(port, access, sockets=sockets)
    second = await connect(port, access, sockets=sockets)
    other = await connect(port, bystander_access, sockets=sockets)

    await services.users.collection.update_one({"_id": ObjectId(user.id)}, {"$set": {"is_active": False}})
    started = time.monotonic()
    codes = await asyncio.gather(wait_closed(first, 10), wait_closed(second, 10))
    elapsed = time.monotonic() - started

    assert codes == [4003, 4003]
    assert first.close_reason == "user is inactive"
    assert elapsed <= DEACTIVATION_DEADLINE
    await send_json(other, {"type": "echo.message", "data": "unaffected"})
    assert await receive_json(other) == {"type": "echo.message", "data": "unaffected"}


async def test_deleted_user_is_closed_with_4003(services, port, sockets):
    user, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    await services.users.collection.delete_one({"_id": ObjectId(user.id)})
    assert await wait_closed(socket, 10) == 4003


async def test_deactivate_command_closes_with_4003(environment, services, port, sockets):
    user, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    closed = asyncio.ensure_future(wait_closed(socket, 20))

    command = [sys.executable, "-m", "taxi", "deactivate", user.username]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env={**os.environ, **environment},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    started = time.monotonic()
    code = await closed
    elapsed = time.monotonic() - started

    assert code == 4003
    assert elapsed <= DEACTIVATION_DEADLINE


class FakeSocket:
    def __init__(self, user_id):
        self.user = type("User", (), {"id": user_id})()
        self.closed_with = None

    def close_with(self, code, reason):
        if self.closed_with is not None:
            return False
        self.closed_with = code
        return True


async def test_watcher_queries_in_chunks(services):
    from taxi.sockets import OpenSockets

    users = [(await create_user(services))[0] for _ in range(5)]
    inactive = {users[1].id, users[4].id}
    for user_id in inactive:
        await services.users.collection.update_one({"_id": ObjectId(user_id)}, {"$set": {"is_active": False}})
    sockets = OpenSockets()
    fakes = {user.id: FakeSocket(user.id) for user in users}
    for fake in fakes.values():
        sockets.add(fake)

    chunks = []
    original = services.users.active_among

    async def recording_active_among(user_ids):
        chunks.append(list(user_ids))
        return await original(user_ids)

    services.users.active_among = recording_active_among
    watcher = InactiveUserWatcher(services.users, sockets, chunk_size=2)
    assert await watcher.check_once() == 2

    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert {user_id for user_id, fake in fakes.items() if fake.closed_with == 4003} == inactive
    # A socket already closing is not closed or counted again.
    assert await watcher.check_once() == 0


async def test_watcher_survives_database_errors(services, caplog):
    from taxi.database import DatabaseUnavailable
    from taxi.sockets import OpenSockets

    sockets = OpenSockets()
    fake = FakeSocket("0" * 24)
    sockets.add(fake)

    async def unavailable(user_ids):
        raise DatabaseUnavailable("connection refused")

    services.users.active_among = unavailable
    watcher = InactiveUserWatcher(services.users, sockets)
    assert await watcher.check_once() == 0
    assert await watcher.check_once() == 0
    assert fake.closed_with is None
    assert sum("MongoDB is not responding" in record.getMessage() for record in caplog.records) == 1


# The user cache (USER_CACHE_SECONDS)

CACHED = pytest.mark.parametrize("environment", [{"USER_CACHE_SECONDS": "1"}], indirect=True,
                                 ids=["USER_CACHE_SECONDS=1"])


@CACHED
async def test_cached_user_deactivated_is_closed_then_refused(services, port, sockets):
    user, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)

    await services.users.collection.update_one({"_id": ObjectId(user.id)}, {"$set": {"is_active": False}})

    assert await wait_closed(socket, 10) == 4003
    # Once the cached lookup has expired, new handshakes are refused.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    status = await handshake_status(port, access)
    while status != 401 and loop.time() < deadline:
        await asyncio.sleep(0.1)
        status = await handshake_status(port, access)
    assert status == 401


@CACHED
async def test_inactive_user_is_not_cached(services, port, sockets):
    user, access = await create_user(services, is_active=False)
    assert await handshake_status(port, access) == 401

    await services.users.collection.update_one({"_id": ObjectId(user.id)}, {"$set": {"is_active": True}})

    assert await handshake_status(port, access) == 101


class CountingStore:
    """A user store that counts lookups and returns whatever `user` is set to."""

    def __init__(self, user):
        self.user = user
        self.lookups = 0

    async def get(self, user_id):
        self.lookups += 1
        return self.user


def test_user_cache_reuses_a_lookup_until_it_expires(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    user = User("a" * 24, "ann", "Ann", "Lee", "rider", True, None)
    store = CountingStore(user)
    authenticator = auth.Authenticator(store, SECRET_KEY, leeway=0, user_cache_seconds=2)

    assert asyncio.run(authenticator.load_user(user.id)) is user
    now[0] += 1.9
    assert asyncio.run(authenticator.load_user(user.id)) is user
    assert store.lookups == 1

    now[0] += 0.2
    asyncio.run(authenticator.load_user(user.id))
    assert store.lookups == 2


def test_user_cache_off_looks_up_every_time():
    user = User("a" * 24, "ann", "Ann", "Lee", "rider", True, None)
    store = CountingStore(user)
    authenticator = auth.Authenticator(store, SECRET_KEY, leeway=0)

    asyncio.run(authenticator.load_user(user.id))
    asyncio.run(authenticator.load_user(user.id))

    assert store.lookups == 2
