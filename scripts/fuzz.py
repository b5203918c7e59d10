#!/usr/bin/env python3
"""Send random and malformed WebSocket frames to a taxi server and check that it survives.

By default the script starts its own database and server on loopback (see
localserver.py). With `--url` it uses a server that is already running, which must be
on a loopback address. Each connection signs in as one of a few users made for the
run, sends a few frames of one kind (random text, binary, huge, invalid UTF-8,
fragmented, random JSON, protocol violations, floods), reads what comes back for a
moment, and disconnects. The run stops after `--connections` connections or
`--seconds` seconds, whichever comes first. Then it checks that /healthz answers, that a
fresh socket still echoes, and that the server log has no "Traceback" and no
"Uncaught exception".

Usage:
    .venv/bin/python scripts/fuzz.py [--connections N] [--seconds S] [--seed SEED]
    .venv/bin/python scripts/fuzz.py --url http://127.0.0.1:8000 [--server-log FILE]

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import random
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wsraw  # noqa: E402
from localserver import LocalServer  # noqa: E402

DEFAULT_MAX_MESSAGE_SIZE = 65536
PASSWORD = "fuzz-password-1"
# Seconds a connection reads replies before it disconnects.
READ_WINDOW = 0.3
LOG_ALARMS = ("Traceback", "Uncaught exception")


# -- frames ------------------------------------------------------------------------


def random_text(rng: random.Random, size: int) -> str:
    # Mostly ASCII, with some characters from across the Unicode range (no surrogates).
    alphabet = [chr(code) for code in range(32, 127)] + ["é", "ж", "中", "😀", "\u0000", "\n", '"', "\\"]
    return "".join(rng.choice(alphabet) for _ in range(size))


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, rng.randint(-2**70, 2**70), rng.random() * 1e300])
    if kind == 2:
        return random_text(rng, rng.randrange(20))
    if kind == 3:
        return rng.randint(-10, 10)
    if kind == 4:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    message = {random_text(rng, rng.randrange(8)): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}
    if rng.random() < 0.7:
        message["type"] = rng.choice(["echo.message", "auth.refresh", "group.send", "", random_text(rng, 10),
                                      rng.randint(0, 9), None])
    return message


def frame(opcode, payload, fin=True, mask=True):
    return wsraw.encode_frame(opcode, payload, fin, mask)


def case_text(rng, limits):
    return [frame(wsraw.TEXT, random_text(rng, rng.randrange(300)).encode()) for _ in range(rng.randint(1, 5))]


def case_json(rng, limits):
    return [frame(wsraw.TEXT, json.dumps(random_json(rng)).encode()) for _ in range(rng.randint(1, 5))]


def case_auth_refresh(rng, limits):
    tokens = ["", "a.b.c", random_text(rng, 50), "eyJhbGciOiJub25lIn0.e30.", "x" * 5000, None, 7, {"token": 1}]
    return [frame(wsraw.TEXT, json.dumps({"type": "auth.refresh", "data": {"token": rng.choice(tokens)}}).encode())
            for _ in range(rng.randint(1, 3))]


def case_binary(rng, limits):
    return [frame(wsraw.BINARY, rng.randbytes(rng.randrange(200)))]


def case_huge(rng, limits):
    size = rng.randint(limits["max_message_size"] + 1, 4 * limits["max_message_size"])
    return [frame(rng.choice([wsraw.TEXT, wsraw.BINARY]), b"a" * size)]


def case_huge_declared_length(rng, limits):
    # A header that promises up to 2**63 - 1 bytes, followed by a few.
    length = rng.choice([2**63 - 1, 2**32, limits["max_message_size"] * 1000])
    return [bytes([0x81, 0xFF]) + struct.pack("!Q", length) + rng.randbytes(4) + b"abc"]


def case_invalid_utf8(rng, limits):
    bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\xe2\x82"])
    body = b'{"type": "echo.message", "data": "' + bad + b'"}'
    return [frame(wsraw.TEXT, body)]


def case_fragmented(rng, limits):
    text = json.dumps({"type": "echo.message", "data": random_text(rng, rng.randrange(1, 200))}).encode()
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 5))))
    pieces = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]
    frames = []
    for index, piece in enumerate(pieces):
        opcode = wsraw.TEXT if index == 0 else wsraw.CONTINUATION
        frames.append(frame(opcode, piece, fin=index == len(pieces) - 1))
        if rng.random() < 0.3:
            frames.append(frame(wsraw.PING, b"between fragments"))
    return frames


def case_bad_fragmentation(rng, limits):
    return rng.choice([
        [frame(wsraw.CONTINUATION, b"nothing to continue")],
        [frame(wsraw.TEXT, b'{"type"', fin=False), frame(wsraw.TEXT, b'{"type": "echo.message"}')],
        [frame(wsraw.PING, b"fragmented ping", fin=False)],
        [frame(wsraw.TEXT, b'{"type": "echo', fin=False)],
        [frame(wsraw.TEXT, b"[", fin=False)] * 50,
    ])


def case_control_frames(rng, limits):
    return rng.choice([
        [frame(wsraw.PING, rng.randbytes(rng.randrange(126)))],
        [bytes([0x89, 0xFE]) + struct.pack("!H", 200) + rng.randbytes(4) + b"p" * 200],
        [frame(wsraw.CLOSE, b"\x03")],
        [frame(wsraw.CLOSE, struct.pack("!H", rng.choice([0, 999, 1004, 1005, 1006, 5000, 65535])))],
        [frame(wsraw.CLOSE, struct.pack("!H", 1000) + b"\xff\xfe")],
        [frame(wsraw.PONG, b"unasked")],
        [frame(wsraw.PING, b"")] * 30,
    ])


def case_frame_header(rng, limits):
    return rng.choice([
        [frame(rng.choice([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]), b"reserved opcode")],
        [bytes([0x81 | rng.choice([0x40, 0x20, 0x10]), 0x80 | 2]) + rng.randbytes(4) + b"{}"],
        [frame(wsraw.TEXT, b'{"type": "echo.message"}', mask=False)],
        [rng.randbytes(rng.randrange(1, 64))],
    ])


def case_flood(rng, limits):
    body = json.dumps({"type": "echo.message", "data": "flood"}).encode()
    return [frame(wsraw.TEXT, body)] * rng.randint(50, 150)


def case_deep_json(rng, limits):
    depth = rng.randint(1000, min(100_000, limits["max_message_size"] - 10))
    return [frame(wsraw.TEXT, (rng.choice("[{") * depth).replace("{", '{"a":').encode()[:limits["max_message_size"]])]


CASES = {name[len("case_"):]: function for name, function in globals().items() if name.startswith("case_")}


# -- one connection -----------------------------------------------------------------


async def fuzz_connection(host, port, token, case, rng, limits, statistics):
    try:
        raw = await wsraw.connect(host, port, f"/taxi/?token={token}")
    except wsraw.HandshakeRejected as rejected:
        statistics["handshake " + str(rejected.status)] += 1
        return
    try:
        for data in CASES[case](rng, limits):
            raw.send_raw(data)
            statistics["frames"] += 1
        await asyncio.wait_for(raw.drain(), 5)
        try:
            await asyncio.wait_for(read_all(raw), READ_WINDOW)
        except asyncio.TimeoutError:
            pass
        if raw.close_code is not None:
            statistics[f"close {raw.close_code}"] += 1
        elif rng.random() < 0.5:
            raw.send_frame(wsraw.CLOSE, struct.pack("!H", 1000))
            await asyncio.wait_for(raw.drain(), 5)
    except (ConnectionError, asyncio.TimeoutError):
        statistics["dropped by server"] += 1
    finally:
        raw.close()


async def read_all(raw):
    while await raw.read_message() is not None:
        pass


# -- checks --------------------------------------------------------------------------


def post_json(base_url, path, body):
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def make_user(base_url) -> str:
    """Sign up a new user and return an access token for it."""
    username = f"fuzz.{uuid.uuid4().hex[:12]}"
    status, body = post_json(base_url, "/api/sign_up/", {
        "username": username, "password1": PASSWORD, "password2": PASSWORD,
        "first_name": "Fuzz", "last_name": "Client",
    })
    if status != 201:
        raise RuntimeError(f"sign up failed with {status}: {body}")
    status, body = post_json(base_url, "/api/log_in/", {"username": username, "password": PASSWORD})
    if status != 200:
        raise RuntimeError(f"log in failed with {status}: {body}")
    return body["access"]


def health_status(base_url) -> int:
    try:
        with urllib.request.urlopen(base_url + "/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


async def echo_works(host, port, token) -> bool:
    raw = await wsraw.connect(host, port, f"/taxi/?token={token}")
    try:
        raw.send_json({"type": "echo.message", "data": "after the fuzz"})
        return await raw.read_json() == {"type": "echo.message", "data": "after the fuzz"}
    finally:
        raw.close()


# -- the run --------------------------------------------------------------------------


async def run(base_url, arguments, limits) -> tuple[collections.Counter, float]:
    parts = urlsplit(base_url)
    host, port = parts.hostname, parts.port
    rng = random.Random(arguments.seed)
    tokens = [await asyncio.to_thread(make_user, base_url) for _ in range(arguments.concurrency)]
    statistics = collections.Counter()
    started = time.monotonic()
    deadline = started + arguments.seconds
    case_names = sorted(CASES)
    next_index = 0

    async def worker(worker_index):
        nonlocal next_index
        worker_rng = random.Random(rng.random())
        while next_index < arguments.connections and time.monotonic() < deadline:
            next_index += 1
            case = worker_rng.choice(case_names)
            statistics["case " + case] += 1
            statistics["connections"] += 1
            await fuzz_connection(host, port, tokens[worker_index], case, worker_rng, limits, statistics)

    await asyncio.gather(*(worker(index) for index in range(arguments.concurrency)))
    return statistics, time.monotonic() - started


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        sys.exit(f"fuzz: {url} is not a loopback address; this script only targets servers on this machine")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="base URL of a running server on loopback (default: start one)")
    parser.add_argument("--server-log", type=Path, help="with --url: the server's log file to search")
    parser.add_argument("--connections", type=int, default=3000, help="stop after this many connections")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop after this many seconds")
    parser.add_argument("--concurrency", type=int, default=4, help="connections open at once, one user each")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random choices, to repeat a run")
    parser.add_argument("--keep", action="store_true", help="keep the started server's log and database folder")
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE,
                        help="the server's MAX_MESSAGE_SIZE, for the oversize cases (bytes)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    limits = {"max_message_size": arguments.max_message_size}
    if arguments.url:
        check_loopback(arguments.url)
        return report(arguments.url.rstrip("/"), arguments, limits, None)
    with LocalServer({"MAX_MESSAGE_SIZE": str(arguments.max_message_size)}, keep_dir=arguments.keep) as server:
        return report(server.base_url, arguments, limits, server)


def report(base_url, arguments, limits, server) -> int:
    statistics, elapsed = asyncio.run(run(base_url, arguments, limits))
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    checks = {}
    checks["/healthz answers 200"] = health_status(base_url) == 200
    fresh_token = make_user(base_url)
    checks["a fresh socket echoes"] = asyncio.run(echo_works(host, port, fresh_token))

    log_text = None
    if server is not None:
        server.stop()
        checks["server exits 0 on SIGTERM"] = server.exit_status == 0
        log_text = server.log_text()
    elif arguments.server_log:
        log_text = arguments.server_log.read_text(encoding="utf-8", errors="replace")
    if log_text is not None:
        for alarm in LOG_ALARMS:
            checks[f"server log has no {alarm!r}"] = alarm not in log_text

    print(f"fuzz: {statistics['connections']} connections, {statistics['frames']} frames "
          f"in {elapsed:.1f} s (seed {arguments.seed})")
    for name, count in sorted(statistics.items()):
        if name not in ("connections", "frames"):
            print(f"  {name}: {count}")
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    if log_text is None:
        print("  (server log not searched: pass --server-log)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
