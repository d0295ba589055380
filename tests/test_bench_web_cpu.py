"""bench.web_cpu: CPU time of process trees from /proc stat lines (pure logic, fed made-up tables)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.web_cpu import CpuMeter, ProcStat, descendants, parse_stat, read_stats, tree_ticks


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    """A /proc/<pid>/stat line in the kernel's layout (52 fields), the others zero."""
    after = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime), str(cutime), str(cstime)] + ["0"] * 35
    return f"{pid} ({comm}) " + " ".join(after) + "\n"


def table(*stats: ProcStat) -> dict[int, ProcStat]:
    return {s.pid: s for s in stats}


class TestParseStat:
    def test_fields(self) -> None:
        stat = parse_stat(stat_line(42, "gunicorn", 7, utime=100, stime=20, cutime=3, cstime=4))
        assert stat == ProcStat(pid=42, ppid=7, own_ticks=120, reaped_ticks=7)

    @pytest.mark.parametrize("comm", ["a b", "x) (y", "))", "(", "ZMQbg/IO/0"])
    def test_command_names_with_spaces_and_parentheses(self, comm: str) -> None:
        stat = parse_stat(stat_line(9, comm, 1, utime=5, stime=6, cutime=1, cstime=1))
        assert (stat.pid, stat.ppid, stat.own_ticks, stat.reaped_ticks) == (9, 1, 11, 2)

    @pytest.mark.parametrize("text", ["", "garbage", "12 (short) S 1 2 3"])
    def test_refuses_what_is_not_a_stat_line(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_stat(text)

    def test_reads_this_process_from_proc(self) -> None:
        if not Path("/proc/self/stat").exists():
            pytest.skip("no /proc on this system")
        stats = read_stats()
        me = stats[os.getpid()]
        assert me.ppid == os.getppid()
        assert me.own_ticks >= 0


class TestTree:
    # 1 (init) -> 10 (master) -> 11, 12 (workers), 13 (sidecar) -> 14; 20 is someone else's.
    STATS = table(
        ProcStat(1, 0, 1000, 0),
        ProcStat(10, 1, 5, 2),
        ProcStat(11, 10, 30, 0),
        ProcStat(12, 10, 40, 0),
        ProcStat(13, 10, 7, 1),
        ProcStat(14, 13, 3, 0),
        ProcStat(20, 1, 500, 0),
    )

    def test_descendants(self) -> None:
        assert descendants([10], self.STATS) == {10, 11, 12, 13, 14}
        assert descendants([13], self.STATS) == {13, 14}
        assert descendants([10, 20], self.STATS) == {10, 11, 12, 13, 14, 20}

    def test_dead_roots_count_nothing(self) -> None:
        assert descendants([99], self.STATS) == set()
        assert tree_ticks([99], self.STATS) == 0

    def test_ticks_are_own_and_reaped_time_of_the_tree(self) -> None:
        assert tree_ticks([10], self.STATS) == (5 + 2) + 30 + 40 + (7 + 1) + 3
        assert tree_ticks([20], self.STATS) == 500

    def test_a_parent_loop_does_not_hang(self) -> None:
        looped = table(ProcStat(5, 6, 1, 0), ProcStat(6, 5, 2, 0))
        assert tree_ticks([5], looped) == 3


class TestCpuMeter:
    def meter(self, samples: list[dict[int, ProcStat]], roots: list[int]) -> CpuMeter:
        feed = iter(samples)
        return CpuMeter(roots, read=lambda: next(feed), ticks_per_second=100)

    def test_difference_of_two_samples_per_request(self) -> None:
        before = table(ProcStat(10, 1, 100, 0), ProcStat(11, 10, 200, 0))
        after = table(ProcStat(10, 1, 110, 0), ProcStat(11, 10, 290, 0))
        meter = self.meter([before, after], [10])
        a, b = meter.sample(), meter.sample()
        assert meter.seconds(a, b) == pytest.approx(1.0)  # 100 ticks
        assert meter.us_per(a, b, 1000) == pytest.approx(1000.0)

    def test_a_child_that_exited_and_was_reaped_still_counts(self) -> None:
        # Worker 11 ran 50 more ticks, exited; the master reaped it (its total, 250, moves to cutime).
        before = table(ProcStat(10, 1, 100, 0), ProcStat(11, 10, 200, 0))
        after = table(ProcStat(10, 1, 100, 250))
        meter = self.meter([before, after], [10])
        a, b = meter.sample(), meter.sample()
        assert b - a == 50

    def test_a_child_born_between_samples_counts_whole(self) -> None:
        before = table(ProcStat(10, 1, 100, 0))
        after = table(ProcStat(10, 1, 100, 0), ProcStat(15, 10, 8, 0))
        meter = self.meter([before, after], [10])
        a, b = meter.sample(), meter.sample()
        assert b - a == 8

    def test_other_processes_never_count(self) -> None:
        before = table(ProcStat(10, 1, 100, 0), ProcStat(30, 1, 0, 0))
        after = table(ProcStat(10, 1, 100, 0), ProcStat(30, 1, 9999, 0))
        meter = self.meter([before, after], [10])
        assert meter.sample() == meter.sample()

    def test_no_requests_is_nan_not_a_division_error(self) -> None:
        meter = self.meter([], [10])
        assert meter.us_per(0, 10, 0) != meter.us_per(0, 10, 0)  # NaN

    def test_needs_a_root(self) -> None:
        with pytest.raises(ValueError):
            CpuMeter([])
