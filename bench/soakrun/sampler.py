"""What the soak samples over time: each process's RSS and CPU, the client's loop lag, in-flight.

Read from `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime + stime) every
`interval_s`, in the client's own event loop (a few file reads, microseconds). The client's
loop lag (how late a timer fires) tells whether the client itself was the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from soakrun.cluster import Proc

_CLK_TCK = os.sysconf("SC_CLK_TCK")
LAG_TICK_S = 0.05


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat: how contended it was."""
    with contextlib.suppress(OSError, ValueError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)
    return 0, 0


def cpu_s(pid: int) -> float | None:
    """utime + stime of the process (all its threads), in seconds."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return None


@dataclass(slots=True)
class Point:
    t: float
    """Seconds since the load started."""
    rss_mb: dict[str, float]
    cpu_s: dict[str, float]
    in_flight: int
    done: int
    machine_busy: tuple[int, int] = (0, 0)
    """(busy, total) jiffies of the whole machine (all processes, ours and others')."""


@dataclass(slots=True)
class Sampler:
    processes: Callable[[], list[Proc]]
    """Read at every sample, so a restarted worker's new PID is followed."""
    in_flight: Callable[[], int]
    done: Callable[[], int]
    interval_s: float
    t0: float = field(default_factory=time.monotonic)
    points: list[Point] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    """Seconds each 50 ms timer of the client's loop fired late."""

    def sample(self) -> Point:
        rss: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for p in [*self.processes(), Proc("client", os.getpid())]:
            r, c = rss_mb(p.pid), cpu_s(p.pid)
            if r is not None and c is not None:
                rss[p.name], cpu[p.name] = round(r, 2), round(c, 2)
        t = round(time.monotonic() - self.t0, 2)
        point = Point(t, rss, cpu, self.in_flight(), self.done(), machine_ticks())
        self.points.append(point)
        return point

    async def run(self) -> None:
        """Sample until cancelled; measure the loop's lag in between."""
        next_sample = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_sample:
                await asyncio.to_thread(self.sample)  # /proc reads off the loop
                next_sample = now + self.interval_s
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            self.lags.append(max(time.monotonic() - before - LAG_TICK_S, 0.0))
