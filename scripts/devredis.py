#!/usr/bin/env python3
"""Run a throwaway Redis server on loopback for development and tests.

The server is Debian's `redis-server` (`apt-get install redis-server`). It listens
on 127.0.0.1 only, keeps nothing on disk (`--save "" --appendonly no`) and works
in a temporary directory. Like devdb.py this file uses the standard library only,
so `make` can run it before the virtual environment exists, and tests import it.

The name is not `redis.py` on purpose: tests put scripts/ on sys.path, where a
module called `redis` would shadow the redis-py client package.

Usage:
    python scripts/devredis.py start [--port PORT]
        Run Redis in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from children import port_in_use, read_log_tail, start_logged, stop_process, wait_until_ready

LOOPBACK = "127.0.0.1"
DEV_PORT = 6379
LOG_TAIL_LINES = 30


class RedisNotFound(RuntimeError):
    """Raised when `redis-server` is not on PATH."""


def find_redis_server() -> str:
    """Return the path of `redis-server`, or raise RedisNotFound saying how to install it."""
    found = shutil.which("redis-server")
    if found is None:
        raise RedisNotFound("redis-server is not on PATH; install it with `apt-get install -y redis-server`")
    return found


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send PING in the Redis protocol and return whether the reply is PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A `redis-server` process on one loopback port.

    It works in `work_dir` (where it writes redis.log) when given, else in a temporary
    directory that `stop()` deletes. The process runs in its own session, so a Ctrl-C
    in the terminal does not reach it and the caller decides when it stops. It can be
    started again after `stop()` on the same port, which tests use to simulate an outage.
    """

    def __init__(self, port: int, host: str = LOOPBACK, work_dir: Path | None = None) -> None:
        self.port = port
        self.host = host
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.pid: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._temporary_dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path | None:
        directory = self._directory()
        return None if directory is None else directory / "redis.log"

    def _directory(self) -> Path | None:
        if self.work_dir is not None:
            return self.work_dir
        if self._temporary_dir is not None:
            return Path(self._temporary_dir.name)
        return None

    def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it responds to PING.

        Raises RedisNotFound when `redis-server` is missing, and RuntimeError (with
        the end of the server log) when the port is taken, the process exits, or
        it does not respond within `timeout` seconds.
        """
        if self.process is not None:
            raise RuntimeError(f"this Redis server is already running (PID {self.pid})")
        executable = find_redis_server()
        if port_in_use(self.host, self.port):
            raise RuntimeError(f"cannot start Redis: {self.host}:{self.port} is already in use")

        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._temporary_dir = tempfile.TemporaryDirectory(prefix="taxi-redis-")
        command = [
            executable,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self._directory()),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]
        self.process = start_logged(command, self.log_path)
        self.pid = self.process.pid

        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        wait_until_ready(self.process, lambda: ping(self.host, self.port), timeout,
                         f"redis-server on {self.host}:{self.port}", self.log_tail, interval=0.05)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self.log_path, lines)

    def stop(self, timeout: float = 10) -> None:
        """Send SIGTERM to the server's PID, wait up to `timeout` seconds, then send SIGKILL."""
        if self.process is not None:
            stop_process(self.process, "redis-server", timeout, "devredis")
        self.process = None
        if self._temporary_dir is not None:
            self._temporary_dir.cleanup()
            self._temporary_dir = None

    def __enter__(self) -> RedisServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_foreground(port: int) -> int:
    """Run Redis until Ctrl-C, SIGTERM or SIGHUP, and return the exit status."""
    with RedisServer(port) as server:
        print(f"devredis: redis-server (PID {server.pid}) serves {server.url}; press Ctrl-C to stop",
              file=sys.stderr, flush=True)
        assert server.process is not None
        try:
            status = server.process.wait()
        except KeyboardInterrupt:
            return 0
        print(f"devredis: redis-server exited with status {status}:\n{server.log_tail()}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devredis.py", description="Run a throwaway Redis server on loopback.")
    commands = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")
    start = commands.add_parser("start", help="run Redis in the foreground until Ctrl-C")
    start.add_argument("--port", type=int, default=DEV_PORT, help=f"TCP port on {LOOPBACK} (default: %(default)s)")
    args = parser.parse_args(argv)

    # All three unwind like Ctrl-C, so Redis is stopped. SIGINT is set too because a
    # shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    try:
        return start_foreground(args.port)
    except RuntimeError as error:
        print(f"devredis: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
