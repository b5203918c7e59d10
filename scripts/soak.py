#!/usr/bin/env python3
"""Hold thousands of sockets open on a taxi server for minutes, then check that it lets go.

The script starts its own database and server on loopback (see localserver.py), raises
its open-file limit to the hard limit (the server inherits it), creates users directly
in the database, and in each round:

1. opens `--sockets` sockets, `--sockets-per-user` per user;
2. for `--seconds`, sends an `echo.message` on every socket every `--echo-interval`
   seconds and a group send to `test` (which every socket is in) through the HTTP API
   every `--group-interval` seconds, replying to the server's pings throughout;
3. closes every socket with a closing handshake.

It reports the server's resident memory (RSS, from /proc) before the first round and
after each phase, and the echo and group messages each socket received. At the end it
stops the server and reads the group map size that the server logs at shutdown, which
must be 0 groups and 0 open sockets. Every loop is bounded by counts and deadlines.

Usage:
    .venv/bin/python scripts/soak.py [--sockets 5000] [--seconds 180] [--rounds 2]

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import sys
import time
import urllib.request
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS.parent))
import wsraw  # noqa: E402
from localserver import LocalServer  # noqa: E402

from taxi import database, tokens  # noqa: E402
from taxi.users import UserStore  # noqa: E402

SHUTDOWN_LINE = re.compile(r"Group map at shutdown: (\d+) groups, (\d+) open sockets")
# Seconds allowed for all sockets to finish their closing handshakes, and for the server to settle after.
CLOSE_TIMEOUT = 60.0
SETTLE_SECONDS = 5.0
# Not a real password: the soak users never log in, their tokens are minted here.
UNUSED_PASSWORD_HASH = "not-a-hash"


class Client:
    """One soak socket and what it received."""

    def __init__(self, raw: wsraw.RawSocket):
        self.raw = raw
        self.echo_sent = 0
        self.echo_received = 0
        self.group_numbers: list[int] = []
        self.errors = 0
        self.reader: asyncio.Task | None = None

    async def read(self) -> None:
        while True:
            received = await self.raw.read_message()
            if received is None:
                return
            message = json.loads(received[1])
            if message.get("type") == "echo.message":
                self.echo_received += 1
            elif message.get("type") == "soak.group":
                self.group_numbers.append(message["data"]["n"])
            else:
                self.errors += 1

    async def echo_every(self, interval: float, until: float) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        while time.monotonic() < until:
            self.raw.send_json({"type": "echo.message", "data": {"n": self.echo_sent}})
            self.echo_sent += 1
            await asyncio.sleep(interval)


def raise_open_file_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def create_user_tokens(server: LocalServer, count: int, lifetime: int) -> list[str]:
    client = database.connect(server.mongodb_uri)
    try:
        users = UserStore(client[server.mongodb_uri.rsplit("/", 1)[1]])
        await users.ensure_indexes()
        created = [await users.create(f"soak.{index}", UNUSED_PASSWORD_HASH, "Soak", str(index), "rider")
                   for index in range(count)]
    finally:
        client.close()
    return [tokens.mint(server.secret_key, tokens.ACCESS, user.id, lifetime) for user in created]


def group_send(server: LocalServer, number: int) -> int:
    request = urllib.request.Request(
        f"{server.base_url}/api/groups/test/send/",
        data=json.dumps({"type": "soak.group", "data": {"n": number}}).encode(),
        headers={"Authorization": f"Api-Key {server.api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


async def open_sockets(server: LocalServer, user_tokens: list[str], count: int, per_user: int,
                       concurrency: int) -> list[Client]:
    semaphore = asyncio.Semaphore(concurrency)
    port = int(server.base_url.rsplit(":", 1)[1])

    async def open_one(index: int) -> Client:
        async with semaphore:
            raw = await wsraw.connect("127.0.0.1", port, f"/taxi/?token={user_tokens[index // per_user]}")
        client = Client(raw)
        client.reader = asyncio.ensure_future(client.read())
        return client

    return list(await asyncio.gather(*(open_one(index) for index in range(count))))


async def close_sockets(clients: list[Client]) -> int:
    """Close every socket with a closing handshake; return how many the server did not close in time."""
    for client in clients:
        client.raw.send_frame(wsraw.CLOSE, (1000).to_bytes(2, "big"))
    readers = [client.reader for client in clients]
    done, pending = await asyncio.wait(readers, timeout=CLOSE_TIMEOUT)
    for task in pending:
        task.cancel()
    for client in clients:
        client.raw.close()
    return len(pending)


async def soak_round(server: LocalServer, user_tokens, arguments, round_number, memory) -> dict:
    started = time.monotonic()
    clients = await open_sockets(server, user_tokens, arguments.sockets, arguments.sockets_per_user,
                                 arguments.connect_concurrency)
    connect_seconds = time.monotonic() - started
    memory[f"round {round_number}: {len(clients)} sockets open"] = server.rss_kib()

    until = time.monotonic() + arguments.seconds
    echo_tasks = [asyncio.ensure_future(client.echo_every(arguments.echo_interval, until)) for client in clients]
    group_sends = 0
    while time.monotonic() < until:
        status = await asyncio.to_thread(group_send, server, group_sends)
        if status != 202:
            raise RuntimeError(f"group send returned HTTP {status}, expected 202")
        group_sends += 1
        await asyncio.sleep(arguments.group_interval)
    await asyncio.gather(*echo_tasks)
    # Replies to the last echoes and group sends are still on their way.
    await asyncio.sleep(2.0)
    memory[f"round {round_number}: after {arguments.seconds:g} s of traffic"] = server.rss_kib()

    readers_done_early = sum(client.reader.done() for client in clients)
    not_closed = await close_sockets(clients)
    await asyncio.sleep(SETTLE_SECONDS)
    memory[f"round {round_number}: all sockets closed"] = server.rss_kib()

    group_counts = [len(client.group_numbers) for client in clients]
    return {
        "sockets": len(clients),
        "connect_seconds": round(connect_seconds, 1),
        "group_sends": group_sends,
        "group_received_min": min(group_counts),
        "group_received_max": max(group_counts),
        "group_out_of_order": sum(client.group_numbers != sorted(client.group_numbers) for client in clients),
        "echo_sent": sum(client.echo_sent for client in clients),
        "echo_received": sum(client.echo_received for client in clients),
        "unexpected_messages": sum(client.errors for client in clients),
        "closed_by_server_during_traffic": readers_done_early,
        "not_closed_in_time": not_closed,
    }


async def soak(server: LocalServer, arguments, memory) -> list[dict]:
    users_needed = -(-arguments.sockets // arguments.sockets_per_user)
    lifetime = int(arguments.rounds * (arguments.seconds + 600))
    user_tokens = await create_user_tokens(server, users_needed, lifetime)
    return [await soak_round(server, user_tokens, arguments, number, memory)
            for number in range(1, arguments.rounds + 1)]


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=5000, help="sockets held open in each round")
    parser.add_argument("--sockets-per-user", type=int, default=10, help="also the server's MAX_SOCKETS_PER_USER")
    parser.add_argument("--seconds", type=float, default=180.0, help="seconds of traffic in each round")
    parser.add_argument("--rounds", type=int, default=1, help="connect, traffic, close: how many times")
    parser.add_argument("--echo-interval", type=float, default=10.0, help="seconds between echoes on one socket")
    parser.add_argument("--group-interval", type=float, default=2.0, help="seconds between group sends")
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes in flight at once")
    parser.add_argument("--keep", action="store_true", help="keep the server's log and database folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    soft, hard = raise_open_file_limit()
    print(f"soak: open-file limit {soft} (hard {hard}); {arguments.sockets} sockets need about as many "
          f"in this process and in the server")
    environment = {"MAX_SOCKETS_PER_USER": str(arguments.sockets_per_user), "LOG_LEVEL": "info"}
    memory: dict[str, int] = {}
    with LocalServer(environment, keep_dir=arguments.keep) as server:
        time.sleep(1.0)
        memory["started, no sockets"] = server.rss_kib()
        rounds = asyncio.run(soak(server, arguments, memory))
        server.stop()
        shutdown = SHUTDOWN_LINE.search(server.log_text())
        tracebacks = server.log_text().count("Traceback")
        exit_status = server.exit_status

    print("soak: server RSS")
    for phase, kib in memory.items():
        print(f"  {phase}: {kib / 1024:.1f} MiB")
    checks = {}
    for number, result in enumerate(rounds, start=1):
        print(f"soak: round {number}: " + ", ".join(f"{name} {value}" for name, value in result.items()))
        checks[f"round {number}: every socket got every group send"] = (
            result["group_received_min"] == result["group_received_max"] == result["group_sends"])
        checks[f"round {number}: group sends arrived in order"] = result["group_out_of_order"] == 0
        checks[f"round {number}: every echo came back"] = result["echo_received"] == result["echo_sent"]
        checks[f"round {number}: no socket closed early, none left open"] = (
            result["closed_by_server_during_traffic"] == 0 and result["not_closed_in_time"] == 0)
    # CPython keeps freed memory for reuse rather than returning it to the system, so
    # RSS stays near its high-water mark after a round; a leak shows as growth between rounds.
    closed_rss = [kib for phase, kib in memory.items() if phase.endswith("all sockets closed")]
    if len(closed_rss) > 1:
        checks["RSS after the last round within 10% of after the first"] = closed_rss[-1] <= 1.1 * closed_rss[0]
    if shutdown:
        print(f"soak: at shutdown the server logged {shutdown.group(1)} groups and {shutdown.group(2)} open sockets")
    checks["group map empty at shutdown"] = bool(shutdown) and shutdown.group(1) == "0" and shutdown.group(2) == "0"
    checks["server exited 0 on SIGTERM"] = exit_status == 0
    checks["no Traceback in the server log"] = tracebacks == 0
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
