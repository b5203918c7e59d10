"""Helpers for tests that run `server.py` as real processes.

Each process gets its environment (database URI, keys, `REDIS_URL`) from the test,
logs to a file the test can read, and is stopped by its PID at the end.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tornado.httpclient

from conftest import API_KEY, ROOT, connect, devdb, post_json, receive_json, send_json

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ServerProcess:
    """One `python server.py --port PORT` process."""

    def __init__(self, port: int, environment: dict, log_path: Path):
        self.port = port
        self.environment = environment
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        # The test's own variables win over the ones this run happens to have.
        environment = {**os.environ, "LOG_LEVEL": "info", **self.environment}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "server.py", "--port", str(self.port)],
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Poll `/healthz` until it returns 200; fail with the log if the process exits or times out."""
        client = tornado.httpclient.AsyncHTTPClient()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"server.py exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                response = await client.fetch(self.base_url + "/healthz", raise_error=False, request_timeout=2)
                if response.code == 200:
                    return
            except OSError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"server.py did not return 200 from /healthz within {timeout} s:\n{self.log_text()}")
            await asyncio.sleep(0.1)

    async def ready_status(self) -> tuple[int, dict]:
        client = tornado.httpclient.AsyncHTTPClient()
        response = await client.fetch(self.base_url + "/readyz", raise_error=False, request_timeout=5)
        return response.code, json.loads(response.body)

    async def wait_ready(self, expected_status: int, timeout: float = 20.0) -> dict:
        """Poll `/readyz` until it returns `expected_status`; return the body."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, body = await self.ready_status()
            if status == expected_status:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"/readyz on port {self.port} returned {status} {body}, "
                                     f"expected {expected_status} within {timeout} s")
            await asyncio.sleep(0.1)

    async def group_send(self, group: str, message: dict) -> int:
        status, _ = await post_json(self.base_url, f"/api/groups/{group}/send/", message,
                                    headers={"Authorization": f"Api-Key {API_KEY}"})
        return status

    def terminate(self) -> None:
        os.kill(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Send SIGTERM to the PID and wait; SIGKILL after STOP_TIMEOUT seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            return f"(cannot read {self.log_path}: {error})"


@pytest.fixture
def start_servers(environment, redis_url, tmp_path):
    """Return a coroutine function that starts `count` server.py processes on one Redis."""
    started = []

    async def start(count: int, url: str = redis_url) -> list[ServerProcess]:
        servers = []
        for _ in range(count):
            server = ServerProcess(devdb.free_port(), {**environment, "REDIS_URL": url},
                                   tmp_path / f"server-{len(started)}.log")
            server.start()
            started.append(server)
            servers.append(server)
        await asyncio.gather(*(server.wait_healthy() for server in servers))
        return servers

    yield start
    for server in started:
        server.stop()


async def open_socket(server: ServerProcess, access: str, sockets: list):
    """Connect to `server`; return once the socket is in its groups, which the echo proves.

    Tornado only reads a socket's messages after `open` returned, and `open` returns
    after Redis confirmed the socket's group subscriptions.
    """
    socket = await connect(server.port, access, sockets=sockets)
    await send_json(socket, {"type": "echo.message", "data": "ready?"})
    assert await receive_json(socket) == {"type": "echo.message", "data": "ready?"}
    return socket

