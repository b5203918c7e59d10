"""Groups across processes through Redis.

Backend tests run two `RedisGroups` in one event loop, standing in for two processes;
process tests run `server.py` twice on one Redis. Every receive has a timeout, and a
negative ("receives nothing") waits `NOTHING_WITHIN` seconds.
"""

import asyncio
import json
import logging
import uuid

import pytest
import redis.asyncio

from conftest import create_user, devdb, devredis, receive_json, receive_nothing
# start_servers is a fixture.
from server_processes import open_socket, start_servers  # noqa: F401
from taxi.redis_groups import RedisGroups, redact_url

RECEIVE_TIMEOUT = 5.0
NOTHING_WITHIN = 0.5


class Recorder:
    """A group member that keeps the messages it receives, standing in for a socket."""

    def __init__(self, name: str):
        self.name = name
        self.inbox: asyncio.Queue = asyncio.Queue()

    def send_payload(self, payload: bytes) -> None:
        self.inbox.put_nowait(json.loads(payload))

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def receive_nothing(self, within: float = NOTHING_WITHIN) -> None:
        try:
            message = await asyncio.wait_for(self.inbox.get(), within)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"{self.name} expected no message, got {message!r}")


async def wait_for_condition(condition, timeout: float = RECEIVE_TIMEOUT, interval: float = 0.02):
    """Await `condition()` (a coroutine function) until it returns true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def channel_prefix():
    """A channel prefix of this test's own, so tests sharing the session Redis stay apart."""
    return f"taxi-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def make_backend(redis_url, channel_prefix, io_loop):
    """Return a factory of `RedisGroups` (one per simulated process); all are closed afterwards."""
    created = []

    def make(url=None):
        backend = RedisGroups(url or redis_url, channel_prefix)
        created.append(backend)
        return backend

    yield make
    for backend in created:
        io_loop.run_sync(backend.close)


@pytest.fixture
def redis_client(redis_url, io_loop):
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    io_loop.run_sync(client.aclose)


async def subscriber_count(client, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return count


# --- Backend -------------------------------------------------------------------------


async def test_send_reaches_every_member_once(make_backend):
    first, second = make_backend(), make_backend()
    local_1, local_2, remote = Recorder("local_1"), Recorder("local_2"), Recorder("remote")
    await first.group_add("rides", local_1)
    await first.group_add("rides", local_2)
    await second.group_add("rides", remote)

    await first.group_send("rides", {"type": "ride", "data": 1})
    await second.group_send("rides", {"type": "ride", "data": 2})

    # Sends from two processes have no order between them, only within each.
    for member in (local_1, local_2, remote):
        received = [(await member.receive())["data"] for _ in range(2)]
        assert sorted(received) == [1, 2]
    for member in (local_1, local_2, remote):
        await member.receive_nothing()


async def test_sends_keep_their_order(make_backend):
    first, second = make_backend(), make_backend()
    local, remote = Recorder("local"), Recorder("remote")
    await first.group_add("rides", local)
    await second.group_add("rides", remote)

    for number in range(200):
        await first.group_send("rides", {"type": "ride", "data": number})

    assert [(await local.receive())["data"] for _ in range(200)] == list(range(200))
    assert [(await remote.receive())["data"] for _ in range(200)] == list(range(200))
    await remote.receive_nothing()


async def test_discarded_member_receives_nothing(make_backend):
    first, second = make_backend(), make_backend()
    staying, leaving = Recorder("staying"), Recorder("leaving")
    await first.group_add("rides", staying)
    await second.group_add("rides", leaving)
    await second.group_add("rides", Recorder("keeps second subscribed"))

    await second.group_discard("rides", leaving)
    await first.group_send("rides", {"type": "ride", "data": "after leaving"})

    assert await staying.receive() == {"type": "ride", "data": "after leaving"}
    await leaving.receive_nothing()


async def test_discard_of_absent_member_does_nothing(make_backend):
    backend = make_backend()
    await backend.group_discard("rides", Recorder("never joined"))
    assert backend.group_names() == []


async def test_subscription_follows_first_join_and_last_leave(make_backend, redis_client):
    backend = make_backend()
    channel = backend.channel("rides")
    first_member, second_member = Recorder("first"), Recorder("second")

    assert await subscriber_count(redis_client, channel) == 0
    await backend.group_add("rides", first_member)
    assert await subscriber_count(redis_client, channel) == 1
    await backend.group_add("rides", second_member)
    assert await subscriber_count(redis_client, channel) == 1

    await backend.group_discard("rides", first_member)
    await asyncio.sleep(0.1)
    assert await subscriber_count(redis_client, channel) == 1
    await backend.group_discard("rides", second_member)
    await wait_for_condition(lambda: _count_is(redis_client, channel, 0))


async def _count_is(client, channel: str, expected: int) -> bool:
    return await subscriber_count(client, channel) == expected


async def test_envelope_from_another_process_is_delivered(make_backend, redis_client):
    backend = make_backend()
    member = Recorder("member")
    await backend.group_add("rides", member)

    envelope = b'{"v":1,"origin":"another-process"}\n{"type":"ride","data":"raw"}'
    await redis_client.publish(backend.channel("rides"), envelope)

    assert await member.receive() == {"type": "ride", "data": "raw"}


async def test_unknown_envelope_version_is_skipped(make_backend, redis_client, caplog):
    backend = make_backend()
    member = Recorder("member")
    await backend.group_add("rides", member)

    caplog.set_level(logging.WARNING, logger="taxi.redis_groups")
    await redis_client.publish(backend.channel("rides"), b'{"v":2,"origin":"newer"}\n{"type":"ride"}')
    await redis_client.publish(backend.channel("rides"), b"not an envelope")
    await member.receive_nothing()

    assert backend.unknown_versions["2"] == 1
    assert backend.malformed == 1
    assert any("envelope version 2" in record.getMessage() for record in caplog.records)


async def test_local_delivery_without_redis(make_backend, caplog):
    # Nothing listens on this port, so every connection attempt is refused.
    backend = make_backend(f"redis://127.0.0.1:{devdb.free_port()}/0")
    member = Recorder("member")
    caplog.set_level(logging.ERROR, logger="taxi.redis_groups")

    await backend.group_add("rides", member)
    assert await backend.health() == "down"
    for number in range(3):
        assert await backend.group_send("rides", {"type": "ride", "data": number}) == 1

    assert [(await member.receive())["data"] for _ in range(3)] == [0, 1, 2]
    assert backend.unpublished == 3
    unreachable = [record for record in caplog.records if "unreachable" in record.getMessage()]
    assert len(unreachable) == 1


async def test_redis_restart_restores_delivery(make_backend):
    server = devredis.RedisServer(devdb.free_port())
    server.start()
    try:
        first, second = make_backend(server.url), make_backend(server.url)
        local, remote = Recorder("local"), Recorder("remote")
        await first.group_add("rides", local)
        await second.group_add("rides", remote)
        assert await first.health() == "ok"

        server.stop()
        await wait_for_condition(lambda: _health_is(first, "down"))
        await first.group_send("rides", {"type": "ride", "data": "during"})
        assert await local.receive() == {"type": "ride", "data": "during"}
        await remote.receive_nothing()

        server.start()
        await wait_for_condition(lambda: _health_is(first, "ok"), timeout=15)
        await wait_for_condition(lambda: _health_is(second, "ok"), timeout=15)
        await first.group_send("rides", {"type": "ride", "data": "after"})
        assert await local.receive() == {"type": "ride", "data": "after"}
        assert await remote.receive() == {"type": "ride", "data": "after"}
    finally:
        server.stop()


async def _health_is(backend, expected: str) -> bool:
    return await backend.health() == expected


async def test_close_leaves_redis(make_backend, redis_client):
    backend = make_backend()
    await backend.group_add("rides", Recorder("member"))
    assert await subscriber_count(redis_client, backend.channel("rides")) == 1

    await backend.close()

    await wait_for_condition(lambda: _count_is(redis_client, backend.channel("rides"), 0))


# --- Server processes ----------------------------------------------------------------


async def test_group_send_reaches_sockets_in_both_processes(services, start_servers, sockets):
    first, second = await start_servers(2)
    _, rider_access = await create_user(services)
    _, driver_access = await create_user(services, group="driver")
    on_first = await open_socket(first, rider_access, sockets)
    on_second = await open_socket(second, driver_access, sockets)

    assert await first.group_send("test", {"type": "notice", "data": "from first"}) == 202
    assert await second.group_send("test", {"type": "notice", "data": "from second"}) == 202

    for socket in (on_first, on_second):
        received = [(await receive_json(socket))["data"] for _ in range(2)]
        assert sorted(received) == ["from first", "from second"]
    for socket in (on_first, on_second):
        await receive_nothing(socket)


async def test_user_group_send_reaches_other_process(services, start_servers, sockets):
    first, second = await start_servers(2)
    _, other_access = await create_user(services)
    user, access = await create_user(services)
    bystander = await open_socket(first, other_access, sockets)
    target = await open_socket(second, access, sockets)

    assert await first.group_send(f"user.{user.id}", {"type": "trip", "data": "for you"}) == 202

    assert await receive_json(target) == {"type": "trip", "data": "for you"}
    await receive_nothing(bystander)


async def test_closed_sockets_leave_redis_subscription(services, start_servers, sockets, redis_client):
    first, second = await start_servers(2)
    _, first_access = await create_user(services)
    user, access = await create_user(services)
    on_first = await open_socket(first, first_access, sockets)
    leaving_1 = await open_socket(second, access, sockets)
    leaving_2 = await open_socket(second, access, sockets)
    channel = f"taxi:group:user.{user.id}"
    assert await subscriber_count(redis_client, channel) == 1

    leaving_1.close()
    await asyncio.sleep(0.2)
    assert await subscriber_count(redis_client, channel) == 1
    leaving_2.close()
    await wait_for_condition(lambda: _count_is(redis_client, channel, 0))

    # The remaining member still gets sends made in the other process.
    assert await second.group_send("test", {"type": "notice", "data": "still here"}) == 202
    assert await receive_json(on_first) == {"type": "notice", "data": "still here"}


async def test_redis_outage_keeps_local_delivery(services, start_servers, sockets):
    redis_server = devredis.RedisServer(devdb.free_port())
    redis_server.start()
    try:
        first, second = await start_servers(2, redis_server.url)
        pids = (first.pid, second.pid)
        _, access_1 = await create_user(services)
        _, access_2 = await create_user(services)
        on_first = await open_socket(first, access_1, sockets)
        on_second = await open_socket(second, access_2, sockets)
        assert (await first.wait_ready(200))["redis"] == "ok"

        redis_server.stop()
        for server in (first, second):
            body = await server.wait_ready(503)
            assert body == {"mongodb": "ok", "redis": "down"}
        for number in range(3):
            assert await first.group_send("test", {"type": "notice", "data": number}) == 202
        assert [(await receive_json(on_first))["data"] for _ in range(3)] == [0, 1, 2]
        await receive_nothing(on_second)

        redis_server.start()
        for server in (first, second):
            assert await server.wait_ready(200, timeout=20) == {"mongodb": "ok", "redis": "ok"}
        assert await first.group_send("test", {"type": "notice", "data": "after"}) == 202
        assert await receive_json(on_first) == {"type": "notice", "data": "after"}
        assert await receive_json(on_second) == {"type": "notice", "data": "after"}

        assert (first.pid, second.pid) == pids
        assert first.process.poll() is None
        assert second.process.poll() is None
        log = first.log_text()
        assert log.count("is unreachable") == 1, log
        assert log.count("is reachable again") == 1, log
    finally:
        redis_server.stop()


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@cache.example:6380/2", "redis://cache.example:6380/2"),
    ("rediss://taxi:s3cret@cache.example/0", "rediss://cache.example/0"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
])
def test_redact_url_drops_password(url, shown):
    assert redact_url(url) == shown


async def test_log_hides_redis_password(make_backend, redis_url, caplog):
    # The test Redis has no password, so it rejects this AUTH and the backend logs an outage.
    backend = make_backend(redis_url.replace("redis://", "redis://:s3cret-password@"))
    caplog.set_level(logging.DEBUG, logger="taxi.redis_groups")

    assert await backend.health() == "down"

    assert "unreachable" in caplog.text
    assert "s3cret-password" not in caplog.text
