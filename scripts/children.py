"""Start, watch and stop the helper servers that the scripts run (FerretDB, Redis, supervisord).

Standard library only, like the scripts that import it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def port_in_use(host: str, port: int) -> bool:
    """Return whether a TCP socket is already bound to host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR makes leftover TIME_WAIT connections not count as "in use",
        # as they do not stop a server from listening there.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def start_logged(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` in a session of its own, appending its output to `log_path`.

    The new session keeps a Ctrl-C in the terminal from reaching the child directly, so
    the script that started it decides when and how it stops.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def wait_until_ready(process: subprocess.Popen, is_ready: Callable[[], bool], timeout: float,
                     name: str, log_tail: Callable[[], str], interval: float = 0.1) -> None:
    """Poll `is_ready()` until it is true; raise RuntimeError with the log tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        status = process.poll()
        if status is not None:
            raise RuntimeError(f"{name} exited with status {status} during start-up; end of its log:\n{log_tail()}")
        if is_ready():
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{name} (PID {process.pid}) was not ready within {timeout} s (timed out); "
                f"end of its log:\n{log_tail()}"
            )
        time.sleep(interval)


def read_log_tail(path: Path | None, lines: int, offset: int = 0) -> str:
    """Return the last `lines` lines of the log at `path`, from byte `offset` on."""
    if path is None:
        return "(no log)"
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(cannot read the log: {error})"
    return "\n".join(text.splitlines()[-lines:])


def stop_process(process: subprocess.Popen, name: str, timeout: float, prefix: str) -> int:
    """Send SIGTERM to a child process, wait up to `timeout` seconds, then SIGKILL; return its status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{prefix}: {name} (PID {process.pid}) ignored SIGTERM for {timeout} s; sending SIGKILL",
                  file=sys.stderr, flush=True)
            process.kill()
            process.wait()
    return process.returncode
