"""bench.web's pure parts: reading wrk's report and the table of ratios against the issue's targets."""

from __future__ import annotations

import pytest

from bench.web import CHECKS, VARIANTS, Result, busy_note, parse_wrk, report, round_ratios
from bench.web_cpu import REQUEST_THREADS, ROLES

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:39891/write
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.56ms  835.80us  13.91ms   89.29%
    Req/Sec     1.22k   348.70     1.66k    85.71%
  Latency Distribution
     50%  850.00us
     75%    1.79ms
     90%    2.23ms
     99%    1.20s
  2553 requests in 1.10s, 0.93MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2320.34
Transfer/sec:    865.75KB
"""


def test_parse_wrk() -> None:
    run = parse_wrk(WRK_OUTPUT)
    assert run.requests == 2553
    assert run.rps == pytest.approx(2320.34)
    assert run.p50_ms == pytest.approx(0.85)
    assert run.p99_ms == pytest.approx(1200.0)
    assert run.errors == 4 + 3


def cpu(total: float) -> dict[str, float]:
    """A CPU split that puts it all in the request threads."""
    return {role: 0.0 for role in ROLES} | {REQUEST_THREADS: total, "total": total}


def results(rps: dict[tuple[str, str], float], total: float = 100.0, round_: int = 1) -> list[Result]:
    return [Result(label, route, rate, 1.0, 2.0, 0, cpu(total), round_) for (label, route), rate in rps.items()]


def ratio_row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name))


def test_targets_are_the_issues() -> None:
    targets = {name: target for name, *_, target in CHECKS if target is not None}
    assert targets == {
        "read: memsession / no session": 0.95,
        "read: memsession / flask-session redis": 1.7,
        "write: memsession / flask-session redis": 1.3,
        "write: memsession / flask cookie": 0.85,
        "read: django memsession / cached_db": 1.0,
    }
    labels = {label for label, *_ in VARIANTS}
    assert all(a in labels and b in labels for _, a, b, _, _ in CHECKS)


def test_report_states_ratio_verdict_and_cpu_ratio() -> None:
    rates = {(label, route): 1000.0 for label, *_ in VARIANTS for route in ("read", "write")}
    rates[("memsession", "write")] = 800.0  # 0.8 of flask cookie's: below 0.85
    rows = results(rates)
    rows[0] = Result("memsession", "read", 1000.0, 1.0, 2.0, 0, cpu(50.0))
    text = report(rows)
    assert "CPU us/req" in text
    missed = ratio_row(text, "write: memsession / flask cookie")
    assert "0.80" in missed and ">= 0.85" in missed and "MISSED" in missed
    read = ratio_row(text, "read: memsession / no session")
    # median and range of the one round, target, verdict, half the CPU per request
    assert read.split()[-6:] == ["1.00", "1.00-1.00", ">=", "0.95", "ok", "0.50"]
    assert "MISSED" in ratio_row(text, "read: memsession / flask-session redis").split()  # 1.0 < 1.7
    split = text.split("CPU us per request by role")[1]
    assert REQUEST_THREADS in split and "sidecar" not in split  # only roles that some variant used


def test_a_missing_variant_is_nan_not_a_crash() -> None:
    text = report(results({("memsession", "read"): 1000.0}))
    assert "nan" in ratio_row(text, "read: memsession / no session")


def test_ratios_are_medians_of_each_rounds_own_ratio() -> None:
    """A variant's luckiest round is not compared with another's: ratios pair runs of the same round."""
    runs = []
    # memsession 1000, 900, 2000 (a lucky round); no session 1000, 1000, 4000 (luckier still, same round).
    for round_, (mine, base) in enumerate([(1000.0, 1000.0), (900.0, 1000.0), (2000.0, 4000.0)], 1):
        runs += results({("memsession", "read"): mine, ("no session", "read"): base}, round_=round_)
    assert [p[0] for p in round_ratios(runs, "memsession", "no session", "read")] == [1.0, 0.9, 0.5]
    row = ratio_row(report(runs), "read: memsession / no session").split()
    assert row[-6:] == ["0.90", "0.50-1.00", ">=", "0.95", "MISSED", "1.00"]  # median 0.90
    # The best rounds alone (2000 / 4000) would say 0.50; each variant's best is still in the table.
    table = report(runs).split("ratios within")[0]
    assert "2,000" in table and "4,000" in table


def test_rounds_missing_a_variant_or_serving_nothing_are_left_out() -> None:
    runs = results({("memsession", "read"): 1000.0, ("no session", "read"): 800.0}, round_=1)
    runs += results({("memsession", "read"): 5000.0}, round_=2)
    runs += results({("memsession", "read"): 900.0, ("no session", "read"): 0.0}, round_=3)  # a stalled run
    assert round_ratios(runs, "memsession", "no session", "read") == [(1.25, 1.0)]
    stalled = Result("no session", "read", 0.0, 0.0, 0.0, 0, cpu(float("nan")), 3)
    runs = [r if (r.label, r.round) != ("no session", 3) else stalled for r in runs]
    text = report(runs)
    assert "1.25" in ratio_row(text, "read: memsession / no session")
    no_session = next(line for line in text.splitlines() if line.startswith("no session"))
    assert no_session.split()[-2] == "100"  # median CPU of the runs that served, not NaN


def test_a_busy_machine_is_said_so() -> None:
    def run(outside: float) -> Result:
        return Result("memsession", "read", 1000.0, 1.0, 2.0, 0, cpu(100.0), 1, outside)

    assert busy_note([run(0.02), run(0.08)]).startswith("other work on the machine used 5% of its CPU")
    assert "NOTE" not in busy_note([run(0.02), run(0.08)])
    assert "NOTE: the machine was busy" in busy_note([run(0.3), run(0.5), run(float("nan"))])
    assert busy_note([]) == "other work on the machine: not measured"
