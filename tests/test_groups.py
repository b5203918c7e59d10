"""Groups: membership, removal on every kind of close, delivery, and the group-send endpoint."""

import json

import pytest

from conftest import (
    API_KEY,
    connect,
    create_user,
    post_json,
    receive_json,
    receive_nothing,
    reconfigure,
    wait_until,
)
from taxi.groups import LocalGroups


class RecordingMember:
    def __init__(self):
        self.payloads = []

    def send_payload(self, payload):
        self.payloads.append(json.loads(payload))


class BrokenMember:
    def send_payload(self, payload):
        raise ConnectionResetError("peer went away")


def members_of(services, group):
    return services.groups.members(group)


# Membership over real sockets


async def test_open_socket_joins_its_groups(services, port, sockets):
    rider, rider_token = await create_user(services, group="rider")
    driver, driver_token = await create_user(services, group="driver")
    await connect(port, rider_token, sockets=sockets)
    await connect(port, driver_token, sockets=sockets)
    await wait_until(lambda: len(members_of(services, "test")) == 2)
    assert len(members_of(services, f"user.{rider.id}")) == 1
    assert len(members_of(services, f"user.{driver.id}")) == 1
    assert len(members_of(services, "riders")) == 1
    assert len(members_of(services, "drivers")) == 1


async def test_closed_socket_leaves_every_group(services, port):
    user, access = await create_user(services)
    socket = await connect(port, access)
    await wait_until(lambda: members_of(services, "test"))
    socket.close()
    await wait_until(lambda: not services.groups.group_names())
    assert services.sockets == set()


async def test_dropped_connection_leaves_every_group(services, port):
    """A client that vanishes without a close frame is still removed."""
    _, access = await create_user(services)
    socket = await connect(port, access)
    await wait_until(lambda: members_of(services, "test"))
    socket.protocol.stream.close()  # TCP closed, no WebSocket close frame.
    await wait_until(lambda: not services.groups.group_names())


async def test_send_reaches_exactly_the_members(services, port, sockets):
    _, rider_token = await create_user(services, group="rider")
    _, driver_token = await create_user(services, group="driver")
    rider = await connect(port, rider_token, sockets=sockets)
    driver = await connect(port, driver_token, sockets=sockets)
    await wait_until(lambda: members_of(services, "drivers") and members_of(services, "riders"))

    message = {"type": "trip.requested", "data": {"pickup": "Main St"}}
    reached = await services.groups.group_send("drivers", message)
    assert reached == 1
    assert await receive_json(driver) == message
    await receive_nothing(rider)


async def test_user_group_reaches_all_of_that_users_sockets(services, port, sockets):
    user, access = await create_user(services)
    _, other_access = await create_user(services)
    phone = await connect(port, access, sockets=sockets)
    laptop = await connect(port, access, sockets=sockets)
    other = await connect(port, other_access, sockets=sockets)
    await wait_until(lambda: len(members_of(services, f"user.{user.id}")) == 2)

    await services.groups.group_send(f"user.{user.id}", {"type": "note", "data": 1})
    assert await receive_json(phone) == {"type": "note", "data": 1}
    assert await receive_json(laptop) == {"type": "note", "data": 1}
    await receive_nothing(other)


async def test_sends_arrive_in_order(services, port, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    await wait_until(lambda: members_of(services, "test"))
    for number in range(100):
        await services.groups.group_send("test", {"type": "count", "data": number})
    received = [(await receive_json(socket))["data"] for _ in range(100)]
    assert received == list(range(100))


async def test_send_with_a_dead_member_reaches_the_others(services, port, sockets):
    _, access = await create_user(services)
    alive = await connect(port, access, sockets=sockets)
    await wait_until(lambda: members_of(services, "test"))
    await services.groups.group_add("test", BrokenMember())

    await services.groups.group_send("test", {"type": "echo.message", "data": "still delivered"})
    assert await receive_json(alive) == {"type": "echo.message", "data": "still delivered"}


async def test_send_to_socket_whose_connection_just_died(services, port, sockets):
    """A member whose TCP connection is gone, before `on_close` ran, does not stop delivery."""
    _, access = await create_user(services)
    dying = await connect(port, access)
    alive = await connect(port, access, sockets=sockets)
    await wait_until(lambda: len(members_of(services, "test")) == 2)
    dying.protocol.stream.close()
    await services.groups.group_send("test", {"type": "x", "data": 1})
    assert await receive_json(alive) == {"type": "x", "data": 1}


# The in-process group map on its own


async def test_empty_group_is_dropped():
    groups = LocalGroups()
    member = RecordingMember()
    await groups.group_add("trip.1", member)
    assert groups.group_names() == ["trip.1"]
    await groups.group_discard("trip.1", member)
    assert groups.group_names() == []


async def test_discard_is_idempotent():
    groups = LocalGroups()
    member = RecordingMember()
    await groups.group_discard("never.joined", member)
    await groups.group_add("trip.1", member)
    await groups.group_discard("trip.1", member)
    await groups.group_discard("trip.1", member)
    assert groups.group_names() == []


async def test_members_leaving_during_a_send_do_not_break_it():
    groups = LocalGroups()
    first, last = RecordingMember(), RecordingMember()

    class Leaver(RecordingMember):
        def send_payload(self, payload):
            super().send_payload(payload)
            # A close callback can run inside a send and change the member set.
            groups.discard_local("trip.1", first)
            groups.discard_local("trip.1", last)
            groups.discard_local("trip.1", self)

    leaver = Leaver()
    for member in (first, leaver, last):
        await groups.group_add("trip.1", member)
    reached = await groups.group_send("trip.1", {"type": "t", "data": None})
    assert reached == 3
    assert first.payloads == leaver.payloads == last.payloads == [{"type": "t", "data": None}]
    assert groups.group_names() == []


async def test_message_is_encoded_once_per_send():
    groups = LocalGroups()
    payloads = []

    class Capturing:
        def send_payload(self, payload):
            payloads.append(payload)

    for _ in range(3):
        await groups.group_add("test", Capturing())
    await groups.group_send("test", {"type": "t", "data": "é"})
    assert payloads[0] is payloads[1] is payloads[2]
    assert json.loads(payloads[0]) == {"type": "t", "data": "é"}


@pytest.mark.parametrize("name", ["", "has space", "x" * 101, "ünïcode", "a/b"])
async def test_invalid_group_name_is_rejected(name):
    with pytest.raises(ValueError, match="invalid group name"):
        await LocalGroups().group_add(name, RecordingMember())


# The group-send endpoint


def api_key_header(key=API_KEY):
    return {"Authorization": f"Api-Key {key}"}


async def test_group_send_endpoint_reaches_socket(services, port, base_url, sockets):
    _, access = await create_user(services)
    socket = await connect(port, access, sockets=sockets)
    await wait_until(lambda: members_of(services, "test"))
    message = {"type": "trip.updated", "data": {"status": "STARTED"}}
    status, body = await post_json(base_url, "/api/groups/test/send/", message, headers=api_key_header())
    assert status == 202
    assert body == {"group": "test"}
    assert await receive_json(socket) == message


async def test_group_send_endpoint_is_404_without_api_key(environment, services, base_url):
    del environment["API_KEY"]
    reconfigure(services, environment)
    status, body = await post_json(base_url, "/api/groups/test/send/", {"type": "x"}, headers=api_key_header())
    assert status == 404
    assert body == {"detail": "Not found."}


@pytest.mark.parametrize("headers", [{}, api_key_header("wrong"), {"Authorization": f"Bearer {API_KEY}"}])
async def test_group_send_endpoint_wrong_or_missing_key(base_url, headers):
    status, body = await post_json(base_url, "/api/groups/test/send/", {"type": "x"}, headers=headers)
    assert status == 401
    assert "API key" in body["detail"]


@pytest.mark.parametrize("raw", [b"[1]", b"null", b"not json", b'"text"'])
async def test_group_send_endpoint_body_not_an_object(base_url, raw):
    status, body = await post_json(base_url, "/api/groups/test/send/", None, headers=api_key_header(), raw=raw)
    assert status == 400
    assert "detail" in body


async def test_group_send_endpoint_body_too_large(services, base_url):
    message = {"type": "x", "data": "a" * services.settings.max_message_size}
    status, body = await post_json(base_url, "/api/groups/test/send/", message, headers=api_key_header())
    assert status == 413
    assert "MAX_MESSAGE_SIZE" in body["detail"]


async def test_group_send_endpoint_invalid_group_name(base_url):
    status, body = await post_json(base_url, "/api/groups/bad%20name/send/", {"type": "x"}, headers=api_key_header())
    assert status == 400
    assert "invalid group name" in body["detail"]
