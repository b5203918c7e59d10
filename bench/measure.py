"""Percentiles, CPU accounting and RSS readings used by the load client and run.py."""

import os
import resource
import statistics
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values, fraction):
    """Return the `fraction` quantile (0..1) with linear interpolation, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def median(values):
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def client_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid):
    """Return user plus system CPU seconds of `pid` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name in field 2 may contain spaces, so fields are counted after its ")".
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_cpu_seconds():
    """Return CPU seconds that all cores together spent busy since boot (idle and iowait excluded)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    # Fields 9 and 10 (guest time) are already counted in user and nice.
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def process_rss_kib(pid):
    """Return VmRSS of `pid` in KiB from /proc/<pid>/status, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def processes_cpu_seconds(pids):
    """Return the summed CPU seconds of `pids`, or None if any of them is gone."""
    readings = [process_cpu_seconds(pid) for pid in pids]
    return None if None in readings else sum(readings)


class Window:
    """Wall time and CPU time of this process and of the server over one measurement.

    `server_pid` is one process id or a list of them; the server's CPU is their sum.
    """

    def __init__(self, server_pid=None):
        if server_pid is None:
            self.server_pids = []
        elif isinstance(server_pid, int):
            self.server_pids = [server_pid]
        else:
            self.server_pids = list(server_pid)
        self.start()

    def start(self):
        self.wall_start = time.perf_counter()
        self.cpu_start = client_cpu_seconds()
        self.server_cpu_start = processes_cpu_seconds(self.server_pids) if self.server_pids else None
        self.machine_cpu_start = machine_busy_cpu_seconds()

    def stop(self):
        """Return the window's wall seconds and the CPU use of the client, the server and the rest.

        `other_cpu_percent` is busy CPU time charged to neither the client nor the server:
        other processes on a shared machine and, depending on kernel accounting, interrupts.
        """
        wall = time.perf_counter() - self.wall_start
        client_cpu = client_cpu_seconds() - self.cpu_start
        machine_cpu = machine_busy_cpu_seconds() - self.machine_cpu_start
        server_cpu = 0.0
        result = {
            "seconds": round(wall, 3),
            "client_cpu_seconds": round(client_cpu, 3),
            "client_cpu_percent": round(100 * client_cpu / wall, 1) if wall > 0 else None,
        }
        if self.server_pids:
            server_cpu = processes_cpu_seconds(self.server_pids)
            if server_cpu is not None and self.server_cpu_start is not None:
                # /proc counts in clock ticks (10 ms at CLK_TCK=100), so short windows are coarse.
                server_cpu -= self.server_cpu_start
                result["server_cpu_percent"] = round(100 * server_cpu / wall, 1)
            else:
                server_cpu = 0.0
        if wall > 0:
            result["other_cpu_percent"] = round(100 * max(0.0, machine_cpu - client_cpu - server_cpu) / wall, 1)
        return result
