"""Compare Motor with PyMongo's AsyncMongoClient for the handshake's user lookup.

Runs with the server's virtual environment (.venv), against a database that already
has users, such as one filled by taxi_users.py. Each driver looks users up by id
through taxi's own `UserStore.get`, at concurrency 1 and 50, and prints lookups/s,
p50/p99 latency and this process's CPU time per lookup:

    taskset -c 0 .venv/bin/python bench/compare_drivers.py --mongodb-uri mongodb://127.0.0.1:PORT/taxi_bench
"""

import argparse
import asyncio
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymongo import AsyncMongoClient  # noqa: E402

from taxi import database  # noqa: E402
from taxi.users import UserStore  # noqa: E402

from measure import percentile  # noqa: E402


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_client(driver, uri):
    if driver == "motor":
        return database.connect(uri)
    # The same options as taxi.database.connect gives Motor.
    return AsyncMongoClient(uri, serverSelectionTimeoutMS=database.SERVER_SELECTION_TIMEOUT_MS,
                            connectTimeoutMS=database.CONNECT_TIMEOUT_MS, socketTimeoutMS=database.SOCKET_TIMEOUT_MS,
                            tz_aware=True, appname="taxi")


async def measure(driver, uri, concurrency, seconds):
    client = make_client(driver, uri)
    try:
        users = UserStore(client[uri.rsplit("/", 1)[1]])
        user_ids = [str(document["_id"]) async for document in users.collection.find({}, {"_id": 1})]
        if not user_ids:
            raise SystemExit(f"no users in {uri}: fill it with bench/taxi_users.py first")
        await users.get(user_ids[0])
        latencies = []
        deadline = time.perf_counter() + seconds

        async def look_up(first):
            index = first
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                if await users.get(user_ids[index % len(user_ids)]) is None:
                    raise RuntimeError("a user went missing during the run")
                latencies.append(time.perf_counter() - started)
                index += concurrency

        cpu_start, wall_start = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(look_up(first) for first in range(concurrency)))
        wall, cpu = time.perf_counter() - wall_start, cpu_seconds() - cpu_start
    finally:
        closing = client.close()
        if asyncio.iscoroutine(closing):
            await closing
    print(f"{driver:14} concurrency {concurrency:2}: {len(latencies) / wall:6,.0f} lookups/s, "
          f"p50 {1000 * percentile(latencies, 0.5):5.1f} ms, p99 {1000 * percentile(latencies, 0.99):5.1f} ms, "
          f"CPU {1e6 * cpu / len(latencies):4.0f} µs per lookup", flush=True)


async def main(args):
    for _ in range(args.repeats):
        for driver in ("motor", "async_pymongo"):
            for concurrency in (1, 50):
                await measure(driver, args.mongodb_uri, concurrency, args.seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongodb-uri", required=True, help="database URI, with the database name as its path")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over both drivers (default %(default)s)")
    asyncio.run(main(parser.parse_args()))
