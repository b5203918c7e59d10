#!/usr/bin/env python3
"""Run the whole taxi stack on loopback: Redis, the database, and N server processes.

The server processes run under supervisord (installed into .venv from
requirements.txt) with deploy/supervisord.conf, on consecutive ports from
--port. Redis and the MongoDB-compatible database are started here unless
REDIS_URL or MONGODB_URI is set, or a server already responds on their port.
Uses the standard library only; tests import it as a module.

Usage:
    .venv/bin/python scripts/stack.py run --processes 4
        Start everything, print the addresses, and stop it all on Ctrl-C.
    .venv/bin/python scripts/stack.py start --processes 2
        Start everything in the background and return once every process is ready.
    .venv/bin/python scripts/stack.py stop
        Stop what `start` started, by the PIDs it recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devdb  # noqa: E402
import devredis  # noqa: E402
from children import stop_process  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPERVISORD_CONFIG = REPO_ROOT / "deploy" / "supervisord.conf"
DEFAULT_VAR_DIR = REPO_ROOT / "var" / "stack"
STATE_FILE_NAME = "stack.json"
LOOPBACK = "127.0.0.1"

READY_TIMEOUT = 60.0
# Supervisord stops the server processes in parallel, each within its stopwaitsecs (15 s).
SUPERVISORD_STOP_TIMEOUT = 30.0
OTHER_STOP_TIMEOUT = 10.0

# Proxy variables must not send requests for loopback elsewhere.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _log(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


class Stack:
    """Redis, the database and N server processes under supervisord, all on 127.0.0.1.

    `environ` is the environment the servers get (default: this process's); its
    MONGODB_URI and REDIS_URL, when set, name servers to use instead of starting them.
    """

    def __init__(self, processes: int, base_port: int = 8000, var_dir: Path = DEFAULT_VAR_DIR,
                 redis_port: int = devredis.DEV_PORT, mongodb_port: int = devdb.DEV_PORT,
                 environ: dict | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self.base_port = base_port
        self.var_dir = Path(var_dir)
        self.redis_port = redis_port
        self.mongodb_port = mongodb_port
        self.environ = dict(os.environ if environ is None else environ)
        self.redis: devredis.RedisServer | None = None
        self.database: devdb.DatabaseServer | None = None
        self.supervisord: subprocess.Popen | None = None

    @property
    def ports(self) -> list[int]:
        return list(range(self.base_port, self.base_port + self.processes))

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start what is missing and wait until every server process returns 200 from `/readyz`.

        Raises RuntimeError naming what failed; whatever was started by then is stopped.
        """
        for port in self.ports:
            if devdb.port_in_use(LOOPBACK, port):
                raise RuntimeError(f"{LOOPBACK}:{port} is already in use; choose another --port")
        supervisord = Path(sys.executable).parent / "supervisord"
        if not supervisord.exists():
            raise RuntimeError(f"{supervisord} not found: install requirements.txt into this Python's environment")

        try:
            environment = dict(self.environ)
            environment["MONGODB_URI"] = self._database_uri()
            environment["REDIS_URL"] = self._redis_url()
            environment.update(TAXI_PROCESSES=str(self.processes), TAXI_BASE_PORT=str(self.base_port),
                               TAXI_VAR_DIR=str(self.var_dir))
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "supervisord.out", "ab") as output:
                self.supervisord = subprocess.Popen(
                    [str(supervisord), "--nodaemon", "--configuration", str(SUPERVISORD_CONFIG)],
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    # Ctrl-C reaches stack.py only, which then stops everything in order.
                    start_new_session=True,
                )
            _log(f"started supervisord (PID {self.supervisord.pid}) with {self.processes} taxi processes; "
                 f"logs in {self.log_dir}")
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _database_uri(self) -> str:
        if self.environ.get("MONGODB_URI"):
            return self.environ["MONGODB_URI"]
        uri = f"mongodb://{LOOPBACK}:{self.mongodb_port}/{devdb.DEV_DATABASE}"
        if devdb.ping(LOOPBACK, self.mongodb_port):
            _log(f"a MongoDB server already responds on {LOOPBACK}:{self.mongodb_port}; using it")
            return uri
        self.database = devdb.DatabaseServer(devdb.DEV_DATA_DIR, self.mongodb_port)
        self.database.start()
        _log(f"started {self.database.kind} (PID {self.database.pid}) for {uri}")
        return uri

    def _redis_url(self) -> str:
        if self.environ.get("REDIS_URL"):
            return self.environ["REDIS_URL"]
        if devredis.ping(LOOPBACK, self.redis_port):
            _log(f"a Redis server already responds on {LOOPBACK}:{self.redis_port}; using it")
            return f"redis://{LOOPBACK}:{self.redis_port}/0"
        self.redis = devredis.RedisServer(self.redis_port, work_dir=self.var_dir / "redis")
        self.redis.start()
        _log(f"started redis-server (PID {self.redis.pid}) on {self.redis.url}")
        return self.redis.url

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting:
            if self.supervisord.poll() is not None:
                raise RuntimeError(f"supervisord exited with status {self.supervisord.returncode}; "
                                   f"see {self.log_dir}/supervisord.out and supervisord.log")
            waiting = [port for port in waiting if not ready(port)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"taxi processes on ports {waiting} were not ready within {timeout} s; "
                                   f"see their logs in {self.log_dir}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop supervisord (which stops the server processes), then Redis and the database."""
        if self.supervisord is not None:
            stop_process(self.supervisord, "supervisord", SUPERVISORD_STOP_TIMEOUT, "stack")
            self.supervisord = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.database is not None:
            self.database.stop()
            self.database = None

    def state(self) -> dict:
        """Return the PIDs this stack started, for `stop` in another invocation."""
        return {
            "ports": self.ports,
            "pids": {
                "supervisord": self.supervisord.pid if self.supervisord else None,
                "redis-server": self.redis.pid if self.redis else None,
                "database": self.database.pid if self.database else None,
            },
        }


def ready(port: int) -> bool:
    """Return whether the server on `port` returns 200 from `/readyz`."""
    try:
        with _http.open(f"http://{LOOPBACK}:{port}/readyz", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_pid(pid: int, name: str, timeout: float) -> None:
    """Stop a process that another invocation started: SIGTERM, wait, then SIGKILL.

    Does nothing when the PID is gone or now belongs to a program other than `name`.
    """
    if not _is_running(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_running(pid, name):
        if time.monotonic() > deadline:
            _log(f"{name} (PID {pid}) ignored SIGTERM for {timeout} s; sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def _is_running(pid: int, name: str) -> bool:
    """Return whether `pid` is a live (not zombie) process whose command line mentions `name`."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name in parentheses.
    state = status.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and name.encode() in command_line


# --- Command line ----------------------------------------------------------------------


def run_foreground(stack: Stack) -> int:
    stack.start()
    _log("ready: " + ", ".join(f"http://{LOOPBACK}:{port}/" for port in stack.ports) + "; press Ctrl-C to stop")
    try:
        status = stack.supervisord.wait()
        _log(f"supervisord exited with status {status}; stopping the rest")
        return 1
    except KeyboardInterrupt:
        _log("stopping")
        return 0
    finally:
        stack.stop()


def start_background(stack: Stack) -> int:
    state_file = stack.var_dir / STATE_FILE_NAME
    if state_file.exists():
        _log(f"{state_file} exists: a stack may be running; run `stack.py stop` first")
        return 1
    stack.start()
    state_file.write_text(json.dumps(stack.state(), indent=2) + "\n")
    print(json.dumps(stack.state()))
    _log(f"ready on ports {stack.ports}; `stack.py stop` stops it")
    return 0


def stop_background(var_dir: Path) -> int:
    state_file = var_dir / STATE_FILE_NAME
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        _log(f"{state_file} not found: nothing to stop")
        return 1
    pids = state["pids"]
    # Order matters: the server processes leave Redis and the database cleanly first.
    if pids.get("supervisord"):
        stop_pid(pids["supervisord"], "supervisord", SUPERVISORD_STOP_TIMEOUT)
    if pids.get("redis-server"):
        stop_pid(pids["redis-server"], "redis-server", OTHER_STOP_TIMEOUT)
    if pids.get("database"):
        # Either `mongod` or `ferretdb`; the command line of both names the data directory.
        stop_pid(pids["database"], str(devdb.DEV_DATA_DIR), OTHER_STOP_TIMEOUT)
    state_file.unlink()
    _log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description="Run Redis, the database and N taxi processes.")
    commands = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")
    for action, help_text in (("run", "start everything and stop it on Ctrl-C"),
                              ("start", "start everything in the background"),
                              ("stop", "stop what `start` started")):
        command = commands.add_parser(action, help=help_text)
        command.add_argument("--var-dir", type=Path, default=DEFAULT_VAR_DIR,
                             help="directory for logs and state (default: var/stack)")
        if action == "stop":
            continue
        command.add_argument("--processes", type=int, default=2, help="number of server processes (default: 2)")
        command.add_argument("--port", type=int, default=8000, help="port of the first process (default: 8000)")
        command.add_argument("--redis-port", type=int, default=devredis.DEV_PORT,
                             help="port for Redis when REDIS_URL is unset (default: %(default)s)")
        command.add_argument("--mongodb-port", type=int, default=devdb.DEV_PORT,
                             help="port for the database when MONGODB_URI is unset (default: %(default)s)")
    args = parser.parse_args(argv)

    # SIGTERM and SIGHUP unwind like Ctrl-C, so whatever was started gets stopped. SIGINT
    # is set too because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    try:
        if args.action == "stop":
            return stop_background(args.var_dir)
        stack = Stack(args.processes, args.port, args.var_dir, args.redis_port, args.mongodb_port)
        if args.action == "run":
            return run_foreground(stack)
        return start_background(stack)
    except (RuntimeError, ValueError, devdb.BuildError) as error:
        _log(str(error))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
