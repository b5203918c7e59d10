"""A MongoDB outage: handshakes get 503, open sockets carry on, and service resumes without a restart.

This test runs its own FerretDB (or mongod), because it stops and restarts it on the
same port and data directory.
"""

import asyncio
import json
import time

import tornado.httpclient
import tornado.httpserver
import tornado.testing

import settings as settings_module
from conftest import (
    connect,
    create_user,
    devdb,
    handshake_status,
    receive_json,
    send_json,
)
from taxi.app import create_services, make_app

# The contract's deadline for a handshake while MongoDB is unreachable.
HANDSHAKE_DEADLINE = 3.0
# Generous: the driver notices the server is back on its next server check.
RECOVERY_TIMEOUT = 60.0


async def readiness(port):
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"http://127.0.0.1:{port}/readyz", raise_error=False)
    return response.code, json.loads(response.body)


async def echo(socket, data):
    await send_json(socket, {"type": "echo.message", "data": data})
    return await receive_json(socket)


async def wait_for_status(probe, expected, timeout):
    """Call `probe()` until it returns `expected`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r}, not {expected!r}, after {timeout} s")
        await asyncio.sleep(0.25)


async def test_database_outage_and_recovery(environment, tmp_path):
    database = devdb.DatabaseServer(tmp_path / "mongodb", devdb.free_port())
    await asyncio.to_thread(database.start)
    environment["MONGODB_URI"] = database.uri("taxi_outage")
    services = create_services(settings_module.load(environment, secret_key_file=tmp_path / "key"))
    server = tornado.httpserver.HTTPServer(make_app(services))
    listener, port = tornado.testing.bind_unused_port()
    server.add_socket(listener)
    socket = None
    try:
        await services.users.ensure_indexes()
        _, access = await create_user(services)
        socket = await connect(port, access)
        assert await echo(socket, "before") == {"type": "echo.message", "data": "before"}

        await asyncio.to_thread(database.stop)

        started = time.monotonic()
        status = await handshake_status(port, access)
        elapsed = time.monotonic() - started
        assert status == 503
        assert elapsed < HANDSHAKE_DEADLINE
        assert await echo(socket, "during") == {"type": "echo.message", "data": "during"}
        code, body = await readiness(port)
        assert code == 503
        assert body["mongodb"] == "down"

        await asyncio.to_thread(database.start)

        await wait_for_status(lambda: handshake_status(port, access), 101, RECOVERY_TIMEOUT)
        code, body = await readiness(port)
        assert code == 200
        assert body["mongodb"] == "ok"
        assert await echo(socket, "after") == {"type": "echo.message", "data": "after"}
    finally:
        if socket is not None:
            socket.close()
        server.stop()
        await services.close()
        await asyncio.to_thread(database.stop)
