"""Load client for the taxi WebSocket protocol, on picows and uvloop.

It runs these measurements (`--phases`) against one server and writes their results
as JSON:

- handshake: authenticated handshakes/s at each `--handshake-concurrency`, and
  rejected handshakes/s with no token and with a wrongly signed token (expecting 401).
- echo: `echo.message` round trips/s of `--echo-sockets` sockets in a closed loop.
- group: time from `POST /api/groups/test/send/` until all `--group-sockets` sockets
  in group `test` have the message.
- memory: server RSS per idle authenticated socket at each `--memory-sockets` count.

Every result carries the client's CPU use over its window (resource.getrusage) and
the server's (from /proc/<server-pid>/stat). Echo, group send and idle memory use
picows, the fastest client library that compare_clients.py measured. Handshakes use
HandshakeProbe, a minimal RFC 6455 client on a raw uvloop connection.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import sys
import time
from urllib.parse import urlsplit

import uvloop
from picows import WSError, WSListener, WSMsgType, ws_connect

from common import ACCESS_TOKEN_LIFETIME, generate_user_ids, mint_access_token
from measure import Window, percentile, process_rss_kib

ECHO_WARMUP_SECONDS = 1.0
GROUP_WARMUP_SENDS = 2
CLOSE_TIMEOUT_SECONDS = 5.0
# The client reads only small JSON frames, so a small initial buffer keeps 10,000
# client sockets from costing picows' default 16 KiB each.
READ_BUFFER_BYTES = 4096


def load_average():
    with open("/proc/loadavg") as loadavg:
        return loadavg.read().split()[:3]


def summarize_ms(seconds_list):
    """Return p50, p99 and max in milliseconds of a list of durations in seconds."""
    if not seconds_list:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(1000 * percentile(seconds_list, 0.50), 3),
        "p99_ms": round(1000 * percentile(seconds_list, 0.99), 3),
        "max_ms": round(1000 * max(seconds_list), 3),
    }


class Target:
    """Server addresses, API key and the pre-minted tokens the server accepts."""

    def __init__(self, args, user_ids):
        # Several URLs (one per server process) share the sockets round-robin.
        self.urls = args.url.split(",")
        self.url = self.urls[0]
        self.server_pids = args.server_pid
        api = urlsplit(args.api_url or self.url.replace("ws://", "http://", 1))
        self.api_host = api.hostname
        self.api_port = api.port or 80
        self.api_key = args.api_key
        mint = taxi_minter(args.taxi_root) if args.taxi_root else mint_access_token
        # One token per user is minted up front so that minting is never measured.
        self.tokens = [mint(args.secret, user_id) for user_id in user_ids]
        self.foreign_token = mint(os.urandom(32).hex(), user_ids[0])

    @property
    def server_pid(self):
        """The first server process: the one whose RSS the memory phase reads."""
        return self.server_pids[0]

    def socket_url(self, index):
        return f"{self.urls[index % len(self.urls)]}?token={self.tokens[index % len(self.tokens)]}"


def taxi_minter(taxi_root):
    """Return a function minting access tokens with taxi.tokens.mint from the checkout at `taxi_root`."""
    sys.path.insert(0, taxi_root)
    from taxi import tokens

    def mint(secret, user_id):
        return tokens.mint(secret, tokens.ACCESS, user_id, ACCESS_TOKEN_LIFETIME)
    return mint


# -- sockets ------------------------------------------------------------------


class Listener(WSListener):
    """A client socket that forwards text frames to `on_text(listener, text, arrived_at)`."""

    def __init__(self, index, on_text=None):
        self.index = index
        self.on_text = on_text
        self.transport = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT and self.on_text is not None:
            self.on_text(self, frame.get_payload_as_utf8_text(), time.perf_counter())


async def open_socket(url, listener):
    # With uvloop's own create_connection, picows 2.3.1 opened sockets with about 20% less
    # client CPU and ran more echo round trips/s than with its default aiofastnet transport
    # (compare_clients.py on a 2-core AMD EPYC).
    transport, _ = await ws_connect(lambda: listener, url, read_buffer_init_size=READ_BUFFER_BYTES,
                                    use_aiofastnet=False)
    return transport


async def close_socket(transport):
    """Send a close frame and wait for the server to close the TCP connection."""
    try:
        transport.send_close()
        await asyncio.wait_for(transport.wait_disconnected(), CLOSE_TIMEOUT_SECONDS)
    except (asyncio.TimeoutError, WSError, OSError):
        transport.disconnect(graceful=False)


async def open_sockets(target, count, on_text, concurrency, first_index=0):
    """Open `count` authenticated sockets, at most `concurrency` at a time.

    Returns the listeners of the sockets that opened and the number that failed.
    """
    semaphore = asyncio.Semaphore(concurrency)
    listeners = []
    failures = 0

    async def open_one(index):
        nonlocal failures
        async with semaphore:
            listener = Listener(index, on_text)
            try:
                await open_socket(target.socket_url(index), listener)
            except (WSError, OSError, asyncio.TimeoutError) as exc:
                failures += 1
                if failures <= 3:
                    print(f"socket {index} failed to open: {exc!r}", file=sys.stderr)
                return
            listeners.append(listener)

    await asyncio.gather(*(open_one(first_index + i) for i in range(count)))
    return listeners, failures


async def close_sockets(listeners, concurrency):
    semaphore = asyncio.Semaphore(concurrency)

    async def close_one(listener):
        async with semaphore:
            await close_socket(listener.transport)

    await asyncio.gather(*(close_one(listener) for listener in listeners))


# -- (A) handshakes -----------------------------------------------------------

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NORMAL = (1000).to_bytes(2, "big")


class HandshakeProbe(asyncio.Protocol):
    """One RFC 6455 opening handshake on a raw connection and, after a 101, a clean close.

    It is much cheaper per connection than ws_connect, which matters because on two
    cores the client's CPU would otherwise cap the handshake rate of a fast server.
    `done` gets the HTTP status, or "bad accept", "no close frame" or "eof" on failure.
    """

    def __init__(self, request, expected_accept, done):
        self.request = request
        self.expected_accept = expected_accept
        self.done = done
        self.buffer = b""
        self.status = None
        self.outcome = "eof"
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        self.buffer += data
        if self.status is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            self.buffer = self.buffer[head_end + 4:]
            self.status = int(head.split(" ", 2)[1])
            if self.status != 101:
                self.outcome = self.status
                self.transport.close()
                return
            if f"\r\nsec-websocket-accept: {self.expected_accept}" not in head.lower():
                self.outcome = "bad accept"
                self.transport.abort()
                return
            mask = os.urandom(4)
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(CLOSE_NORMAL))
            self.transport.write(b"\x88\x82" + mask + payload)
            self.outcome = "no close frame"
        if self.status == 101 and contains_close_frame(self.buffer):
            self.outcome = 101

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(self.outcome)


def contains_close_frame(data):
    """Return whether the unmasked server frames in `data` include a close frame."""
    offset = 0
    while offset + 2 <= len(data):
        opcode = data[offset] & 0x0F
        length = data[offset + 1] & 0x7F
        header = 2
        if length == 126:
            header, length = 4, int.from_bytes(data[offset + 2:offset + 4], "big")
        elif length == 127:
            header, length = 10, int.from_bytes(data[offset + 2:offset + 10], "big")
        if opcode == 0x8:
            return True
        offset += header + length
    return False


def handshake_request(path, host_header):
    """Return a GET upgrade request with a fresh key, and the Sec-WebSocket-Accept it expects."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode().lower()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


async def measure_handshakes(target, concurrency, mode, seconds, max_count):
    """Run `concurrency` loops that each open and close sockets for `seconds`.

    `mode` is `accepted` (a valid token, expects 101 then a clean close),
    `no_token` or `bad_signature` (both expect 401).
    """
    loop = asyncio.get_running_loop()
    urls = [urlsplit(url) for url in target.urls]
    expected = 101 if mode == "accepted" else 401
    latencies = []
    errors = {}
    deadline = time.perf_counter() + seconds
    next_index = 0

    def next_url_and_path():
        nonlocal next_index
        next_index += 1
        url = urls[next_index % len(urls)]
        if mode == "accepted":
            return url, f"{url.path}?token={target.tokens[next_index % len(target.tokens)]}"
        if mode == "no_token":
            return url, url.path
        return url, f"{url.path}?token={target.foreign_token}"

    async def handshake_once():
        url, path = next_url_and_path()
        request, accept = handshake_request(path, url.netloc)
        done = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: HandshakeProbe(request, accept, done), url.hostname, url.port
        )
        try:
            return await asyncio.wait_for(done, CLOSE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            transport.abort()
            return "timeout"

    async def loop_one():
        while time.perf_counter() < deadline and len(latencies) < max_count:
            started = time.perf_counter()
            try:
                outcome = await handshake_once()
            except OSError as exc:
                outcome = type(exc).__name__
            if outcome == expected:
                latencies.append(time.perf_counter() - started)
            else:
                errors[str(outcome)] = errors.get(str(outcome), 0) + 1

    window = Window(target.server_pids)
    await asyncio.gather(*(loop_one() for _ in range(concurrency)))
    usage = window.stop()
    return {
        "mode": mode,
        "concurrency": concurrency,
        "count": len(latencies),
        "per_second": round(len(latencies) / usage["seconds"], 1),
        "errors": errors,
        **summarize_ms(latencies),
        **usage,
    }


# -- (B) echo -----------------------------------------------------------------


async def measure_echo(target, socket_count, seconds, connect_concurrency):
    """Keep one `echo.message` in flight per socket and count the replies."""
    latencies = []
    errors = 0
    sent_at = {}
    sequence = {}
    window_start = window_end = float("inf")
    all_done = asyncio.get_running_loop().create_future()
    finished = 0

    def send_next(listener):
        sequence[listener.index] = seq = sequence.get(listener.index, 0) + 1
        text = json.dumps({"type": "echo.message", "data": {"i": listener.index, "n": seq}})
        sent_at[listener.index] = time.perf_counter()
        listener.transport.send(WSMsgType.TEXT, text.encode())

    def on_text(listener, text, arrived_at):
        nonlocal errors, finished
        message = json.loads(text)
        data = message.get("data")
        if message.get("type") != "echo.message" or not isinstance(data, dict) or data.get("n") != sequence[listener.index]:
            errors += 1
        if window_start <= arrived_at <= window_end:
            latencies.append(arrived_at - sent_at[listener.index])
        if arrived_at < window_end:
            send_next(listener)
        else:
            finished += 1
            if finished == len(listeners) and not all_done.done():
                all_done.set_result(None)

    listeners, failures = await open_sockets(target, socket_count, on_text, connect_concurrency)
    if not listeners:
        return {"sockets": 0, "open_failures": failures, "error": "no socket opened"}

    window_start = time.perf_counter() + ECHO_WARMUP_SECONDS
    window_end = window_start + seconds
    for listener in listeners:
        send_next(listener)
    await asyncio.sleep(ECHO_WARMUP_SECONDS)
    window = Window(target.server_pids)
    try:
        await asyncio.wait_for(all_done, seconds + 10)
    except asyncio.TimeoutError:
        errors += len(listeners) - finished
    usage = window.stop()
    await close_sockets(listeners, connect_concurrency)

    return {
        "sockets": len(listeners),
        "open_failures": failures,
        "round_trips": len(latencies),
        "round_trips_per_second": round(len(latencies) / seconds, 1),
        "errors": errors,
        **summarize_ms(latencies),
        **usage,
    }


# -- (C) group send -----------------------------------------------------------


async def post_json(host, port, path, headers, body):
    """Send one HTTP/1.1 POST with a JSON body and return (status, response body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        length = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        response = await reader.readexactly(length) if length is not None else await reader.read()
        return status, response
    finally:
        writer.close()


async def measure_group_send(target, socket_count, sends, timeout, connect_concurrency):
    """Time each group send from just before the POST until the last socket has the message."""
    pending = {}

    def on_text(listener, text, arrived_at):
        message = json.loads(text)
        if message.get("type") != "bench.group":
            return
        tally = pending.get(message["data"]["seq"])
        if tally is None:
            return
        tally["received"] += 1
        tally["last"] = arrived_at
        if tally["received"] == tally["expected"]:
            tally["done"].set_result(None)

    listeners, failures = await open_sockets(target, socket_count, on_text, connect_concurrency)
    if not listeners:
        return {"sockets": 0, "open_failures": failures, "error": "no socket opened"}

    delivery, post_times, incomplete, bad_status = [], [], 0, {}
    loop = asyncio.get_running_loop()
    window = None
    for seq in range(1, GROUP_WARMUP_SENDS + sends + 1):
        if seq == GROUP_WARMUP_SENDS + 1:
            window = Window(target.server_pids)
        tally = {"expected": len(listeners), "received": 0, "last": None, "done": loop.create_future()}
        pending[seq] = tally
        body = json.dumps({"type": "bench.group", "data": {"seq": seq}}).encode()
        started = time.perf_counter()
        status, _ = await post_json(target.api_host, target.api_port, "/api/groups/test/send/",
                                    {"Authorization": f"Api-Key {target.api_key}"}, body)
        posted = time.perf_counter()
        if status != 202:
            bad_status[str(status)] = bad_status.get(str(status), 0) + 1
        try:
            await asyncio.wait_for(asyncio.shield(tally["done"]), timeout)
        except asyncio.TimeoutError:
            incomplete += 1
        del pending[seq]
        if seq > GROUP_WARMUP_SENDS and tally["received"] == tally["expected"]:
            delivery.append(tally["last"] - started)
            post_times.append(posted - started)
    usage = window.stop() if window else {}
    await close_sockets(listeners, connect_concurrency)

    return {
        "sockets": len(listeners),
        "open_failures": failures,
        "sends": sends,
        "incomplete_sends": incomplete,
        "non_202_responses": bad_status,
        **summarize_ms(delivery),
        "post_p50_ms": round(1000 * percentile(post_times, 0.5), 3) if post_times else None,
        **usage,
    }


# -- (D) idle memory ----------------------------------------------------------


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the resulting limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def read_settled_rss(pid, settle_seconds):
    """Wait `settle_seconds`, then return the median of three VmRSS readings 0.2 s apart."""
    await asyncio.sleep(settle_seconds)
    readings = []
    for _ in range(3):
        readings.append(process_rss_kib(pid))
        await asyncio.sleep(0.2)
    readings = sorted(reading for reading in readings if reading is not None)
    return readings[len(readings) // 2] if readings else None


async def measure_idle_memory(target, counts, settle_seconds, connect_concurrency):
    """Open idle sockets up to each count in `counts` and read the server's RSS at each."""
    soft_limit, hard_limit = raise_fd_limit()
    # Some descriptors stay in use for the interpreter, the loop and the HTTP client.
    usable = soft_limit - 64

    # A few sockets first, so that the baseline includes code paths loaded on first use.
    warm, _ = await open_sockets(target, 10, None, connect_concurrency)
    await close_sockets(warm, connect_concurrency)
    base_kib = await read_settled_rss(target.server_pid, settle_seconds)

    listeners, points = [], []
    for count in sorted(counts):
        if count > usable:
            points.append({"sockets": count, "skipped": f"client RLIMIT_NOFILE is {soft_limit}"})
            continue
        window = Window(target.server_pids)
        opened, failures = await open_sockets(target, count - len(listeners), None, connect_concurrency,
                                              first_index=len(listeners))
        usage = window.stop()
        listeners += opened
        rss_kib = await read_settled_rss(target.server_pid, settle_seconds)
        point = {
            "sockets": count,
            "open_sockets": len(listeners),
            "open_failures": failures,
            "base_rss_kib": base_kib,
            "rss_kib": rss_kib,
            "per_socket_kib": None,
            "open_per_second": round(len(opened) / usage["seconds"], 1),
            **usage,
        }
        if rss_kib is not None and base_kib is not None and listeners:
            point["per_socket_kib"] = round((rss_kib - base_kib) / len(listeners), 2)
        points.append(point)
    await close_sockets(listeners, connect_concurrency)
    return {"fd_limit": [soft_limit, hard_limit], "points": points}


# -- command line -------------------------------------------------------------


def parse_counts(text):
    return [int(part) for part in text.split(",") if part]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", help="base URL of the HTTP API (default: --url's host and port)")
    parser.add_argument("--url", required=True,
                        help="WebSocket URL of the /taxi/ endpoint, e.g. ws://127.0.0.1:8000/taxi/; "
                             "comma-separated for several server processes, which share the sockets round-robin")
    parser.add_argument("--server-pid", type=parse_counts, required=True,
                        help="server process id, for its RSS and CPU time; comma-separated for several "
                             "(CPU is summed, RSS is read from the first)")
    parser.add_argument("--secret", required=True, help="HMAC key the server checks HS256 tokens with")
    parser.add_argument("--api-key", default="", help="key for POST /api/groups/<group>/send/")
    users = parser.add_mutually_exclusive_group(required=True)
    users.add_argument("--users", type=int, help="use the ids common.generate_user_ids(N)")
    users.add_argument("--user-ids-file", help="file with one active user id per line")
    parser.add_argument("--phases", default="handshake,echo,group,memory",
                        help="comma-separated subset of handshake,echo,group,memory")
    parser.add_argument("--handshake-seconds", type=float, default=5.0, help="seconds per handshake measurement")
    parser.add_argument("--handshake-concurrency", type=parse_counts, default=[1, 50],
                        help="comma-separated concurrency levels for authenticated handshakes (default 1,50)")
    parser.add_argument("--rejected-concurrency", type=int, default=50, help="concurrency for rejected handshakes")
    parser.add_argument("--handshake-max-count", type=int, default=500_000, help="cap on handshakes per measurement")
    parser.add_argument("--echo-sockets", type=int, default=100)
    parser.add_argument("--echo-seconds", type=float, default=10.0, help="measured seconds, after 1 s of warm-up")
    parser.add_argument("--group-sockets", type=int, default=1000)
    parser.add_argument("--group-sends", type=int, default=50, help="measured sends, after 2 warm-up sends")
    parser.add_argument("--group-timeout", type=float, default=10.0, help="seconds to wait for one send to arrive everywhere")
    parser.add_argument("--memory-sockets", type=parse_counts, default=[2000, 10000],
                        help="comma-separated idle socket counts (default 2000,10000)")
    parser.add_argument("--memory-settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    parser.add_argument("--connect-concurrency", type=int, default=100, help="sockets opened at once when opening many")
    parser.add_argument("--taxi-root", help="mint tokens with taxi.tokens.mint from this checkout instead of common.py")
    parser.add_argument("--json-out", help="write the results to this file as well as to standard output")
    return parser.parse_args(argv)


def read_user_ids(args):
    if args.users is not None:
        return generate_user_ids(args.users)
    with open(args.user_ids_file) as source:
        user_ids = [line.strip() for line in source if line.strip()]
    if not user_ids:
        raise SystemExit(f"no user ids in {args.user_ids_file}: expected one 24-hex id per line")
    return user_ids


async def run(args):
    target = Target(args, read_user_ids(args))
    phases = set(args.phases.split(","))
    results = {"url": args.url, "load_average_start": load_average()}

    if "handshake" in phases:
        runs = []
        for concurrency in args.handshake_concurrency:
            runs.append(await measure_handshakes(target, concurrency, "accepted", args.handshake_seconds,
                                                 args.handshake_max_count))
        for mode in ("no_token", "bad_signature"):
            runs.append(await measure_handshakes(target, args.rejected_concurrency, mode, args.handshake_seconds,
                                                 args.handshake_max_count))
        results["handshake"] = runs
    if "echo" in phases:
        results["echo"] = await measure_echo(target, args.echo_sockets, args.echo_seconds, args.connect_concurrency)
    if "group" in phases:
        results["group"] = await measure_group_send(target, args.group_sockets, args.group_sends,
                                                    args.group_timeout, args.connect_concurrency)
    if "memory" in phases:
        results["memory"] = await measure_idle_memory(target, args.memory_sockets, args.memory_settle,
                                                      args.connect_concurrency)

    results["load_average_end"] = load_average()
    return results


def main():
    args = parse_args()
    results = uvloop.run(run(args))
    text = json.dumps(results, indent=2)
    if args.json_out:
        with open(args.json_out, "w") as output:
            output.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
