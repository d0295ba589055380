"""CPU time spent by the processes that serve a benchmark run, read from ``/proc``.

A web variant's cost to the machine is not only its req/s: a sidecar or a
redis-server works for every request too, and on a shared machine the CPU a
request took is steadier than the rate it was served at. ``CpuMeter`` adds up
``utime + stime`` of every process in the trees under its roots (a gunicorn
master: its workers and the sidecar it spawned; a redis-server), plus
``cutime + cstime``: the time of children that exited and were waited for, so
a process that ends between two samples is still counted. wrk is never among
the roots.

A process counts while its parent chain reaches a root; one that its parent
left to init (not waited for) drops out of the sum, which then undercounts.
The servers measured here reap their children.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "ProcStat", "descendants", "parse_stat", "read_stats", "tree_ticks"]

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` a CPU sum needs, in clock ticks."""

    pid: int
    ppid: int
    #: utime + stime: CPU time of the process itself (all its threads).
    own_ticks: int
    #: cutime + cstime: CPU time of its children that exited and were waited for.
    reaped_ticks: int


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line (see proc(5)); ``ValueError`` if it is not one."""
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


class CpuMeter:
    """CPU seconds that the process trees under ``roots`` use between two ``sample()`` calls.

    ``read`` and ``ticks_per_second`` are injectable, so the arithmetic runs
    in tests without the processes.
    """

    def __init__(
        self,
        roots: Sequence[int],
        *,
        read: Callable[[], Mapping[int, ProcStat]] = read_stats,
        ticks_per_second: int | None = None,
    ) -> None:
        if not roots:
            raise ValueError("CpuMeter needs at least one root pid")
        self.roots = tuple(roots)
        self._read = read
        self.ticks_per_second = ticks_per_second or os.sysconf("SC_CLK_TCK")

    def sample(self) -> int:
        """The trees' clock ticks so far (only differences of two samples mean anything)."""
        return tree_ticks(self.roots, self._read())

    def seconds(self, before: int, after: int) -> float:
        """CPU seconds between two samples."""
        return (after - before) / self.ticks_per_second

    def us_per(self, before: int, after: int, count: int) -> float:
        """Microseconds of CPU per item (request) between two samples; NaN for no items."""
        if count <= 0:
            return float("nan")
        return self.seconds(before, after) * 1e6 / count
