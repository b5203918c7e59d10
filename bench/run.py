"""Run the taxi benchmark against every server in SERVERS and report the medians.

Each server runs pinned to core 0 and the load client (client.py) to core 1. Every
repeat starts the server twice: once for handshakes, echo and group send, and once
fresh for the idle-memory measurement, so that memory freed by the earlier
measurements does not hide the cost of new sockets.

    bench/.venv-dev/bin/python bench/run.py            # 3 repeats, full sizes
    bench/.venv-dev/bin/python bench/run.py --quick    # one short repeat with fewer sockets

Results go to bench/results/latest.md and bench/results/latest.json.

To add a server, append a ServerEntry to SERVERS: its `start` function receives
(port, secret, api_key, n_users), starts the process under `server_command()`, and
returns StartedServer(process, url, user_ids). `setup`, if given, runs once before
the repeats with the same secret, api_key and n_users, and may return a function
that run.py calls after the last repeat.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, NamedTuple, Optional
from urllib.parse import urlsplit

from common import generate_user_ids
from measure import median

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 15


class StartedServer(NamedTuple):
    process: subprocess.Popen
    # Comma-separated when the server runs as several processes; the client spreads sockets over them.
    url: str
    user_ids: list
    # A server whose HTTP API listens elsewhere than its WebSocket port sets this.
    api_url: Optional[str] = None
    # Further processes of the same server, whose CPU counts as the server's.
    more_processes: tuple = ()

    @property
    def processes(self):
        return (self.process, *self.more_processes)


@dataclass
class ServerEntry:
    name: str
    start: Callable[[int, str, str, int], StartedServer]
    setup: Optional[Callable[[str, str, int], Optional[Callable[[], None]]]] = None
    description: str = ""
    # Phases this server takes part in; None means all.
    phases: Optional[tuple] = None
    # Directory of a taxi checkout whose taxi.tokens.mint the client uses instead of common.py.
    taxi_root: Optional[str] = None


def server_command(arguments):
    """Return `arguments` prefixed so that the process runs on the server core only."""
    return ["taskset", "-c", SERVER_CPU, *arguments]


def start_python_reference(script, port, secret, api_key, n_users, extra_arguments=()):
    command = server_command([sys.executable, os.path.join(HERE, script), "--port", str(port),
                              "--secret", secret, "--api-key", api_key, "--users", str(n_users),
                              *extra_arguments])
    log_path = os.path.join(tempfile.gettempdir(), f"taxi-bench-{os.path.splitext(script)[0]}-{port}.log")
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)


def start_floor_tornado(port, secret, api_key, n_users):
    process = start_python_reference("floor_tornado.py", port, secret, api_key, n_users)
    return StartedServer(process, f"ws://127.0.0.1:{port}/taxi/", generate_user_ids(n_users))


def start_ref_websockets(port, secret, api_key, n_users):
    api_port = port + 1
    process = start_python_reference("ref_websockets.py", port, secret, api_key, n_users,
                                     ("--api-port", str(api_port)))
    return StartedServer(process, f"ws://127.0.0.1:{port}/taxi/", generate_user_ids(n_users),
                         api_url=f"http://127.0.0.1:{api_port}")


# -- taxi ---------------------------------------------------------------------
#
# taxi runs for real: server.py from the repository's .venv, against a FerretDB (or
# mongod) that scripts/devdb.py starts for the run, with users created through
# taxi's own user store (taxi_users.py) and tokens minted by taxi.tokens.mint.

REPO_ROOT = os.path.dirname(HERE)
TAXI_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")
# The database and Redis share the client's core, as they would sit on other
# machines in production; the server core then measures the server alone.
TAXI_BACKEND_CPU = CLIENT_CPU
TAXI_DATABASE = "taxi_bench"
# Closed-loop echo and thousands of idle sockets per user would trip the per-socket
# message rate limit and the per-user socket limit, so the benchmark turns both off.
TAXI_ENVIRONMENT = {"MAX_MESSAGES_PER_SECOND": "0", "MAX_SOCKETS_PER_USER": "0", "LOG_LEVEL": "warning"}
# Extra variables from --taxi-env, applied to every taxi process after TAXI_ENVIRONMENT.
taxi_overrides = {}

sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import devdb  # noqa: E402  (standard library only, so it imports in bench's venv)
import devredis  # noqa: E402


@dataclass
class TaxiBackends:
    """The database (and Redis, when a taxi entry needs it) shared by every taxi repeat."""

    database: Optional[object] = None
    redis: Optional[object] = None
    user_ids: list = field(default_factory=list)
    workdir: Optional[str] = None

    @property
    def mongodb_uri(self):
        return self.database.uri(TAXI_DATABASE)

    def start_database(self, n_users):
        if self.database is not None:
            return
        self.workdir = tempfile.mkdtemp(prefix="taxi-bench-backends-")
        self.database = devdb.DatabaseServer(os.path.join(self.workdir, "db"), devdb.free_port())
        self.database.start()
        pin_all_threads(self.database.pid, TAXI_BACKEND_CPU)
        completed = subprocess.run(
            ["taskset", "-c", TAXI_BACKEND_CPU, TAXI_PYTHON, os.path.join(HERE, "taxi_users.py"),
             "--mongodb-uri", self.mongodb_uri, "--count", str(n_users)],
            capture_output=True, text=True, check=False, timeout=300)
        if completed.returncode != 0:
            raise RuntimeError(f"taxi_users.py exited with status {completed.returncode}:\n{completed.stderr[-3000:]}")
        self.user_ids = completed.stdout.split()

    def start_redis(self):
        if self.redis is not None:
            return
        self.redis = devredis.RedisServer(devdb.free_port(), work_dir=os.path.join(self.workdir, "redis"))
        self.redis.start()
        pin_all_threads(self.redis.pid, TAXI_BACKEND_CPU)

    def stop(self):
        for server in (self.redis, self.database):
            if server is not None:
                server.stop()
        self.redis = self.database = None


taxi_backends = TaxiBackends()


def pin_all_threads(pid, core):
    subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], check=True, stdout=subprocess.DEVNULL)


def setup_taxi(secret, api_key, n_users):
    taxi_backends.start_database(n_users)
    return taxi_backends.stop


def setup_taxi_with_redis(secret, api_key, n_users):
    taxi_backends.start_database(n_users)
    taxi_backends.start_redis()
    return taxi_backends.stop


def start_taxi_process(port, secret, api_key, extra_environment=()):
    environment = dict(os.environ)
    # Only the entries that start Redis pass REDIS_URL, so one from the shell must not leak in.
    environment.pop("REDIS_URL", None)
    environment.update(SECRET_KEY=secret, API_KEY=api_key, MONGODB_URI=taxi_backends.mongodb_uri)
    environment.update(TAXI_ENVIRONMENT)
    environment.update(extra_environment)
    environment.update(taxi_overrides)
    log_path = os.path.join(tempfile.gettempdir(), f"taxi-bench-taxi-{port}.log")
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(server_command([TAXI_PYTHON, "server.py", "--port", str(port)]),
                                cwd=REPO_ROOT, env=environment, stdout=log_file, stderr=subprocess.STDOUT)


def start_taxi(port, secret, api_key, n_users):
    process = start_taxi_process(port, secret, api_key)
    return StartedServer(process, f"ws://127.0.0.1:{port}/taxi/", taxi_backends.user_ids)


def start_taxi_cached(port, secret, api_key, n_users):
    process = start_taxi_process(port, secret, api_key, [("USER_CACHE_SECONDS", "2")])
    return StartedServer(process, f"ws://127.0.0.1:{port}/taxi/", taxi_backends.user_ids)


def start_taxi_two_processes(port, secret, api_key, n_users):
    """Two taxi processes sharing Redis, both on the server core; group sends go through the first."""
    redis = [("REDIS_URL", taxi_backends.redis.url)]
    first = start_taxi_process(port, secret, api_key, redis)
    second = start_taxi_process(port + 1, secret, api_key, redis)
    urls = f"ws://127.0.0.1:{port}/taxi/,ws://127.0.0.1:{port + 1}/taxi/"
    return StartedServer(first, urls, taxi_backends.user_ids, more_processes=(second,))


FLOOR = "floor_tornado"
SERVERS = [
    ServerEntry(FLOOR, start_floor_tornado,
                description="bench/floor_tornado.py: bare Tornado, users in memory"),
    ServerEntry("ref_websockets", start_ref_websockets,
                description="bench/ref_websockets.py: websockets asyncio server, users in memory, "
                            "group send on a second port"),
    ServerEntry("taxi", start_taxi, setup=setup_taxi, taxi_root=REPO_ROOT,
                description="server.py, one process without Redis, FerretDB through scripts/devdb.py"),
    ServerEntry("taxi_cached", start_taxi_cached, setup=setup_taxi, taxi_root=REPO_ROOT,
                description="as taxi, with USER_CACHE_SECONDS=2: a handshake reuses a user lookup up to 2 s old"),
    ServerEntry("taxi_2proc", start_taxi_two_processes, setup=setup_taxi_with_redis, taxi_root=REPO_ROOT,
                phases=("handshake", "echo", "group"),
                description="two server.py processes sharing Redis, both on the server core; sockets "
                            "alternate between them and group sends go through the first"),
]


# -- sizes --------------------------------------------------------------------


@dataclass
class Sizes:
    repeats: int = 3
    n_users: int = 1000
    handshake_seconds: float = 5.0
    echo_sockets: int = 100
    echo_seconds: float = 10.0
    group_sockets: int = 1000
    group_sends: int = 50
    memory_sockets: list = field(default_factory=lambda: [2000, 10000])


QUICK = Sizes(repeats=1, n_users=200, handshake_seconds=1.0, echo_sockets=20, echo_seconds=2.0,
              group_sockets=200, group_sends=10, memory_sockets=[500, 1000])


# -- one run ------------------------------------------------------------------


def wait_listening(processes, url, api_url):
    """Wait until every WebSocket port (`url` may list several) and the API port accept TCP connections."""
    addresses = {(urlsplit(one).hostname, urlsplit(one).port) for one in url.split(",")}
    if api_url:
        addresses.add((urlsplit(api_url).hostname, urlsplit(api_url).port))
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while addresses and time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with status {process.returncode} before listening")
        for address in list(addresses):
            try:
                socket.create_connection(address, timeout=0.5).close()
                addresses.discard(address)
            except OSError:
                pass
        time.sleep(0.1)
    if addresses:
        raise RuntimeError(f"server did not listen on {sorted(addresses)} within {READY_TIMEOUT_SECONDS} s")


def pin_to_server_core(pid):
    """Pin every thread of `pid` to the server core, in case its start function did not."""
    if os.sched_getaffinity(pid) != {int(SERVER_CPU)}:
        print(f"warning: server pid {pid} was not pinned to core {SERVER_CPU}; pinning it now", file=sys.stderr)
        subprocess.run(["taskset", "-a", "-p", "-c", SERVER_CPU, str(pid)], check=True, stdout=subprocess.DEVNULL)


def stop_server(process):
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"warning: server pid {process.pid} ignored SIGTERM for {STOP_TIMEOUT_SECONDS} s; killing it",
              file=sys.stderr)
        process.kill()
        process.wait()


def run_client(entry, started, secret, api_key, phases, sizes, workdir):
    user_ids_path = os.path.join(workdir, "user_ids.txt")
    with open(user_ids_path, "w") as user_ids_file:
        user_ids_file.write("\n".join(started.user_ids) + "\n")
    output_path = os.path.join(workdir, "client.json")
    command = [
        "taskset", "-c", CLIENT_CPU, sys.executable, os.path.join(HERE, "client.py"),
        "--url", started.url, "--server-pid", ",".join(str(process.pid) for process in started.processes),
        "--secret", secret, "--api-key", api_key, "--user-ids-file", user_ids_path,
        "--phases", ",".join(phases),
        "--handshake-seconds", str(sizes.handshake_seconds),
        "--echo-sockets", str(sizes.echo_sockets), "--echo-seconds", str(sizes.echo_seconds),
        "--group-sockets", str(sizes.group_sockets), "--group-sends", str(sizes.group_sends),
        "--memory-sockets", ",".join(str(count) for count in sizes.memory_sockets),
        "--json-out", output_path,
    ]
    if started.api_url:
        command += ["--api-url", started.api_url]
    if entry.taxi_root:
        command += ["--taxi-root", entry.taxi_root]
    # Bounded well above the longest run the sizes allow, so a hung client cannot stall the suite.
    timeout = 120 + 6 * sizes.handshake_seconds + sizes.echo_seconds + sizes.group_sends * 12 + sum(sizes.memory_sockets) / 50
    completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"client.py exited with status {completed.returncode}:\n{completed.stderr[-3000:]}")
    with open(output_path) as output:
        return json.load(output)


def run_server_once(entry, port, secret, api_key, sizes, phases, workdir):
    started = entry.start(port, secret, api_key, sizes.n_users)
    started = StartedServer(*started)
    try:
        wait_listening(started.processes, started.url, started.api_url)
        for process in started.processes:
            pin_to_server_core(process.pid)
        return run_client(entry, started, secret, api_key, phases, sizes, workdir)
    finally:
        for process in started.processes:
            stop_server(process)


def run_repeat(entry, port, secret, api_key, sizes, phases, workdir, repeat):
    """Run one repeat of `phases` on `entry`; a failure is recorded in the result, not raised."""
    result = {}
    if entry.phases is not None:
        phases = [phase for phase in phases if phase in entry.phases]
    load_phases = [phase for phase in phases if phase != "memory"]
    try:
        if load_phases:
            print(f"{entry.name}: repeat {repeat}: {', '.join(load_phases)}", flush=True)
            result.update(run_server_once(entry, port, secret, api_key, sizes, load_phases, workdir))
        if "memory" in phases:
            print(f"{entry.name}: repeat {repeat}: memory", flush=True)
            memory = run_server_once(entry, port, secret, api_key, sizes, ["memory"], workdir)
            result["memory"] = memory["memory"]
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"{entry.name}: repeat {repeat} failed: {exc}", file=sys.stderr, flush=True)
        result["failure"] = str(exc)
    return result


def run_entries(entries, base_port, sizes, phases):
    """Run every entry once per repeat, taking turns, so that a busy spell on the shared
    machine hits all servers of a repeat alike; the ratios to the floor compare within a repeat.

    Returns {entry name: [one result per repeat]}.
    """
    secret = secrets.token_hex(32)
    api_key = secrets.token_hex(16)
    cleanups = []
    all_runs = {entry.name: [] for entry, _ in entries}
    try:
        for entry, _ in entries:
            if entry.setup:
                cleanups.append(entry.setup(secret, api_key, sizes.n_users))
        with tempfile.TemporaryDirectory(prefix="taxi-bench-") as workdir:
            for repeat in range(1, sizes.repeats + 1):
                for entry, port in entries:
                    all_runs[entry.name].append(run_repeat(entry, port, secret, api_key, sizes, phases,
                                                           workdir, repeat))
    finally:
        for cleanup in cleanups:
            if cleanup:
                cleanup()
    return all_runs


# -- summary ------------------------------------------------------------------


def handshake_run(result, mode, concurrency=None):
    for run in result.get("handshake", []):
        if run["mode"] == mode and (concurrency is None or run["concurrency"] == concurrency):
            return run
    return None


def metric_rows(sizes):
    """Return (label, unit, function from one client result to (value, client, server, other CPU %))."""

    def from_dict(pick, key):
        def read(result):
            found = pick(result)
            if not found or found.get(key) is None:
                return None
            return (found[key], found.get("client_cpu_percent"), found.get("server_cpu_percent"),
                    found.get("other_cpu_percent"))
        return read

    def memory_point(count):
        def pick(result):
            for point in result.get("memory", {}).get("points", []):
                if point["sockets"] == count and "skipped" not in point:
                    return point
            return None
        return pick

    rows = [
        ("(A) authenticated handshakes/s, concurrency 1", "/s",
         from_dict(lambda r: handshake_run(r, "accepted", 1), "per_second")),
        ("(A) authenticated handshakes/s, concurrency 50", "/s",
         from_dict(lambda r: handshake_run(r, "accepted", 50), "per_second")),
        ("(A) rejected handshakes/s, no token, concurrency 50", "/s",
         from_dict(lambda r: handshake_run(r, "no_token"), "per_second")),
        ("(A) rejected handshakes/s, wrong signature, concurrency 50", "/s",
         from_dict(lambda r: handshake_run(r, "bad_signature"), "per_second")),
        (f"(B) echo round trips/s, {sizes.echo_sockets} sockets", "/s",
         from_dict(lambda r: r.get("echo"), "round_trips_per_second")),
        ("(B) echo latency p50", "ms", from_dict(lambda r: r.get("echo"), "p50_ms")),
        ("(B) echo latency p99", "ms", from_dict(lambda r: r.get("echo"), "p99_ms")),
        (f"(C) group send to {sizes.group_sockets} sockets, p50", "ms", from_dict(lambda r: r.get("group"), "p50_ms")),
        (f"(C) group send to {sizes.group_sockets} sockets, p99", "ms", from_dict(lambda r: r.get("group"), "p99_ms")),
    ]
    for count in sizes.memory_sockets:
        rows.append((f"(D) server RSS per idle socket, {count} sockets", "KiB",
                     from_dict(memory_point(count), "per_socket_kib")))
    return rows


def summarize(all_runs, sizes):
    """Return {server: {label: {"unit", "value", "*_cpu_percent", "repeats", "ratio"}}}, each value a median.

    "ratio" is the median over repeats of the server's value divided by the floor's value
    from the same repeat (None for the floor itself or when the floor has no value).
    """
    summary = {}
    floor_runs = all_runs.get(FLOOR, [])
    for name, runs in all_runs.items():
        summary[name] = {}
        for label, unit, read in metric_rows(sizes):
            ratios = []
            if name != FLOOR:
                for run, floor_run in zip(runs, floor_runs):
                    value, floor_value = read(run), read(floor_run)
                    if value is not None and floor_value is not None and floor_value[0]:
                        ratios.append(value[0] / floor_value[0])
            readings = [reading for reading in (read(run) for run in runs) if reading is not None]
            summary[name][label] = {
                "ratio": median(ratios),
                "unit": unit,
                "value": median([reading[0] for reading in readings]),
                "client_cpu_percent": median([reading[1] for reading in readings]),
                "server_cpu_percent": median([reading[2] for reading in readings]),
                "other_cpu_percent": median([reading[3] for reading in readings]),
                "repeats": len(readings),
            }
    return summary


def format_cell(cell):
    if cell["value"] is None:
        return "n/a"
    value = cell["value"]
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    shares = [f"{role} {cell[f'{role}_cpu_percent']:.0f}%" for role in ("client", "server", "other")
              if cell[f"{role}_cpu_percent"] is not None]
    if shares:
        text += f" ({', '.join(shares)})"
    return text


def collect_problems(all_runs):
    """Return one line per failed repeat, error count, incomplete send or skipped memory point."""
    problems = []
    for name, runs in all_runs.items():
        for repeat, run in enumerate(runs, start=1):
            prefix = f"{name} repeat {repeat}"
            if "failure" in run:
                problems.append(f"{prefix}: failed: {run['failure'].splitlines()[0]}")
            for handshake in run.get("handshake", []):
                if handshake["errors"]:
                    problems.append(f"{prefix}: handshake {handshake['mode']} c={handshake['concurrency']}: "
                                    f"errors {handshake['errors']}")
            echo = run.get("echo", {})
            if echo.get("errors") or echo.get("open_failures"):
                problems.append(f"{prefix}: echo: {echo.get('errors')} wrong or missing replies, "
                                f"{echo.get('open_failures')} sockets failed to open")
            group = run.get("group", {})
            if group.get("incomplete_sends") or group.get("non_202_responses") or group.get("open_failures"):
                problems.append(f"{prefix}: group: {group.get('incomplete_sends')} incomplete sends, "
                                f"non-202 {group.get('non_202_responses')}, {group.get('open_failures')} sockets failed to open")
            for point in run.get("memory", {}).get("points", []):
                if "skipped" in point:
                    problems.append(f"{prefix}: memory at {point['sockets']} sockets skipped: {point['skipped']}")
                elif point.get("open_failures"):
                    problems.append(f"{prefix}: memory at {point['sockets']}: {point['open_failures']} sockets failed to open")
    return problems


def machine_description():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def package_versions():
    versions = {}
    for name in ("tornado", "websockets", "picows", "uvloop", "PyJWT"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_report(all_runs, summary, sizes, fd_limit, started_at, output_dir):
    names = list(summary)
    lines = [
        "# taxi benchmark: latest run",
        "",
        f"Run {started_at} by `bench/run.py`. Each figure is the median of {sizes.repeats} repeat(s). "
        "The brackets give the CPU use over the same window, as a percentage of one core, "
        "of the client, the server, and everything else on the machine (other).",
        "",
        f"- Machine: {machine_description()}; server on core {SERVER_CPU}, client on core {CLIENT_CPU}.",
        f"- Packages: {', '.join(f'{name} {version}' for name, version in package_versions().items())}.",
        f"- RLIMIT_NOFILE allowed: soft {fd_limit[0]}, hard {fd_limit[1]}.",
        f"- Sizes: {sizes.n_users} users, handshakes {sizes.handshake_seconds:g} s per level, "
        f"echo {sizes.echo_sockets} sockets for {sizes.echo_seconds:g} s, group send {sizes.group_sends} sends "
        f"to {sizes.group_sockets} sockets, idle memory at {', '.join(map(str, sizes.memory_sockets))} sockets.",
        "",
        "| measurement | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for label, unit, _ in metric_rows(sizes):
        lines.append(f"| {label} ({unit}) | " + " | ".join(format_cell(summary[name][label]) for name in names) + " |")
    compared = [name for name in names if name != FLOOR]
    if FLOOR in names and compared:
        lines += ["", f"Ratios to {FLOOR}: the median over repeats of each figure divided by {FLOOR}'s "
                  "figure from the same repeat (for latency and memory, lower is better).", "",
                  "| measurement | " + " | ".join(compared) + " |",
                  "| --- | " + " | ".join("---" for _ in compared) + " |"]
        for label, unit, _ in metric_rows(sizes):
            cells = [summary[name][label]["ratio"] for name in compared]
            lines.append(f"| {label} ({unit}) | " + " | ".join("n/a" if cell is None else f"{cell:.2f}×"
                                                                 for cell in cells) + " |")
    lines += ["", "The CPU figures of the (D) rows cover opening the sockets, not the idle period.",
              "", "Servers:", ""]
    lines += [f"- {entry.name}: {entry.description}" for entry in SERVERS if entry.name in names]
    lines += ["", "Load average (1, 5, 15 min) at the start and end of each client run, "
              "since other work on a shared machine skews the figures:", ""]
    for name, runs in all_runs.items():
        loads = [f"{run.get('load_average_start')} to {run.get('load_average_end')}" for run in runs]
        lines.append(f"- {name}: " + "; ".join(loads))
    problems = collect_problems(all_runs)
    lines += ["", "Problems seen:", ""] + ([f"- {problem}" for problem in problems] or ["- none"])

    os.makedirs(output_dir, exist_ok=True)
    report = "\n".join(lines) + "\n"
    with open(os.path.join(output_dir, "latest.md"), "w") as markdown:
        markdown.write(report)
    with open(os.path.join(output_dir, "latest.json"), "w") as raw:
        json.dump({"started_at": started_at, "machine": machine_description(), "packages": package_versions(),
                   "fd_limit": fd_limit, "sizes": sizes.__dict__, "summary": summary, "runs": all_runs},
                  raw, indent=2)
    return report


# -- command line -------------------------------------------------------------


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; servers and the client inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


def parse_assignment(text):
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_counts(text):
    return [int(part) for part in text.split(",") if part]


def parse_args():
    names = [entry.name for entry in SERVERS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat with fewer sockets, as a smoke test")
    parser.add_argument("--servers", nargs="+", choices=names, default=names, help="servers to measure (default all)")
    parser.add_argument("--phases", type=lambda text: text.split(","), default=["handshake", "echo", "group", "memory"],
                        help="comma-separated subset of handshake,echo,group,memory")
    parser.add_argument("--base-port", type=int, default=18400,
                        help="first server's port; each further server gets 10 more (default 18400)")
    parser.add_argument("--repeats", type=int, help="repeats per server (default 3, or 1 with --quick)")
    parser.add_argument("--users", type=int, help="users per server (default 1000, or 200 with --quick)")
    parser.add_argument("--handshake-seconds", type=float, help="seconds per handshake measurement (default 5)")
    parser.add_argument("--echo-seconds", type=float, help="measured echo seconds (default 10)")
    parser.add_argument("--group-sends", type=int, help="measured group sends (default 50)")
    parser.add_argument("--memory-sockets", type=parse_counts, help="idle socket counts (default 2000,10000)")
    parser.add_argument("--taxi-env", type=parse_assignment, action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for every taxi process, e.g. LOG_LEVEL=info (repeatable)")
    parser.add_argument("--output-dir", default=os.path.join(HERE, "results"), help="where latest.md and latest.json go")
    return parser.parse_args()


def sizes_from_args(args):
    sizes = Sizes(**(QUICK.__dict__ if args.quick else {}))
    overrides = {"repeats": args.repeats, "n_users": args.users, "handshake_seconds": args.handshake_seconds,
                 "echo_seconds": args.echo_seconds, "group_sends": args.group_sends,
                 "memory_sockets": args.memory_sockets}
    for name, value in overrides.items():
        if value is not None:
            setattr(sizes, name, value)
    return sizes


def main():
    args = parse_args()
    sizes = sizes_from_args(args)
    fd_limit = raise_fd_limit()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    taxi_overrides.update(args.taxi_env)
    entries = [(entry, args.base_port + 10 * index) for index, entry in enumerate(SERVERS)
               if entry.name in args.servers]
    all_runs = run_entries(entries, args.base_port, sizes, args.phases)
    summary = summarize(all_runs, sizes)
    print(write_report(all_runs, summary, sizes, fd_limit, started_at, args.output_dir))


if __name__ == "__main__":
    main()
