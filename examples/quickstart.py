"""A single-process tour of SessionCache: sessions, idle vs absolute expiry, destroy.

Run: python examples/quickstart.py   (or ./scripts/demo)
Time is simulated with FakeClock, so the tour takes no time.
"""

from __future__ import annotations

from memsession import SessionCache, SessionDestroyed, new_id
from memsession.testing import FakeClock


def main() -> None:
    clock = FakeClock()
    cache = SessionCache(clock=clock, idle_timeout=30 * 60, max_age=8 * 3600, maxsize=1000)

    sid = new_id()
    cache.set(sid, {"user_id": 42, "cart": ["book"]})
    print(f"new session {sid[:8]}...: {cache.get(sid)}")

    clock.advance(25 * 60)
    print(f"after 25 idle minutes it is still there: {cache.get(sid) is not None} (reading it slid the idle timer)")
    clock.advance(25 * 60)
    print(f"25 minutes later, again: {cache.get(sid) is not None}")
    clock.advance(31 * 60)
    print(f"31 idle minutes later it has expired: {cache.get(sid)}")

    busy = new_id()
    cache.set(busy, {"user_id": 7})
    for _ in range(8 * 6):  # active every 10 minutes for 8 hours
        clock.advance(10 * 60)
        cache.touch(busy)
    print(f"an always-active session ends at max_age all the same: {cache.get(busy)}")

    gone = new_id()
    cache.set(gone, {"user_id": 9})
    cache.destroy(gone)
    try:
        cache.set(gone, {"user_id": 9, "late": "write from a slow request"})
    except SessionDestroyed:
        print("a late write to a destroyed session is refused: it stays logged out")

    print(f"stats: {cache.stats()}")
    cache.close()


if __name__ == "__main__":
    main()
