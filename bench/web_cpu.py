"""CPU time spent by the processes that serve a benchmark run, read from ``/proc``, by role.

A web variant's cost to the machine is not only its req/s: a sidecar or a
redis-server works for every request too, and on a shared machine the CPU a
request took is steadier than the rate it was served at. ``CpuMeter`` adds up
``utime + stime`` of every process in the trees under its roots (a gunicorn
master: its workers and the sidecar it spawned; a redis-server), plus
``cutime + cstime``: the time of children that exited and were waited for, so
a process that ends between two samples is still counted. wrk is never among
the roots.

The sum is split by role, to show where a request's CPU goes: a worker's
request thread (its main thread: a sync worker serves requests there) and its
other threads (a bus's sender and receiver, ZeroMQ's I/O thread), each read
from ``task/<tid>/stat`` (the kernel keeps each thread's time monotonic, not
the difference of a process's and a thread's), the master, a sidecar,
anything else it spawned, and children reaped meanwhile. A worker thread that
ends between two samples drops out of the sum (those measured live as long as
their worker).
Workers are the processes forked from the master (the same command line);
anything it started with another command line is named by that.

A process counts while its parent chain reaches a root; one that its parent
left to init (not waited for) drops out of the sum, which then undercounts.
The servers measured here reap their children.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROLES", "CpuMeter", "MachineSample", "ProcStat", "Snapshot", "descendants", "machine_sample",
    "outside_share", "parse_proc_stat", "parse_stat", "read_snapshot", "read_stats", "roles", "tree_ticks",
]

PROC = Path("/proc")

REQUEST_THREADS = "request threads"
OTHER_THREADS = "other worker threads"
MASTER = "master"
SIDECAR = "sidecar"
REDIS = "redis-server"
OTHER_PROCESSES = "other processes"
REAPED = "exited children"
#: Every role, in the order tables show them.
ROLES = (REQUEST_THREADS, OTHER_THREADS, MASTER, SIDECAR, REDIS, OTHER_PROCESSES, REAPED)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` a CPU sum needs, in clock ticks."""

    pid: int
    ppid: int
    #: utime + stime: CPU time of the process itself (all its threads, ended ones included).
    own_ticks: int
    #: cutime + cstime: CPU time of its children that exited and were waited for.
    reaped_ticks: int


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` (or ``task/<tid>/stat``) line, see proc(5); ``ValueError`` if not one."""
    # Field 2, the command name in parentheses, may itself hold spaces and ")":
    # the fixed-position fields start after the last ")".
    head, close, tail = text.rpartition(")")
    if not close or "(" not in head:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # tail[0] is field 3 (state); ppid is field 4, utime..cstime are fields 14..17.
    if len(fields) < 15:
        raise ValueError(f"/proc stat line of pid {pid} is too short")
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ProcStat(pid=pid, ppid=int(fields[1]), own_ticks=utime + stime, reaped_ticks=cutime + cstime)


def read_stats(proc: Path = PROC) -> dict[int, ProcStat]:
    """Every process's stat now; processes that exit while being read are left out."""
    stats: dict[int, ProcStat] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between listing and reading
        stat = parse_stat(text)
        stats[stat.pid] = stat
    return stats


def descendants(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> set[int]:
    """The pids of ``roots`` (those alive) and of every process below them."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_ticks(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> int:
    """Clock ticks of the trees under ``roots``: own time of each process plus its reaped children's."""
    return sum(stats[pid].own_ticks + stats[pid].reaped_ticks for pid in descendants(roots, stats))


@dataclass(frozen=True)
class Snapshot:
    """The processes of the measured trees at one moment."""

    stats: Mapping[int, ProcStat]
    #: Ticks of each live thread of each process (``task/<tid>/stat``), by thread id.
    thread_ticks: Mapping[int, Mapping[int, int]]
    #: Each process's command line, arguments joined by spaces.
    cmdlines: Mapping[int, str]


def read_snapshot(roots: Sequence[int], proc: Path = PROC) -> Snapshot:
    """The trees under ``roots`` now, with each process's threads and command line."""
    tree = descendants(roots, read_stats(proc))
    stats: dict[int, ProcStat] = {}
    threads: dict[int, dict[int, int]] = {}
    cmdlines: dict[int, str] = {}
    for pid in tree:
        base = Path(proc, str(pid))
        try:
            stat = parse_stat(Path(base, "stat").read_text())
            cmdline = Path(base, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            tasks = [entry.name for entry in os.scandir(Path(base, "task"))]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited since it was listed: its time reaches its parent's reaped ticks
        ticks: dict[int, int] = {}
        for tid in tasks:
            try:
                ticks[int(tid)] = parse_stat(Path(base, "task", tid, "stat").read_text()).own_ticks
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
        stats[pid], threads[pid], cmdlines[pid] = stat, ticks, cmdline
    return Snapshot(stats, threads, cmdlines)


def roles(snapshot: Snapshot, server_root: int, redis_root: int | None = None) -> Counter[str]:
    """Ticks so far of each role (``ROLES``) in the trees of ``server_root`` and ``redis_root``."""
    ticks: Counter[str] = Counter()
    stats = snapshot.stats
    server_cmdline = snapshot.cmdlines.get(server_root)
    redis_tree = descendants([redis_root], stats) if redis_root is not None else set()
    for pid in descendants([server_root], stats) | redis_tree:
        stat = stats[pid]
        ticks[REAPED] += stat.reaped_ticks
        if pid in redis_tree:
            ticks[REDIS] += stat.own_ticks
        elif pid == server_root:
            ticks[MASTER] += stat.own_ticks
        elif snapshot.cmdlines.get(pid) == server_cmdline:  # forked from the master: a worker
            for tid, thread in snapshot.thread_ticks.get(pid, {}).items():
                ticks[REQUEST_THREADS if tid == pid else OTHER_THREADS] += thread
        elif "sidecar" in snapshot.cmdlines.get(pid, ""):
            ticks[SIDECAR] += stat.own_ticks
        else:
            ticks[OTHER_PROCESSES] += stat.own_ticks
    return ticks


class CpuMeter:
    """CPU time by role that a server's process tree (and a redis-server's) uses between two samples.

    ``read`` and ``ticks_per_second`` are injectable, so the arithmetic runs
    in tests without the processes.
    """

    def __init__(
        self,
        server_root: int,
        redis_root: int | None = None,
        *,
        read: Callable[[Sequence[int]], Snapshot] = read_snapshot,
        ticks_per_second: int | None = None,
    ) -> None:
        self.server_root = server_root
        self.redis_root = redis_root
        self._read = read
        self.ticks_per_second = ticks_per_second or os.sysconf("SC_CLK_TCK")

    def sample(self) -> Counter[str]:
        """Each role's clock ticks so far (only differences of two samples mean anything)."""
        roots = [self.server_root] if self.redis_root is None else [self.server_root, self.redis_root]
        return roles(self._read(roots), self.server_root, self.redis_root)

    def us_per(self, before: Counter[str], after: Counter[str], count: int) -> dict[str, float]:
        """Microseconds of CPU per item (request) of each role between two samples, and ``"total"``.

        NaN everywhere for no items.
        """
        scale = 1e6 / self.ticks_per_second / count if count > 0 else float("nan")
        per = {role: (after[role] - before[role]) * scale for role in ROLES}
        per["total"] = sum(per.values())
        return per


@dataclass(frozen=True, slots=True)
class MachineSample:
    """All CPUs' clock ticks so far, and this process's own with its reaped children's (wrk)."""

    busy: int
    total: int
    mine: int


def parse_proc_stat(text: str) -> tuple[int, int]:
    """``(busy, total)`` ticks of all CPUs from /proc/stat's first line (user nice system idle iowait irq ...)."""
    fields = text.split("\n", 1)[0].split()
    if len(fields) < 8 or fields[0] != "cpu":
        raise ValueError(f"not the cpu line of /proc/stat: {text[:80]!r}")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    busy = user + nice + system + irq + softirq + steal  # guest time is already inside user
    return busy, busy + idle + iowait


def machine_sample(proc: Path = PROC, ticks_per_second: int | None = None) -> MachineSample:
    busy, total = parse_proc_stat(Path(proc, "stat").read_text())
    times = os.times()
    mine = times.user + times.system + times.children_user + times.children_system
    return MachineSample(busy, total, round(mine * (ticks_per_second or os.sysconf("SC_CLK_TCK"))))


def outside_share(before: MachineSample, after: MachineSample, measured_ticks: int) -> float:
    """The share of the machine's CPU that other work used between two samples.

    Everything busy minus ``measured_ticks`` (the server trees measured
    meanwhile) and minus this process with its reaped children (wrk, once
    waited for). NaN if no time passed.
    """
    total = after.total - before.total
    if total <= 0:
        return float("nan")
    others = (after.busy - before.busy) - measured_ticks - (after.mine - before.mine)
    return max(0.0, others / total)
