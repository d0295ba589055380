"""Hybrid logical clock versions."""

from __future__ import annotations

import threading

from memsession.clock import COUNTER_BITS, SYSTEM_CLOCK, HybridClock, version_wall_ms
from memsession.testing import FakeClock


def test_versions_follow_wall_time():
    clock = FakeClock(wall=1_700_000_000.0)
    hlc = HybridClock(clock)
    v = hlc.now()
    assert version_wall_ms(v) == 1_700_000_000_000
    clock.advance(1)
    assert version_wall_ms(hlc.now()) == 1_700_000_001_000


def test_versions_strictly_increase_even_when_wall_clock_steps_back():
    clock = FakeClock()
    hlc = HybridClock(clock)
    seen = [hlc.now()]
    clock.step_wall(-3600)
    for _ in range(100):
        seen.append(hlc.now())
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_after_observing_a_remote_version_local_ones_are_later():
    mine, theirs = FakeClock(wall=1000.0), FakeClock(wall=1030.0)  # 30 s ahead: within the skew observe takes
    a, b = HybridClock(mine), HybridClock(theirs)
    remote = b.now()
    a.observe(remote)
    assert a.now() > remote


def test_many_versions_in_one_millisecond_stay_unique():
    hlc = HybridClock(FakeClock())
    versions = [hlc.now() for _ in range(1 << (COUNTER_BITS + 1))]
    assert len(set(versions)) == len(versions)


def test_threads_never_get_the_same_version():
    hlc = HybridClock(SYSTEM_CLOCK)
    out: list[int] = []
    lock = threading.Lock()

    def work():
        local = [hlc.now() for _ in range(2000)]
        with lock:
            out.extend(local)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 16000


def test_versions_fit_a_signed_64_bit_column():
    hlc = HybridClock(FakeClock(wall=4_102_444_800.0))  # year 2100
    assert hlc.now() < 2**63
