"""Run a throwaway taxi server on loopback, with its own database, for fuzz and soak runs.

`LocalServer` starts FerretDB (or mongod) through devdb.py in a temporary folder, then
`server.py` on a free port of 127.0.0.1 with a random SECRET_KEY and API_KEY, and stops
both on exit. The server's output goes to a log file that the scripts search afterwards.
A script that also needs the log lines of the shutdown calls `stop()` inside the `with` block.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import devdb

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class LocalServer:
    def __init__(self, extra_environment: dict[str, str] | None = None, keep_dir: bool = False):
        self.extra_environment = extra_environment or {}
        self.keep_dir = keep_dir
        self.secret_key = secrets.token_urlsafe(48)
        self.api_key = secrets.token_urlsafe(24)
        self.port = devdb.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.directory = Path(tempfile.mkdtemp(prefix="taxi-local-"))
        self.log_path = self.directory / "server.log"
        self.database = devdb.DatabaseServer(self.directory / "mongodb", devdb.free_port())
        self.process: subprocess.Popen | None = None
        self.exit_status: int | None = None

    @property
    def mongodb_uri(self) -> str:
        return self.database.uri("taxi_local")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "MONGODB_URI": self.mongodb_uri,
            "SECRET_KEY": self.secret_key,
            "API_KEY": self.api_key,
            **self.extra_environment,
        }

    def start(self) -> None:
        self.database.start()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO_ROOT, env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"server.py exited with status {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server.py did not respond to /healthz within {START_TIMEOUT} s; see {self.log_path}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def rss_kib(self) -> int:
        """Return the server process's resident set size in KiB, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def stop(self) -> None:
        """Send SIGTERM to the server and wait for it, then stop the database."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_status = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"localserver: server.py (PID {self.pid}) ignored SIGTERM for {STOP_TIMEOUT} s; killing it",
                      file=sys.stderr)
                self.process.kill()
                self.exit_status = self.process.wait()
        self.database.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self.keep_dir:
            print(f"localserver: kept {self.directory} (server log and database)", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
