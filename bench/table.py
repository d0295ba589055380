"""Timing loops and plain-text tables shared by the benchmarks."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence


def ns_per_op(run: Callable[[Sequence[object]], None], keys: Sequence[object], repeat: int = 5) -> float:
    """Best-of-``repeat`` nanoseconds per item for ``run(keys)``, minus the bare loop's cost."""

    def empty(items: Sequence[object]) -> None:
        for _ in items:
            pass

    def best(fn: Callable[[Sequence[object]], None]) -> float:
        times = []
        for _ in range(repeat):
            gc.disable()
            start = time.perf_counter_ns()
            fn(keys)
            times.append(time.perf_counter_ns() - start)
            gc.enable()
        return min(times) / len(keys)

    return max(best(run) - best(empty), 0.0)


def render(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A fixed-width table; floats get a sensible number of digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"
        return str(value)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"
