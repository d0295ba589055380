"""What the soak benchmark prints: one column per mode, then per mode the kinds of errors and replacements seen."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.soak_clients import Ledger
from bench.soak_procs import Kill, RssSampler, RssSeries, slope_per_minute
from bench.table import render

__all__ = ["ModeResult", "Verdict", "render_results"]

NOTES = """\
notes:
  failed requests: non-2xx answers and connection errors (timeouts included), /write and /read alike.
  replaced session: a 2xx /write whose cookie names another session id, or whose counter is not above the
    user's last acknowledged one; the old session's acknowledged writes are gone for that user. A read
    answering less than the last acknowledged write is counted on its own line.
  lost acknowledged writes: after the load stops and the sidecar has drained, each user's last acknowledged
    counter (of its current session) against its PostgreSQL row and against a read through the app.
  RSS slopes are least-squares fits of VmRSS samples (/proc/PID/status), in KiB per minute. The sidecar is
    killed on purpose, so its figure is per lifetime (median over lifetimes with >= 3 samples; a lifetime
    begins with loading the store, so expect it positive), next to the trend of each lifetime's last sample
    across the run (does every new sidecar end up bigger?). Workers recycle every ~200 requests, faster than
    a few samples: their figure is the sum over the live workers at each sample where all 4 were alive
    (stationary unless memory grows), next to the trend of each worker lifetime's last sample."""


@dataclass
class Verdict:
    """One user at the end: its last acknowledged counter, what PostgreSQL holds, what the app answers."""

    acked: int
    stored: int | str
    answered: int | str

    @staticmethod
    def lost(acked: int, seen: int | str) -> int:
        """How many acknowledged writes ``seen`` misses (all of them when there is no value)."""
        if not isinstance(seen, int):
            return acked  # no row, a tombstone, or no answer from the app
        return max(0, acked - seen)


@dataclass
class ModeResult:
    mode: str
    seconds: float
    users: int
    kill_interval: float
    ledgers: list[Ledger]
    kills: list[Kill]
    sampler: RssSampler
    verdicts: list[Verdict]
    settled: bool
    log_errors: list[str]


def _slope(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+,.0f}"


def _median_lifetime_slope(series: RssSeries) -> str:
    slopes = series.lifetime_slopes()
    return f"{statistics.median(slopes):+,.0f} (n={len(slopes)})" if slopes else "n/a (no lifetime >= 3 samples)"


def _lost(verdicts: Sequence[Verdict], which: str) -> str:
    counts = [Verdict.lost(v.acked, getattr(v, which)) for v in verdicts]
    return f"{sum(1 for c in counts if c)} / {sum(counts)}"


def _column(r: ModeResult) -> list[str]:
    requests = sum(ledger.requests for ledger in r.ledgers)
    failures: Counter[str] = Counter()
    for ledger in r.ledgers:
        failures.update(ledger.failures)
    replacements = [rep for ledger in r.ledgers for rep in ledger.replacements]
    new_id = sum(1 for rep in replacements if rep.new_sid != rep.old_sid)
    back = [k.back_after for k in r.kills if k.back_after is not None]
    never_back = len(r.kills) - len(back)
    workers = r.sampler.workers
    return [
        f"{r.seconds:.0f}",
        f"{requests:,}",
        f"{requests / r.seconds:,.0f}" if r.seconds else "n/a",
        f"{sum(failures.values()):,}",
        ", ".join(f"{kind}: {n}" for kind, n in failures.most_common()) or "-",
        f"{len(r.kills)}" + (f" ({never_back} never back)" if never_back else ""),
        f"{statistics.median(back):.2f} / {max(back):.2f}" if back else "n/a",
        f"{len(replacements)} ({new_id} / {len(replacements) - new_id})",
        f"{sum(1 for ledger in r.ledgers if ledger.replacements)}",
        f"{sum(rep.acked_before for rep in replacements):,}",
        f"{sum(ledger.stale_reads for ledger in r.ledgers):,}",
        "yes" if r.settled else "NO (compared anyway)",
        _lost(r.verdicts, "stored"),
        _lost(r.verdicts, "answered"),
        _median_lifetime_slope(r.sampler.sidecar),
        _slope(slope_per_minute(r.sampler.sidecar.last_of_each_lifetime())),
        _slope(slope_per_minute(r.sampler.master.total)),
        _slope(slope_per_minute(workers.total)) + f" (n={len(workers.total)})",
        _slope(slope_per_minute(workers.last_of_each_lifetime())),
        f"{len(workers.lifetimes)}",
        f"{len(r.log_errors):,}",
    ]


MEASURES = [
    "load, s",
    "requests",
    "requests/s",
    "failed requests (non-2xx or connection error)",
    "  by kind",
    "sidecar SIGKILLs",
    "  new sidecar answering after, median / max s",
    "replaced sessions (new id / same id, counter back)",
    "  users affected",
    "  acknowledged writes gone with them",
    "reads below the user's last acknowledged write",
    "sidecar back and drained before the check",
    "lost acknowledged writes, PostgreSQL row (users / writes)",
    "lost acknowledged writes, read through the app (users / writes)",
    "RSS sidecar KiB/min, median per lifetime",
    "RSS sidecar KiB/min, trend of each lifetime's last sample",
    "RSS gunicorn master KiB/min",
    "RSS workers KiB/min, sum over all 4 live workers",
    "RSS workers KiB/min, trend of each lifetime's last sample",
    "  worker lifetimes seen",
    "server log ERROR lines and tracebacks",
]


def _normalized(line: str) -> str:
    """An error line without its timestamp, pids and other numbers, so alike lines count together."""
    line = re.sub(r"^\[[^]]*\] (\[\d+\] \[[A-Z]+\] )?", "", line)
    line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line)
    return re.sub(r"\d+", "N", line)[:160]


def _details(r: ModeResult) -> list[str]:
    out = [f"[{r.mode}]"]
    kills = [k.at for k in r.kills]
    for rep in [rep for ledger in r.ledgers for rep in ledger.replacements][:5]:
        since = [rep.at - at for at in kills if at <= rep.at]
        after = f"{min(since):.1f} s after a kill" if since else "before any kill"
        out.append(f"  replaced at {rep.at:.1f} s ({after}): acknowledged {rep.acked_before}, then a write answered "
                   f"{rep.answered}" + (" under a new id" if rep.new_sid != rep.old_sid else " under the same id"))
    for line, n in Counter(_normalized(line) for line in r.log_errors).most_common(6):
        out.append(f"  log x{n}: {line}")
    return out if len(out) > 1 else out + ["  no replacements, no ERROR lines"]


def render_results(results: Sequence[ModeResult]) -> str:
    first = results[0]
    title = (f"soak: {first.users} users, gunicorn 4 sync workers (max_requests 200 + jitter 50), "
             f"sidecar SIGKILLed every {first.kill_interval:.0f} s, PostgreSQL store")
    columns = [_column(r) for r in results]
    rows = [[measure, *(column[i] for column in columns)] for i, measure in enumerate(MEASURES)]
    table = render(title, ["measure", *(r.mode for r in results)], rows)
    details = [line for r in results for line in _details(r)]
    return "\n".join([table, "", *details, "", NOTES])
