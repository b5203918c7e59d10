"""Several server processes: graceful stop on SIGTERM, and the supervisord stack."""

import asyncio
import os
import subprocess

import pytest
import redis.asyncio

import stack as stack_module
from conftest import create_user, devdb, receive_json, wait_closed
# start_servers is a fixture.
from server_processes import ServerProcess, open_socket, start_servers  # noqa: F401

CLOSE_GOING_AWAY = 1001
# The contract: a process exits within 10 s of SIGTERM.
SIGTERM_EXIT_WITHIN = 10.0


async def wait_for_exit(process: subprocess.Popen, timeout: float) -> int:
    """Return the exit status of `process`; fail if it is still running after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while process.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"PID {process.pid} still running {timeout} s after SIGTERM")
        await asyncio.sleep(0.05)
    return process.returncode


async def test_sigterm_stops_one_process_cleanly(services, start_servers, sockets, redis_url):
    stopping, staying = await start_servers(2)
    _, access = await create_user(services)
    on_stopping = await open_socket(stopping, access, sockets)
    on_staying = await open_socket(staying, access, sockets)

    started = asyncio.get_running_loop().time()
    stopping.terminate()

    assert await wait_closed(on_stopping, timeout=SIGTERM_EXIT_WITHIN) == CLOSE_GOING_AWAY
    assert await wait_for_exit(stopping.process, SIGTERM_EXIT_WITHIN) == 0
    assert asyncio.get_running_loop().time() - started < SIGTERM_EXIT_WITHIN
    assert "Stopped" in stopping.log_text()

    # The stopped process left its Redis subscriptions, and the other one kept its own.
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        [(_, subscribers)] = await client.pubsub_numsub("taxi:group:test")
    finally:
        await client.aclose()
    assert subscribers == 1

    assert await staying.group_send("test", {"type": "notice", "data": "still serving"}) == 202
    assert await receive_json(on_staying) == {"type": "notice", "data": "still serving"}
    late = await open_socket(staying, access, sockets)
    assert late.protocol is not None


@pytest.fixture
def stack_environment(environment, redis_url):
    return {**os.environ, **environment, "REDIS_URL": redis_url}


async def test_supervisord_stack_serves_a_socket(services, stack_environment, tmp_path, sockets):
    base_port = free_consecutive_ports(2)
    stack = stack_module.Stack(2, base_port, tmp_path / "stack", environ=stack_environment)
    loop = asyncio.get_running_loop()
    # Stack.start blocks while it polls the processes, so it runs off the event loop.
    await loop.run_in_executor(None, stack.start)
    try:
        user, access = await create_user(services)
        first = ServerProcess(base_port, {}, tmp_path / "unused.log")
        second = ServerProcess(base_port + 1, {}, tmp_path / "unused.log")
        socket = await open_socket(first, access, sockets)

        assert await second.group_send(f"user.{user.id}", {"type": "trip", "data": "via supervisord"}) == 202
        assert await receive_json(socket) == {"type": "trip", "data": "via supervisord"}

        supervisord = stack.supervisord
        await loop.run_in_executor(None, stack.stop)
        assert supervisord.returncode == 0
        assert await wait_closed(socket) == CLOSE_GOING_AWAY
        assert (tmp_path / "stack" / "log" / f"taxi-{base_port}.log").exists()
    finally:
        await loop.run_in_executor(None, stack.stop)


def free_consecutive_ports(count: int, attempts: int = 50) -> int:
    """Return the first of `count` consecutive free ports on 127.0.0.1."""
    for _ in range(attempts):
        first = devdb.free_port()
        if first + count <= 65535 and not any(
            devdb.port_in_use("127.0.0.1", port) for port in range(first, first + count)
        ):
            return first
    raise AssertionError(f"no {count} consecutive free ports found in {attempts} attempts")

