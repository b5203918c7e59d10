"""Limits on open sockets: message rate, sockets per user, send backlog, heartbeat, UTF-8."""

import asyncio
import json

import pytest

import settings as settings_module
from conftest import (
    connect,
    create_user,
    receive_json,
    send_json,
    wait_closed,
    wait_until,
)
from taxi.limits import MessageRateLimiter, Verdict

import wsraw


def env(**variables):
    """Parametrize the `environment` fixture with these settings, for one test."""
    return pytest.mark.parametrize("environment", [variables], indirect=True,
                                   ids=[",".join(f"{name}={value}" for name, value in variables.items())])


async def raw_connect(port, token, **options):
    return await wsraw.connect("127.0.0.1", port, f"/taxi/?token={token}", **options)


# Settings


def test_limit_settings_defaults(tmp_path):
    settings = settings_module.load({"SECRET_KEY": "k" * 40}, secret_key_file=tmp_path / "key")
    assert settings.max_messages_per_second == 20.0
    assert settings.message_burst == 40
    assert settings.max_sockets_per_user == 10
    assert settings.ping_interval == 20.0
    assert settings.ping_timeout == 20.0


def test_ping_timeout_defaults_to_interval(tmp_path):
    settings = settings_module.load({"SECRET_KEY": "k" * 40, "PING_INTERVAL": "5"}, secret_key_file=tmp_path / "key")
    assert settings.ping_timeout == 5.0


@pytest.mark.parametrize("name, value", [
    ("MAX_MESSAGES_PER_SECOND", "fast"),
    ("MAX_MESSAGES_PER_SECOND", "-1"),
    ("MAX_MESSAGES_PER_SECOND", "nan"),
    ("MESSAGE_BURST", "0"),
    ("MESSAGE_BURST", "2.5"),
    ("MAX_SOCKETS_PER_USER", "-1"),
    ("PING_INTERVAL", "inf"),
    ("PING_TIMEOUT", "30"),
])
def test_bad_limit_setting_names_variable(tmp_path, name, value):
    with pytest.raises(settings_module.SettingsError) as raised:
        settings_module.load({"SECRET_KEY": "k" * 40, name: value}, secret_key_file=tmp_path / "key")
    assert raised.value.variable == name
    assert name in str(raised.value)


# Message rate


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_limiter_allows_burst_then_rejects():
    clock = FakeClock()
    limiter = MessageRateLimiter(rate=2, burst=3, clock=clock)
    verdicts = [limiter.check() for _ in range(4)]
    assert verdicts == [Verdict.ACCEPT] * 3 + [Verdict.REJECT]


def test_rate_limiter_refills_over_time():
    clock = FakeClock()
    limiter = MessageRateLimiter(rate=2, burst=3, clock=clock)
    for _ in range(3):
        limiter.check()
    clock.now = 0.5
    assert limiter.check() is Verdict.ACCEPT
    assert limiter.check() is Verdict.REJECT


def test_rate_limiter_closes_on_sustained_abuse():
    clock = FakeClock()
    limiter = MessageRateLimiter(rate=1, burst=3, clock=clock)
    verdicts = [limiter.check() for _ in range(7)]
    assert verdicts == [Verdict.ACCEPT] * 3 + [Verdict.REJECT] * 3 + [Verdict.CLOSE]


def test_rate_limiter_forgives_occasional_excess():
    clock = FakeClock()
    limiter = MessageRateLimiter(rate=1, burst=3, clock=clock)
    # One message over the limit every 10 seconds, for ten minutes, is never closed.
    for second in range(600):
        clock.now = float(second)
        assert limiter.check() is not Verdict.CLOSE
        if second % 10 == 0:
            assert limiter.check() is not Verdict.CLOSE


def test_rate_limit_zero_means_no_limit():
    limiter = MessageRateLimiter(rate=0, burst=1, clock=FakeClock())
    assert all(limiter.check() is Verdict.ACCEPT for _ in range(1000))


@env(MAX_MESSAGES_PER_SECOND="0.1", MESSAGE_BURST="3")
async def test_messages_over_rate_get_rate_limited(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    for number in range(5):
        await send_json(socket, {"type": "echo.message", "data": number})
    replies = [await receive_json(socket) for _ in range(5)]
    assert replies[:3] == [{"type": "echo.message", "data": number} for number in range(3)]
    for reply in replies[3:]:
        assert reply["type"] == "error"
        assert reply["data"]["code"] == "rate_limited"
        assert "per second" in reply["data"]["detail"]


@env(MAX_MESSAGES_PER_SECOND="0.1", MESSAGE_BURST="3")
async def test_sustained_flood_closes_with_1008(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    for number in range(10):
        await send_json(socket, {"type": "echo.message", "data": number})
    assert await wait_closed(socket) == 1008
    assert socket.close_reason == "message rate limit exceeded"


# Sockets per user


@env(MAX_SOCKETS_PER_USER="2")
async def test_socket_over_user_limit_gets_429(services, port, sockets):
    user, access = await create_user(services)
    for _ in range(2):
        await connect(port, access, sockets=sockets)
    with pytest.raises(wsraw.HandshakeRejected) as rejected:
        await raw_connect(port, access)
    assert rejected.value.status == 429
    assert "MAX_SOCKETS_PER_USER" in json.loads(rejected.value.body)["detail"]
    assert services.sockets.count_of_user(user.id) == 2


@env(MAX_SOCKETS_PER_USER="2")
async def test_user_limit_frees_slot_on_close(services, port, sockets):
    user, access = await create_user(services)
    first = await connect(port, access)
    await connect(port, access, sockets=sockets)
    first.close()
    await wait_until(lambda: services.sockets.count_of_user(user.id) == 1)
    third = await connect(port, access, sockets=sockets)
    await send_json(third, {"type": "echo.message", "data": "third"})
    assert await receive_json(third) == {"type": "echo.message", "data": "third"}


@env(MAX_SOCKETS_PER_USER="1")
async def test_user_limit_is_per_user(services, port, sockets):
    _, first_access = await create_user(services)
    _, second_access = await create_user(services)
    await connect(port, first_access, sockets=sockets)
    second = await connect(port, second_access, sockets=sockets)
    assert second.protocol is not None


@env(MAX_SOCKETS_PER_USER="3")
async def test_concurrent_handshakes_respect_user_limit(services, port, sockets):
    user, access = await create_user(services)
    results = await asyncio.gather(*(raw_connect(port, access) for _ in range(8)), return_exceptions=True)
    opened = [result for result in results if isinstance(result, wsraw.RawSocket)]
    rejected = [result for result in results if isinstance(result, wsraw.HandshakeRejected)]
    try:
        assert len(opened) == 3
        assert [error.status for error in rejected] == [429] * 5
        assert services.sockets.count_of_user(user.id) == 3
    finally:
        for socket in opened:
            socket.close()


# Slow consumers

MESSAGE_PADDING = "x" * 1000
# About 5 MB in all, far more than MAX_SEND_BACKLOG and the kernel buffers hold.
GROUP_SENDS = 5000
# Bounds the loops that send until the slow consumer is closed.
MAX_GROUP_SENDS = 20_000


async def send_numbered(services, number):
    await services.groups.group_send("test", {"type": "group.message", "data": {"n": number, "pad": MESSAGE_PADDING}})


async def send_until_slow_consumer_closed(services):
    """Send numbered group messages until the server closes a slow consumer, or MAX_GROUP_SENDS."""
    sent = 0
    while services.counters["slow_consumers_closed"] == 0 and sent < MAX_GROUP_SENDS:
        await send_numbered(services, sent)
        sent += 1
    return sent


async def read_numbers(socket, received):
    """Append the `n` of every group message on `socket` to `received`, until cancelled."""
    while True:
        received.append((await receive_json(socket, timeout=30))["data"]["n"])


@env(MAX_SEND_BACKLOG="65536")
async def test_slow_consumer_is_closed_and_others_get_everything(services, port, sockets, caplog):
    user, access = await create_user(services)
    # A small receive buffer, never read: the server's backlog for it grows quickly.
    slow = await raw_connect(port, access, receive_buffer=4096)
    await wait_until(lambda: len(services.groups.members("test")) == 1)
    (slow_handler,) = services.sockets
    fast = await connect(port, access, sockets=sockets)
    await wait_until(lambda: len(services.groups.members("test")) == 2)

    received = []
    reader = asyncio.ensure_future(read_numbers(fast, received))
    try:
        for number in range(GROUP_SENDS):
            await send_numbered(services, number)
            if number % 50 == 49:
                # The fast client shares this event loop, so it can only read while the
                # sender waits; each batch must reach it promptly, within 5 seconds.
                await wait_until(lambda: len(received) > number or reader.done())
        await wait_until(lambda: len(received) == GROUP_SENDS or reader.done())
    finally:
        reader.cancel()
        slow.close()

    assert services.counters["slow_consumers_closed"] == 1
    assert received == list(range(GROUP_SENDS))
    await wait_until(lambda: slow_handler not in services.sockets)
    await wait_until(lambda: slow_handler not in services.groups.members("test"))
    assert slow_handler not in services.groups.members(f"user.{user.id}")
    assert len(services.groups.members("test")) == 1
    assert sum("over MAX_SEND_BACKLOG" in record.getMessage() for record in caplog.records) == 1


@env(MAX_SEND_BACKLOG="65536")
async def test_slow_consumer_gets_1008_when_it_reads_again(services, port):
    _, access = await create_user(services)
    slow = await raw_connect(port, access, receive_buffer=4096)
    await wait_until(lambda: len(services.groups.members("test")) == 1)
    try:
        await send_until_slow_consumer_closed(services)
        # Reading everything now reaches the close frame before the server gives up waiting.
        assert await slow.wait_closed(timeout=10) == 1008
    finally:
        slow.close()
    assert "MAX_SEND_BACKLOG" in slow.close_reason


@env(MAX_SEND_BACKLOG="65536")
async def test_silent_slow_consumer_is_dropped(services, port):
    _, access = await create_user(services)
    slow = await raw_connect(port, access, receive_buffer=4096)
    await wait_until(lambda: len(services.groups.members("test")) == 1)
    try:
        await send_until_slow_consumer_closed(services)
        # The close frame sits behind the backlog the client never reads; the server drops the connection.
        await wait_until(lambda: not services.sockets, timeout=10)
        await wait_until(lambda: not services.groups.group_names())
    finally:
        slow.close()


# Heartbeat


@env(PING_INTERVAL="0.2", PING_TIMEOUT="0.2")
async def test_client_that_ignores_pings_is_closed(services, port):
    _, access = await create_user(services)
    silent = await raw_connect(port, access)
    await wait_until(lambda: len(services.sockets) == 1)
    try:
        while await asyncio.wait_for(silent.read_message(answer_pings=False), 5) is not None:
            pass
    finally:
        silent.close()
    assert silent.close_reason == "ping timed out"
    await wait_until(lambda: not services.sockets)


@env(PING_INTERVAL="0.2", PING_TIMEOUT="0.2")
async def test_client_that_answers_pings_stays_open(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    # Several ping intervals pass, and the Tornado client replies to each ping.
    await asyncio.sleep(1.0)
    await send_json(socket, {"type": "echo.message", "data": "alive"})
    assert await receive_json(socket) == {"type": "echo.message", "data": "alive"}


# Invalid UTF-8


async def test_invalid_utf8_closes_with_1007(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    await socket.write_message(b'{"type": "echo.message", "data": "\xff\xfe"}', binary=False)
    assert await wait_closed(socket) == 1007
    assert socket.close_reason == "text frame is not valid UTF-8"


async def test_invalid_utf8_across_fragments_closes_with_1007(services, port):
    _, access = await create_user(services)
    raw = await raw_connect(port, access)
    try:
        raw.send_frame(wsraw.TEXT, b'{"type": "echo.message", "data": "\xc3', fin=False)
        raw.send_frame(wsraw.CONTINUATION, b'"}')
        assert await raw.wait_closed() == 1007
    finally:
        raw.close()


async def test_valid_utf8_across_fragments_is_echoed(services, port):
    _, access = await create_user(services)
    raw = await raw_connect(port, access)
    text = '{"type": "echo.message", "data": "caf\u00e9 \u00fcber"}'.encode()
    # Split inside the two bytes of the e-acute: only the whole message must be UTF-8.
    middle = text.index("\u00e9".encode()) + 1
    try:
        raw.send_frame(wsraw.TEXT, text[:middle], fin=False)
        raw.send_frame(wsraw.CONTINUATION, text[middle:])
        assert await raw.read_json() == json.loads(text)
    finally:
        raw.close()
