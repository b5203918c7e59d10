"""The HTTP API: sign up, log in, refresh, health and readiness."""

import asyncio
import json
import time

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.testing

import settings as settings_module
from conftest import PASSWORD, SECRET_KEY, create_user, devdb, post_json
from taxi import tokens
from taxi.app import create_services, make_app

SIGN_UP = {
    "username": "rider.one@example.com",
    "password1": PASSWORD,
    "password2": PASSWORD,
    "first_name": "Rider",
    "last_name": "One",
    "group": "rider",
}


async def get(base_url, path):
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(base_url + path, raise_error=False)
    return response.code, json.loads(response.body)


# Sign up


async def test_sign_up_creates_user(services, base_url):
    status, body = await post_json(base_url, "/api/sign_up/", SIGN_UP)
    assert status == 201
    assert set(body) == {"id", "username", "first_name", "last_name", "group"}
    assert body["username"] == "rider.one@example.com"
    assert body["group"] == "rider"
    stored = await services.users.get(body["id"])
    assert stored.password_hash.startswith("$argon2")
    assert PASSWORD not in stored.password_hash


async def test_sign_up_group_defaults_to_rider(base_url):
    fields = {name: value for name, value in SIGN_UP.items() if name != "group"}
    status, body = await post_json(base_url, "/api/sign_up/", fields)
    assert status == 201
    assert body["group"] == "rider"


async def test_sign_up_as_driver(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "group": "driver"})
    assert status == 201
    assert body["group"] == "driver"


@pytest.mark.parametrize("field", ["username", "password1", "password2", "first_name", "last_name"])
async def test_sign_up_missing_field(base_url, field):
    fields = {name: value for name, value in SIGN_UP.items() if name != field}
    status, body = await post_json(base_url, "/api/sign_up/", fields)
    assert status == 400
    assert body == {field: ["This field is required."]}


@pytest.mark.parametrize("field", ["username", "password1", "password2", "first_name", "last_name"])
async def test_sign_up_blank_field(base_url, field):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, field: "   "})
    assert status == 400
    assert body[field] == ["This field may not be blank."]


async def test_sign_up_passwords_differ(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "password2": PASSWORD + "x"})
    assert status == 400
    assert body == {"password2": ["The two password fields didn't match."]}


async def test_sign_up_short_password(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "password1": "short", "password2": "short"})
    assert status == 400
    assert "at least 8 characters" in body["password1"][0]


async def test_sign_up_username_taken_ignoring_case(base_url):
    status, _ = await post_json(base_url, "/api/sign_up/", SIGN_UP)
    assert status == 201
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "username": "RIDER.One@Example.COM"})
    assert status == 400
    assert body == {"username": ["A user with that username already exists."]}


async def test_concurrent_sign_ups_create_one_user(services, base_url):
    variants = ["racer@example.com", "RACER@example.com", "Racer@Example.com", "racer@EXAMPLE.COM"]
    results = await asyncio.gather(*(
        post_json(base_url, "/api/sign_up/", {**SIGN_UP, "username": username}) for username in variants
    ))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 400, 400, 400]
    assert await services.users.collection.count_documents({}) == 1


async def test_sign_up_unknown_group(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "group": "admin"})
    assert status == 400
    assert "not a valid choice" in body["group"][0]


async def test_sign_up_invalid_username(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "username": "has space"})
    assert status == 400
    assert "valid username" in body["username"][0]


async def test_sign_up_field_of_wrong_type(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {**SIGN_UP, "first_name": ["Rider"]})
    assert status == 400
    assert body == {"first_name": ["Not a valid string."]}


async def test_sign_up_reports_every_problem(base_url):
    status, body = await post_json(base_url, "/api/sign_up/", {"group": "admin", "password1": "x"})
    assert status == 400
    assert set(body) == {"username", "password1", "password2", "first_name", "last_name", "group"}


@pytest.mark.parametrize("path", ["/api/sign_up/", "/api/log_in/", "/api/token/refresh/"])
@pytest.mark.parametrize("raw, detail", [
    (b"not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b'{"username": NaN}', "not valid JSON"),
])
async def test_body_that_is_not_a_json_object(base_url, path, raw, detail):
    status, body = await post_json(base_url, path, None, raw=raw)
    assert status == 400
    assert detail in body["detail"]


async def test_body_over_max_message_size_is_413(services, base_url):
    raw = b'{"username": "' + b"x" * services.settings.max_message_size + b'"}'
    status, body = await post_json(base_url, "/api/sign_up/", None, raw=raw)
    assert status == 413
    assert "MAX_MESSAGE_SIZE" in body["detail"]


async def test_wrong_method_is_405_json(base_url):
    status, body = await get(base_url, "/api/sign_up/")
    assert status == 405
    assert "detail" in body


async def test_unknown_path_is_404_json(base_url):
    status, body = await get(base_url, "/api/nothing/")
    assert status == 404
    assert body == {"detail": "Not found."}


# Log in


async def test_log_in_returns_working_tokens(services, base_url):
    user, _ = await create_user(services, username="Driver.Two@example.com", group="driver")
    status, body = await post_json(base_url, "/api/log_in/", {"username": "driver.two@EXAMPLE.com", "password": PASSWORD})
    assert status == 200
    assert set(body) == {"access", "refresh"}
    access = tokens.decode(body["access"], SECRET_KEY, tokens.ACCESS, leeway=0)
    refresh = tokens.decode(body["refresh"], SECRET_KEY, tokens.REFRESH, leeway=0)
    assert access.user_id == user.id
    assert refresh.user_id == user.id
    assert access.exp - access.iat == services.settings.access_token_lifetime
    assert refresh.exp - refresh.iat == services.settings.refresh_token_lifetime
    assert access.jti != refresh.jti


@pytest.mark.parametrize("case", ["unknown user", "wrong password", "inactive user"])
async def test_log_in_failures_share_one_message(services, base_url, case):
    await create_user(services, username="known@example.com", is_active=case != "inactive user")
    username = "nobody@example.com" if case == "unknown user" else "known@example.com"
    password = "wrong-password" if case == "wrong password" else PASSWORD
    status, body = await post_json(base_url, "/api/log_in/", {"username": username, "password": password})
    assert status == 401
    assert body == {"detail": "No active account found with the given credentials."}


@pytest.mark.parametrize("field", ["username", "password"])
async def test_log_in_missing_field(base_url, field):
    fields = {"username": "someone@example.com", "password": PASSWORD}
    del fields[field]
    status, body = await post_json(base_url, "/api/log_in/", fields)
    assert status == 400
    assert body == {field: ["This field is required."]}


# Refresh


async def test_refresh_returns_new_access_token(services, base_url):
    user, _ = await create_user(services)
    refresh = tokens.mint(SECRET_KEY, tokens.REFRESH, user.id, 3600)
    status, body = await post_json(base_url, "/api/token/refresh/", {"refresh": refresh})
    assert status == 200
    assert set(body) == {"access"}
    assert tokens.decode(body["access"], SECRET_KEY, tokens.ACCESS, leeway=0).user_id == user.id


@pytest.mark.parametrize("case", ["access token", "expired", "inactive user", "garbage", "unknown user"])
async def test_refresh_rejects_with_401(services, base_url, case):
    user, access = await create_user(services, is_active=case != "inactive user")
    refresh = {
        "access token": access,
        "expired": tokens.mint(SECRET_KEY, tokens.REFRESH, user.id, 60, now=time.time() - 3600),
        "inactive user": tokens.mint(SECRET_KEY, tokens.REFRESH, user.id, 3600),
        "garbage": "garbage",
        "unknown user": tokens.mint(SECRET_KEY, tokens.REFRESH, "f" * 24, 3600),
    }[case]
    status, body = await post_json(base_url, "/api/token/refresh/", {"refresh": refresh})
    assert status == 401
    assert "detail" in body


@pytest.mark.parametrize("fields, message", [
    ({}, "This field is required."),
    ({"refresh": ""}, "This field may not be blank."),
    ({"refresh": "  "}, "This field may not be blank."),
    ({"refresh": 5}, "Not a valid string."),
])
async def test_refresh_missing_or_blank(base_url, fields, message):
    status, body = await post_json(base_url, "/api/token/refresh/", fields)
    assert status == 400
    assert body == {"refresh": [message]}


# Health and readiness


async def test_healthz(base_url):
    assert await get(base_url, "/healthz") == (200, {"status": "ok"})


async def test_readyz_when_database_answers(base_url):
    assert await get(base_url, "/readyz") == (200, {"mongodb": "ok", "redis": "disabled"})


async def test_readyz_when_database_is_down(tmp_path, environment):
    """Readiness follows a database this test starts and then stops."""
    database = devdb.DatabaseServer(tmp_path / "db", devdb.free_port())
    database.start()
    environment["MONGODB_URI"] = database.uri("taxi")
    services = create_services(settings_module.load(environment, secret_key_file=tmp_path / "key"))
    server = tornado.httpserver.HTTPServer(make_app(services))
    listener, port = tornado.testing.bind_unused_port()
    server.add_socket(listener)
    try:
        assert await get(f"http://127.0.0.1:{port}", "/readyz") == (200, {"mongodb": "ok", "redis": "disabled"})
        database.stop()
        assert await get(f"http://127.0.0.1:{port}", "/readyz") == (503, {"mongodb": "down", "redis": "disabled"})
        assert await get(f"http://127.0.0.1:{port}", "/healthz") == (200, {"status": "ok"})
    finally:
        database.stop()
        server.stop()
        await services.close()
