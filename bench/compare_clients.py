"""Compare WebSocket client libraries on the echo closed loop (measurement B).

The driver starts a server on core 0 and runs one worker process per library and
repeat on core 1, so that each worker's CPU time is its own. A worker opens
`--sockets` sockets, and each socket sends `echo.message` and waits for the reply
before it sends again.

Two servers are used. Against floor_tornado.py the server's core is the limit, so
the figures show how each library loads a realistic server. The picows echo server
costs far less per message, so against it the client's own cost shows in round
trips/s and client CPU per round trip. That second table picks the library for
client.py. Server CPU is printed beside each row to show which side was the limit.

    bench/.venv-dev/bin/python bench/compare_clients.py [--seconds 10] [--repeats 3]
"""

import argparse
import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import time

import uvloop

from common import generate_user_ids, mint_access_token
from measure import Window, median, percentile

HERE = os.path.dirname(os.path.abspath(__file__))
# "picows-uvloop" is picows with its optional aiofastnet transport turned off.
LIBRARIES = ("picows", "picows-uvloop", "aiohttp", "websockets")
WARMUP_SECONDS = 1.0


class EchoTally:
    """Latencies of round trips that complete inside the measured window."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.warmup_end = self.end = float("inf")
        self.started = asyncio.Event()
        self.latencies = []
        self.errors = 0

    def begin(self):
        """Start the warm-up; a runner calls this once all its sockets are open."""
        self.warmup_end = time.perf_counter() + WARMUP_SECONDS
        self.end = self.warmup_end + self.seconds
        self.started.set()

    def record(self, sent_at, received_at, reply, expected_seq):
        if received_at < self.warmup_end or received_at > self.end:
            return
        message = json.loads(reply)
        if message.get("type") != "echo.message" or message["data"]["n"] != expected_seq:
            self.errors += 1
        self.latencies.append(received_at - sent_at)


def echo_text(socket_index, seq):
    return json.dumps({"type": "echo.message", "data": {"i": socket_index, "n": seq}})


async def run_websockets(urls, tally):
    from websockets.asyncio.client import connect

    connections = [await connect(url, compression=None, ping_interval=None) for url in urls]
    tally.begin()

    async def loop_one(index, connection):
        seq = 0
        while time.perf_counter() < tally.end:
            seq += 1
            sent_at = time.perf_counter()
            await connection.send(echo_text(index, seq))
            reply = await connection.recv()
            tally.record(sent_at, time.perf_counter(), reply, seq)

    await asyncio.gather(*(loop_one(i, c) for i, c in enumerate(connections)))
    await asyncio.gather(*(c.close() for c in connections))


async def run_aiohttp(urls, tally):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        connections = [await session.ws_connect(url, autoping=False, compress=0) for url in urls]
        tally.begin()

        async def loop_one(index, connection):
            seq = 0
            while time.perf_counter() < tally.end:
                seq += 1
                sent_at = time.perf_counter()
                await connection.send_str(echo_text(index, seq))
                reply = await connection.receive_str()
                tally.record(sent_at, time.perf_counter(), reply, seq)

        await asyncio.gather(*(loop_one(i, c) for i, c in enumerate(connections)))
        await asyncio.gather(*(c.close() for c in connections))


async def run_picows(urls, tally, use_aiofastnet=None):
    from picows import WSListener, WSMsgType, ws_connect

    class EchoListener(WSListener):
        def __init__(self, index):
            self.index = index
            self.seq = 0
            self.sent_at = 0.0
            self.done = asyncio.get_running_loop().create_future()

        def send_next(self, transport):
            self.seq += 1
            self.sent_at = time.perf_counter()
            transport.send(WSMsgType.TEXT, echo_text(self.index, self.seq).encode())

        def on_ws_frame(self, transport, frame):
            if frame.msg_type != WSMsgType.TEXT:
                return
            now = time.perf_counter()
            tally.record(self.sent_at, now, frame.get_payload_as_utf8_text(), self.seq)
            if now < tally.end:
                self.send_next(transport)
            elif not self.done.done():
                self.done.set_result(None)

    pairs = []
    for index, url in enumerate(urls):
        pairs.append(await ws_connect(lambda index=index: EchoListener(index), url, use_aiofastnet=use_aiofastnet))
    tally.begin()
    for transport, listener in pairs:
        listener.send_next(transport)
    await asyncio.gather(*(listener.done for _, listener in pairs))
    for transport, _ in pairs:
        transport.send_close()
        transport.disconnect()


async def run_worker(args):
    user_ids = generate_user_ids(args.users)
    urls = [
        f"{args.url}?token={mint_access_token(args.secret, user_ids[i % len(user_ids)])}"
        for i in range(args.sockets)
    ]
    runner = {
        "websockets": run_websockets,
        "aiohttp": run_aiohttp,
        "picows": run_picows,
        "picows-uvloop": functools.partial(run_picows, use_aiofastnet=False),
    }[args.worker]
    tally = EchoTally(args.seconds)
    run = asyncio.ensure_future(runner(urls, tally))
    # CPU is counted from the end of the warm-up, so opening the sockets is not measured.
    await tally.started.wait()
    await asyncio.sleep(max(0.0, tally.warmup_end - time.perf_counter()))
    window = Window(args.server_pid)
    await run
    usage = window.stop()

    seconds = args.seconds
    count = len(tally.latencies)
    result = {
        "library": args.worker,
        "round_trips_per_second": round(count / seconds, 1),
        "p50_ms": round(1000 * percentile(tally.latencies, 0.50), 3),
        "p99_ms": round(1000 * percentile(tally.latencies, 0.99), 3),
        "errors": tally.errors,
        "client_cpu_percent": round(100 * usage["client_cpu_seconds"] / usage["seconds"], 1),
        "client_cpu_us_per_round_trip": round(1e6 * usage["client_cpu_seconds"] / max(count, 1), 1),
        "server_cpu_percent": usage.get("server_cpu_percent"),
        "other_cpu_percent": usage.get("other_cpu_percent"),
    }
    print(json.dumps(result))


async def serve_picows_echo(port):
    """Echo every text frame back and accept any handshake, at far less cost per message than Tornado."""
    from picows import WSListener, WSMsgType, ws_create_server

    class EchoBack(WSListener):
        def on_ws_frame(self, transport, frame):
            if frame.msg_type == WSMsgType.TEXT:
                transport.send(WSMsgType.TEXT, frame.get_payload_as_bytes())
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    server = await ws_create_server(lambda request: EchoBack(), "127.0.0.1", port)
    await server.serve_forever()


def start_server(kind, port, secret, users):
    if kind == "floor":
        arguments = [os.path.join(HERE, "floor_tornado.py"), "--port", str(port), "--secret", secret,
                     "--users", str(users)]
    else:
        arguments = [os.path.abspath(__file__), "--serve-picows-echo", str(port)]
    process = subprocess.Popen(["taskset", "-c", "0", sys.executable, *arguments],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} server did not listen on port {port} within 10 s")


def run_library(library, port, secret, server_pid, args):
    command = ["taskset", "-c", "1", sys.executable, os.path.abspath(__file__), "--worker", library,
               "--url", f"ws://127.0.0.1:{port}/taxi/", "--secret", secret,
               "--users", str(args.users), "--sockets", str(args.sockets), "--seconds", str(args.seconds),
               "--server-pid", str(server_pid)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 120)
    if output.returncode != 0:
        print(f"{library} worker failed (exit {output.returncode}):\n{output.stderr}", file=sys.stderr)
        return None
    return json.loads(output.stdout.strip().splitlines()[-1])


def print_summary(server_kind, summary, args):
    print(f"\n{SERVER_DESCRIPTIONS[server_kind]} on core 0; medians of {args.repeats} repeats, "
          f"{args.sockets} sockets, {args.seconds:g} s:")
    print(f"{'library':<15}{'rt/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'client CPU %':>14}{'CPU us/rt':>11}"
          f"{'server CPU %':>14}{'other CPU %':>13}")
    for library, row in sorted(summary.items(), key=lambda item: -(item[1]["round_trips_per_second"] or 0)):
        if row["round_trips_per_second"] is None:
            print(f"{library:<15} failed")
            continue
        print(f"{library:<15}{row['round_trips_per_second']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['client_cpu_percent']:>14.1f}{row['client_cpu_us_per_round_trip']:>11.1f}"
              f"{row['server_cpu_percent']:>14.1f}{row['other_cpu_percent']:>13.1f}")


def run_driver(args):
    secret = os.urandom(32).hex()
    fields = ("round_trips_per_second", "p50_ms", "p99_ms", "client_cpu_percent",
              "client_cpu_us_per_round_trip", "server_cpu_percent",
              "other_cpu_percent", "errors")
    report = {"sockets": args.sockets, "seconds": args.seconds, "servers": {}}
    for server_kind in args.servers:
        server = start_server(server_kind, args.port, secret, args.users)
        runs = {library: [] for library in args.libraries}
        try:
            # Libraries alternate inside each repeat, so a burst of load from other work
            # on the machine hits all of them alike.
            for repeat in range(args.repeats):
                for library in args.libraries:
                    result = run_library(library, args.port, secret, server.pid, args)
                    if result is not None:
                        runs[library].append(result)
                        print(f"{server_kind} repeat {repeat + 1} {library}: {result}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=15)
        summary = {
            library: {name: median([run[name] for run in results]) for name in fields} | {"repeats": len(results)}
            for library, results in runs.items()
        }
        print_summary(server_kind, summary, args)
        report["servers"][server_kind] = {"summary": summary, "runs": runs}

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "client_libraries.json"), "w") as output:
        json.dump(report, output, indent=2)


SERVER_DESCRIPTIONS = {
    "floor": "floor_tornado.py",
    "picows-echo": "picows echo server (no token check)",
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=LIBRARIES, help="run one library's echo loop (used by the driver)")
    parser.add_argument("--serve-picows-echo", type=int, metavar="PORT", help="run the picows echo server (used by the driver)")
    parser.add_argument("--url", help="WebSocket URL of /taxi/ (worker mode)")
    parser.add_argument("--secret", help="HMAC key for tokens (worker mode)")
    parser.add_argument("--server-pid", type=int, help="server process id, for its CPU time (worker mode)")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--servers", nargs="+", choices=list(SERVER_DESCRIPTIONS), default=list(SERVER_DESCRIPTIONS),
                        help="servers to measure against (default both)")
    parser.add_argument("--port", type=int, default=18300, help="server port (default 18300)")
    parser.add_argument("--users", type=int, default=100, help="users known to the server (default 100)")
    parser.add_argument("--sockets", type=int, default=100, help="sockets in the closed loop (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds after 1 s of warm-up (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per library (default 3)")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.worker:
        uvloop.run(run_worker(args))
    elif args.serve_picows_echo:
        uvloop.run(serve_picows_echo(args.serve_picows_echo))
    else:
        run_driver(args)


if __name__ == "__main__":
    main()
