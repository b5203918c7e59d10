"""No token, password or password hash reaches a log line or a response where it does not belong.

One test walks through what a client does (sign up, log in, refresh, open sockets with
good and bad tokens in the query and in the header, `auth.refresh` on the socket) with
every logger at DEBUG, then searches everything logged and every response for the
secrets it used. Log-in and refresh responses carry the tokens they issue, and only those.
"""

import json
import logging
import time
import uuid

import tornado.httpclient
import tornado.websocket

from conftest import API_KEY, SECRET_KEY, receive_json, send_json, wait_closed
from taxi import tokens


class Recorder:
    """Collects every response body and reason the client saw, labelled by request."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def add(self, label: str, text) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.seen.append((label, text or ""))


async def post(base_url, path, body, recorder, label):
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(base_url + path, method="POST", body=json.dumps(body), raise_error=False)
    recorder.add(label + " body", response.body)
    recorder.add(label + " reason", response.reason)
    return response.code, json.loads(response.body)


async def handshake(port, recorder, label, query_token=None, header_token=None):
    """Open a socket; return it, or None after recording the rejection's body and reason."""
    url = f"ws://127.0.0.1:{port}/taxi/"
    if query_token is not None:
        url += f"?token={query_token}"
    headers = {} if header_token is None else {"Authorization": f"Bearer {header_token}"}
    try:
        return await tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(url, headers=headers))
    except tornado.httpclient.HTTPClientError as error:
        recorder.add(label + " body", error.response.body if error.response else b"")
        recorder.add(label + " reason", error.response.reason if error.response else "")
        return None


async def test_secrets_stay_out_of_logs_and_responses(services, base_url, port, caplog):
    caplog.set_level(logging.DEBUG)
    recorder = Recorder()
    password = f"Secret-{uuid.uuid4().hex}"
    username = f"rider.{uuid.uuid4().hex[:8]}"

    status, _ = await post(base_url, "/api/sign_up/", {
        "username": username, "password1": password, "password2": password,
        "first_name": "Ada", "last_name": "Rider", "group": "rider",
    }, recorder, "sign up")
    assert status == 201
    user = await services.users.find_by_username(username)
    password_hash = user.password_hash
    assert password_hash

    status, _ = await post(base_url, "/api/sign_up/", {
        "username": username, "password1": password, "password2": password + "x",
        "first_name": "Ada", "last_name": "Rider",
    }, recorder, "sign up, passwords differ")
    assert status == 400
    status, _ = await post(base_url, "/api/log_in/", {"username": username, "password": password + "x"},
                           recorder, "log in, wrong password")
    assert status == 401

    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(base_url + "/api/log_in/", method="POST",
                                  body=json.dumps({"username": username, "password": password}))
    issued = json.loads(response.body)
    access, refresh = issued["access"], issued["refresh"]
    # Issued tokens belong in this body; the password and its hash do not.
    for secret in (password, password_hash):
        assert secret not in response.body.decode()

    response = await client.fetch(base_url + "/api/token/refresh/", method="POST",
                                  body=json.dumps({"refresh": refresh}))
    refreshed_access = json.loads(response.body)["access"]
    assert refresh not in response.body.decode()
    status, _ = await post(base_url, "/api/token/refresh/", {"refresh": access}, recorder, "refresh with access")
    assert status == 401

    expired = tokens.mint(SECRET_KEY, tokens.ACCESS, user.id, 300, now=time.time() - 3600)
    forged = tokens.mint("another-secret-key-of-a-proper-length!!", tokens.ACCESS, user.id, 300)
    good_by_query = await handshake(port, recorder, "query, good", query_token=access)
    good_by_header = await handshake(port, recorder, "header, good", header_token=refreshed_access)
    assert good_by_query is not None
    assert good_by_header is not None
    for name, bad in (("refresh", refresh), ("expired", expired), ("forged", forged)):
        assert await handshake(port, recorder, f"query, {name}", query_token=bad) is None
        assert await handshake(port, recorder, f"header, {name}", header_token=bad) is None

    for name, token in (("good", refreshed_access), ("refresh", refresh), ("forged", forged), ("expired", expired)):
        await send_json(good_by_query, {"type": "auth.refresh", "data": {"token": token}})
        reply = await receive_json(good_by_query)
        recorder.add(f"auth.refresh, {name}", json.dumps(reply))
    await send_json(good_by_query, {"type": "echo.message", "data": "done"})
    assert (await receive_json(good_by_query))["data"] == "done"

    group_status, _ = await post(base_url, "/api/groups/test/send/", {"type": "x"}, recorder, "group send, no key")
    assert group_status == 401

    good_by_header.close()
    good_by_query.close(1000)
    await wait_closed(good_by_query)
    recorder.add("close reason", good_by_query.close_reason)

    secrets = {
        "password": password,
        "password hash": password_hash,
        "access token": access,
        "refreshed access token": refreshed_access,
        "refresh token": refresh,
        "expired token": expired,
        "forged token": forged,
        "secret key": SECRET_KEY,
        "api key": API_KEY,
    }
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    assert len(caplog.records) > 20, "expected the walk-through to log at DEBUG"
    for name, secret in secrets.items():
        assert secret not in logged, f"the {name} was logged"
        for label, text in recorder.seen:
            assert secret not in text, f"the {name} appears in the response to {label}"
    # Secrets are also never logged in part: the signature is the part that matters.
    for name in ("access token", "refresh token", "forged token"):
        signature = secrets[name].rsplit(".", 1)[1]
        assert signature not in logged, f"the signature of the {name} was logged"
