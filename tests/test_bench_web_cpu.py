"""bench.web_cpu: CPU time of process trees from /proc stat lines (pure logic, fed made-up tables)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.web_cpu import (
    MASTER,
    OTHER_PROCESSES,
    OTHER_THREADS,
    REAPED,
    REDIS,
    REQUEST_THREADS,
    ROLES,
    SIDECAR,
    CpuMeter,
    MachineSample,
    ProcStat,
    Snapshot,
    descendants,
    outside_share,
    parse_proc_stat,
    parse_stat,
    read_snapshot,
    read_stats,
    roles,
    tree_ticks,
)


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


def snapshot(*processes: tuple[ProcStat, int, str]) -> Snapshot:
    """A snapshot of ``(stat, main thread ticks, command line)`` per process; its other threads are one more."""
    threads = {p.pid: {p.pid: main, p.pid + 1000: p.own_ticks - main} for p, main, _ in processes}
    return Snapshot({p.pid: p for p, _, _ in processes}, threads, {p.pid: cmd for p, _, cmd in processes})


GUNICORN = "python -m gunicorn --bind 127.0.0.1:1 bench.web_flask:app"
SIDECAR_CMD = "python -m memsession sidecar --parent-pid 10"


class TestRoles:
    def test_workers_sidecar_master_and_redis(self) -> None:
        snap = snapshot(
            (ProcStat(10, 1, 5, 3), 5, GUNICORN),  # master, 3 ticks of reaped children
            (ProcStat(11, 10, 100, 0), 70, GUNICORN),  # worker: 70 in its main thread, 30 in others
            (ProcStat(12, 10, 90, 0), 80, GUNICORN),
            (ProcStat(13, 10, 40, 0), 10, SIDECAR_CMD),
            (ProcStat(14, 10, 2, 0), 2, "/bin/sh -c something"),
            (ProcStat(30, 1, 25, 0), 25, "redis-server 127.0.0.1:6379"),
            (ProcStat(40, 1, 999, 0), 999, "wrk -t2"),  # not in any tree given
        )
        ticks = roles(snap, server_root=10, redis_root=30)
        assert ticks[REQUEST_THREADS] == 150
        assert ticks[OTHER_THREADS] == 40
        assert ticks[MASTER] == 5
        assert ticks[SIDECAR] == 40
        assert ticks[OTHER_PROCESSES] == 2  # wrk is in neither tree
        assert ticks[REDIS] == 25
        assert ticks[REAPED] == 3
        assert set(ticks) <= set(ROLES)

    def test_without_redis(self) -> None:
        snap = snapshot((ProcStat(10, 1, 5, 0), 5, GUNICORN), (ProcStat(11, 10, 8, 0), 8, GUNICORN))
        assert roles(snap, server_root=10)[REDIS] == 0


class TestCpuMeter:
    def meter(self, snapshots: list[Snapshot], redis_root: int | None = None) -> CpuMeter:
        feed = iter(snapshots)
        return CpuMeter(10, redis_root, read=lambda roots: next(feed), ticks_per_second=100)

    def test_difference_of_two_samples_per_request(self) -> None:
        before = snapshot((ProcStat(10, 1, 100, 0), 100, GUNICORN), (ProcStat(11, 10, 200, 0), 150, GUNICORN))
        after = snapshot((ProcStat(10, 1, 110, 0), 110, GUNICORN), (ProcStat(11, 10, 290, 0), 220, GUNICORN))
        meter = self.meter([before, after])
        per = meter.us_per(meter.sample(), meter.sample(), 1000)
        # 100 ticks at 100/s is 1 s over 1000 requests: 1000 us each.
        assert per["total"] == pytest.approx(1000.0)
        assert per[REQUEST_THREADS] == pytest.approx(700.0)
        assert per[OTHER_THREADS] == pytest.approx(200.0)
        assert per[MASTER] == pytest.approx(100.0)

    def test_a_child_that_exited_and_was_reaped_still_counts(self) -> None:
        # Worker 11 ran 50 more ticks and exited; the master reaped it (its 250 move to cutime).
        before = snapshot((ProcStat(10, 1, 100, 0), 100, GUNICORN), (ProcStat(11, 10, 200, 0), 200, GUNICORN))
        after = snapshot((ProcStat(10, 1, 100, 250), 100, GUNICORN))
        meter = self.meter([before, after])
        assert meter.us_per(meter.sample(), meter.sample(), 100)["total"] == pytest.approx(50 * 100.0)

    def test_other_processes_never_count(self, tmp_path: Path) -> None:
        (tmp_path / "40").mkdir()
        (tmp_path / "40" / "stat").write_text(stat_line(40, "wrk", 1, 500, 0))
        assert read_snapshot([10], proc=tmp_path).stats == {}

    def test_no_requests_is_nan_not_a_division_error(self) -> None:
        empty = snapshot()
        meter = self.meter([empty, empty])
        per = meter.us_per(meter.sample(), meter.sample(), 0)
        assert per["total"] != per["total"]  # NaN


def test_read_snapshot_from_a_proc_tree(tmp_path: Path) -> None:
    """read_snapshot reads stat, the main thread's stat and cmdline of the tree's processes only."""

    def process(pid: int, ppid: int, threads: dict[int, int], cmdline: bytes) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, "python", ppid, sum(threads.values()), 0))
        (tmp_path / str(pid) / "cmdline").write_bytes(cmdline)
        for tid, ticks in threads.items():
            (tmp_path / str(pid) / "task" / str(tid)).mkdir(parents=True)
            (tmp_path / str(pid) / "task" / str(tid) / "stat").write_text(stat_line(tid, "python", ppid, ticks, 0))

    process(10, 1, {10: 5}, b"python\0-m\0gunicorn\0")
    process(11, 10, {11: 20, 12: 6, 13: 4}, b"python\0-m\0gunicorn\0")
    process(50, 1, {50: 70}, b"other\0")
    (tmp_path / "self").mkdir()  # not a pid: skipped
    snap = read_snapshot([10], proc=tmp_path)
    assert set(snap.stats) == {10, 11}
    assert snap.thread_ticks == {10: {10: 5}, 11: {11: 20, 12: 6, 13: 4}}
    assert snap.cmdlines[11] == "python -m gunicorn"
    split = roles(snap, server_root=10)
    assert (split[REQUEST_THREADS], split[OTHER_THREADS], split[MASTER]) == (20, 10, 5)


def test_this_process_from_the_real_proc() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    snap = read_snapshot([os.getpid()])
    assert os.getpid() in snap.stats
    assert "pytest" in snap.cmdlines[os.getpid()] or "python" in snap.cmdlines[os.getpid()]


def test_parse_proc_stat() -> None:
    text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n"
    assert parse_proc_stat(text) == (100 + 5 + 50 + 3 + 2 + 1, 100 + 5 + 50 + 3 + 2 + 1 + 1000 + 20)
    with pytest.raises(ValueError):
        parse_proc_stat("intr 1 2 3")


def test_outside_share_is_what_neither_the_servers_nor_this_process_used() -> None:
    before = MachineSample(busy=1000, total=5000, mine=100)
    after = MachineSample(busy=1600, total=6000, mine=250)  # 600 busy of 1000: 300 servers, 150 us and wrk
    assert outside_share(before, after, measured_ticks=300) == pytest.approx(0.15)
    assert outside_share(before, after, measured_ticks=600) == 0.0  # never below zero (rounding of ticks)
    assert outside_share(before, before, measured_ticks=0) != outside_share(before, before, 0)  # NaN
