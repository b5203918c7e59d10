#!/usr/bin/env python3
"""Find, build and run the MongoDB-compatible server for development and tests.

The server is a `mongod` on PATH if there is one, else a `ferretdb` on PATH, else
FerretDB built from its Go module into var/bin/ferretdb. FerretDB runs with its
SQLite backend, listens on loopback only and has telemetry turned off.

This file uses the standard library only, because `make` runs it before the
virtual environment has its packages. Tests import it as a module.

Usage:
    python scripts/devdb.py build
        Find the server, building FerretDB if needed, and print its path.
    python scripts/devdb.py start [--port PORT]
        Run the development database in the foreground until Ctrl-C.
    python scripts/devdb.py run [--port PORT] -- COMMAND [ARG ...]
        Run COMMAND with MONGODB_URI set to the development database. The
        database is started before COMMAND and stopped after it, unless
        MONGODB_URI is already set or a MongoDB server responds on the port.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from children import port_in_use, read_log_tail, start_logged, stop_process, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parent.parent

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"
BUILT_FERRETDB = REPO_ROOT / "var" / "bin" / "ferretdb"

LOOPBACK = "127.0.0.1"
DEV_PORT = 27017
DEV_DATABASE = "taxi"
DEV_DATA_DIR = REPO_ROOT / "var" / "devdb"

LOG_TAIL_LINES = 30

# Opcode of OP_MSG, the command message format of MongoDB 3.6 and later.
_OP_MSG = 2013
_request_ids = itertools.count(1)


class BuildError(RuntimeError):
    """Raised when FerretDB cannot be built."""


def _log(message: str) -> None:
    print(f"devdb: {message}", file=sys.stderr, flush=True)


# --- Finding and building the server -------------------------------------------------


def find_server() -> tuple[str, Path]:
    """Return the kind ("mongod" or "ferretdb") and path of the server to run.

    Builds FerretDB into var/bin when no server is found, which needs Go and
    network access to the Go module proxy.
    """
    for kind in ("mongod", "ferretdb"):
        found = shutil.which(kind)
        if found:
            return kind, Path(found)

    if not os.access(BUILT_FERRETDB, os.X_OK):
        build_ferretdb(BUILT_FERRETDB)
    return "ferretdb", BUILT_FERRETDB


def build_ferretdb(target: Path = BUILT_FERRETDB) -> Path:
    """Build FerretDB from its Go module and move the binary to `target`.

    The build runs in a temporary directory beside `target` and the binary is
    renamed into place, so a concurrent or interrupted build never leaves a
    partial file at `target`. Raises BuildError when Go is missing or fails.
    """
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"cannot build FerretDB {FERRETDB_VERSION}: `go` is not on PATH. "
            "Install Go 1.24 or newer, put a `mongod` or `ferretdb` binary on PATH, "
            "or set MONGODB_URI to a running MongoDB server."
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    _log(f"building FerretDB {FERRETDB_VERSION} into {target} with {go}; this happens once")

    with tempfile.TemporaryDirectory(prefix="ferretdb-build-", dir=target.parent) as work_dir:
        work = Path(work_dir)
        source = work / "src"
        shutil.copytree(_download_ferretdb_module(go, work), source)
        _make_tree_writable(source)

        # The module zip lacks build/version/version.txt, which FerretDB embeds and
        # parses at start, so without it the binary panics with "Invalid
        # build/version/version.txt file content". In a git checkout, FerretDB's
        # `go generate` writes this file from the git history.
        (source / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")

        output = work / "ferretdb"
        command = [go, "build", "-trimpath", "-o", str(output), "./cmd/ferretdb"]
        result = subprocess.run(command, cwd=source, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise BuildError(
                f"`go build` of FerretDB {FERRETDB_VERSION} failed with exit status "
                f"{result.returncode}; the go output above says why."
            )
        os.replace(output, target)

    _log(f"built {target}")
    return target


def _download_ferretdb_module(go: str, work: Path) -> Path:
    """Download the FerretDB module into the Go module cache and return its directory."""
    module = f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"
    result = subprocess.run(
        [go, "mod", "download", "-json", module],
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}

    if result.returncode != 0 or not info.get("Dir"):
        reason = info.get("Error") or f"exit status {result.returncode}"
        raise BuildError(f"`go mod download {module}` failed: {reason}")
    return Path(info["Dir"])


def _make_tree_writable(root: Path) -> None:
    # The Go module cache is read-only, and copytree keeps those permissions.
    for directory, _, files in os.walk(root):
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)


# --- Talking to a server ---------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a MongoDB `ping` command and return whether the reply has ok: 1.

    Returns False when nothing listens, the connection fails or times out, or the
    peer does not speak the MongoDB wire protocol.
    """
    request_id = next(_request_ids) & 0x7FFFFFFF
    body = struct.pack("<IB", 0, 0) + _encode_bson({"ping": 1, "$db": "admin"})
    message = struct.pack("<iiii", 16 + len(body), request_id, 0, _OP_MSG) + body

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(message)
            header = _receive_exactly(sock, 16)
            length, _, response_to, opcode = struct.unpack("<iiii", header)
            if opcode != _OP_MSG or response_to != request_id or not 21 <= length <= 48_000_000:
                return False
            reply = _receive_exactly(sock, length - 16)
    except OSError:
        return False

    # The reply is flag bits (4 bytes), then section kind 0 with one BSON document.
    if reply[4] != 0:
        return False
    try:
        ok = _read_bson_field(reply[5:], "ok")
    except (ValueError, struct.error, IndexError):
        return False
    return ok == 1


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            raise ConnectionError("connection closed in the middle of a reply")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _encode_bson(document: dict[str, int | str]) -> bytes:
    """Encode a flat document of int32 and string values, all that `ping` needs."""
    elements = b""
    for key, value in document.items():
        name = key.encode() + b"\x00"
        if isinstance(value, int):
            elements += b"\x10" + name + struct.pack("<i", value)
        else:
            data = value.encode() + b"\x00"
            elements += b"\x02" + name + struct.pack("<i", len(data)) + data
    return struct.pack("<i", len(elements) + 5) + elements + b"\x00"


# Sizes of the fixed-size BSON element types, by type byte.
_BSON_FIXED_SIZES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4,
                     0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}


def _read_bson_field(document: bytes, wanted: str) -> float | int | bool | None:
    """Return a numeric or boolean top-level field of a BSON document, or None if absent.

    Raises ValueError on a type this reader cannot skip over.
    """
    (size,) = struct.unpack_from("<i", document)
    position = 4
    while position < size - 1:
        kind = document[position]
        name_end = document.index(b"\x00", position + 1)
        name = document[position + 1:name_end].decode("utf-8", "replace")
        position = name_end + 1

        if name == wanted:
            if kind == 0x01:
                return struct.unpack_from("<d", document, position)[0]
            if kind == 0x08:
                return document[position] != 0
            if kind == 0x10:
                return struct.unpack_from("<i", document, position)[0]
            if kind == 0x12:
                return struct.unpack_from("<q", document, position)[0]
            raise ValueError(f"field {wanted!r} has BSON type {kind:#x}, not a number")

        if kind in _BSON_FIXED_SIZES:
            position += _BSON_FIXED_SIZES[kind]
        elif kind in (0x02, 0x0D, 0x0E):  # string, JavaScript code, symbol
            position += 4 + struct.unpack_from("<i", document, position)[0]
        elif kind in (0x03, 0x04, 0x0F):  # document, array, code with scope
            position += struct.unpack_from("<i", document, position)[0]
        elif kind == 0x05:  # binary: length, subtype byte, data
            position += 5 + struct.unpack_from("<i", document, position)[0]
        elif kind == 0x0B:  # regular expression: pattern and options as C strings
            position = document.index(b"\x00", document.index(b"\x00", position) + 1) + 1
        elif kind == 0x0C:  # DBPointer: string, then a 12-byte ObjectId
            position += 4 + struct.unpack_from("<i", document, position)[0] + 12
        else:
            raise ValueError(f"unknown BSON type {kind:#x}")
    return None


# --- Running a server ------------------------------------------------------------------


class DatabaseServer:
    """A mongod or FerretDB process serving one data directory on one TCP port.

    The process runs in its own session, so a Ctrl-C in the terminal does not
    reach it and the caller decides when it stops (after the app that uses it).
    Its output goes to `<data_dir>/server.log`, which is appended to.
    """

    def __init__(self, data_dir: Path, port: int, host: str = LOOPBACK) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.kind: str | None = None
        # Kept after stop() so that callers can check that the process is gone.
        self.pid: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def uri(self, database: str) -> str:
        return f"mongodb://{self.host}:{self.port}/{database}"

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it responds to a ping.

        `timeout` (seconds) counts from the process start, after any FerretDB
        build. Raises RuntimeError, with the end of the server log, when the port
        is taken, the process exits, or the wait times out.
        """
        if self.process is not None:
            raise RuntimeError(f"this database server is already running (PID {self.pid})")
        if port_in_use(self.host, self.port):
            raise RuntimeError(f"cannot start a database server: {self.host}:{self.port} is already in use")

        self.kind, executable = find_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command, env = self._command(executable)

        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- devdb: {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        self.process = start_logged(command, self.log_path, env)
        self.pid = self.process.pid

        try:
            self._wait_until_ready(timeout)
        except BaseException:
            # Also on KeyboardInterrupt, because __exit__ does not run when
            # __enter__ fails, so nothing else would stop the process.
            self.stop()
            raise

    def _command(self, executable: Path) -> tuple[list[str], dict[str, str]]:
        if self.kind == "mongod":
            command = [str(executable), "--dbpath", str(self.data_dir),
                       "--bind_ip", self.host, "--port", str(self.port)]
            return command, dict(os.environ)

        command = [
            str(executable),
            "--handler=sqlite",
            # FerretDB requires the trailing slash: the URL names a directory.
            f"--sqlite-url=file:{self.data_dir}/",
            f"--listen-addr={self.host}:{self.port}",
            "--debug-addr=-",
            "--telemetry=disable",
            f"--state-dir={self.data_dir}",
        ]
        return command, dict(os.environ, DO_NOT_TRACK="1")

    def _wait_until_ready(self, timeout: float) -> None:
        wait_until_ready(self.process, lambda: ping(self.host, self.port), timeout,
                         f"{self.kind} on {self.host}:{self.port}", self.log_tail)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last `lines` lines that the server logged since its last start."""
        return read_log_tail(self.log_path, lines, self._log_offset)

    def stop(self, timeout: float = 10) -> None:
        """Send SIGTERM, wait up to `timeout` seconds, then send SIGKILL."""
        process = self.process
        if process is None:
            return
        stop_process(process, self.kind, timeout, "devdb")
        self.process = None

    def __enter__(self) -> DatabaseServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- Command line ----------------------------------------------------------------------


def _dev_uri(port: int) -> str:
    return f"mongodb://{LOOPBACK}:{port}/{DEV_DATABASE}"


def _check_port_free_for_dev(port: int) -> None:
    if port_in_use(LOOPBACK, port):
        raise SystemExit(
            f"devdb: {LOOPBACK}:{port} is in use by a program that does not respond to a MongoDB ping. "
            "Stop that program, or set MONGODB_URI to the MongoDB server to use."
        )


def _in_terminal_foreground() -> bool:
    """Return whether this process group is the foreground job of its terminal."""
    try:
        terminal = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(terminal) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(terminal)


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Run `command`, forward SIGINT, SIGTERM and SIGHUP to it, and return its exit status."""
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as error:
        _log(f"cannot run {command[0]}: {error}")
        return 127

    def forward(signum: int, frame: object) -> None:
        # A Ctrl-C reaches the whole foreground process group, the child included,
        # so forwarding that SIGINT would deliver it twice.
        # NOTE: for the same reason a `kill -INT` aimed at this process is not
        # forwarded while it runs in the foreground of a terminal.
        if signum == signal.SIGINT and _in_terminal_foreground():
            return
        child.send_signal(signum)

    # These handlers stay after the child exits, so that a second Ctrl-C cannot
    # interrupt the database shutdown that follows.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)

    status = child.wait()
    # Like a shell, report death by signal N as 128 + N.
    return status if status >= 0 else 128 - status


def run_command(command: list[str], port: int) -> int:
    """Run `command` against the development database and return its exit status."""
    if os.environ.get("MONGODB_URI"):
        _exec(command, dict(os.environ))
    if shutil.which(command[0]) is None:
        raise SystemExit(f"devdb: cannot run {command[0]}: command not found or not executable")

    uri = _dev_uri(port)
    env = dict(os.environ, MONGODB_URI=uri)
    if ping(LOOPBACK, port):
        _log(f"a MongoDB server already responds on {LOOPBACK}:{port}; using it for {uri}")
        _exec(command, env)
    _check_port_free_for_dev(port)

    with DatabaseServer(DEV_DATA_DIR, port) as server:
        _log(f"started {server.kind} (PID {server.pid}) for {uri}; log in {server.log_path}")
        status = _run_child(command, env)
        _log(f"stopping {server.kind} (PID {server.pid})")
    return status


def _exec(command: list[str], env: dict[str, str]) -> None:
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        raise SystemExit(f"devdb: cannot run {command[0]}: {error}") from None


def start_foreground(port: int) -> int:
    """Run the development database until Ctrl-C, SIGTERM or SIGHUP, and return the exit status."""
    if ping(LOOPBACK, port):
        _log(f"a MongoDB server already responds on {LOOPBACK}:{port}; nothing started")
        return 1
    _check_port_free_for_dev(port)

    with DatabaseServer(DEV_DATA_DIR, port) as server:
        _log(
            f"{server.kind} (PID {server.pid}) serves {_dev_uri(port)}; "
            f"log in {server.log_path}; press Ctrl-C to stop"
        )
        assert server.process is not None
        try:
            status = server.process.wait()
        except KeyboardInterrupt:
            _log(f"stopping {server.kind} (PID {server.pid})")
            return 0
        _log(f"{server.kind} exited with status {status}; end of {server.log_path}:\n{server.log_tail()}")
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="devdb.py",
        description="Find, build and run the MongoDB-compatible server for development and tests.",
    )
    commands = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")
    commands.add_parser("build", help="find the server, building FerretDB if needed, and print its path")

    start = commands.add_parser("start", help="run the development database in the foreground until Ctrl-C")
    start.add_argument("--port", type=int, default=DEV_PORT, help=f"TCP port on {LOOPBACK} (default: %(default)s)")

    run = commands.add_parser(
        "run",
        help="run a command with MONGODB_URI set, starting the development database unless MONGODB_URI is set",
    )
    run.add_argument("--port", type=int, default=DEV_PORT, help=f"TCP port on {LOOPBACK} (default: %(default)s)")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG ...]")

    args = parser.parse_args(argv)

    # Until the child runs, SIGTERM and SIGHUP unwind like Ctrl-C, so the
    # database started so far is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)

    try:
        if args.action == "build":
            kind, path = find_server()
            _log(f"using {kind}")
            print(path)
            return 0
        if args.action == "start":
            return start_foreground(args.port)

        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command after --")
        return run_command(command, args.port)
    except (BuildError, RuntimeError) as error:
        _log(str(error))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
