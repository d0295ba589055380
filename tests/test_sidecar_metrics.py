"""The sidecar's ``/metrics`` against Prometheus' conventions, on a real sidecar process.

``promtool check metrics`` (Prometheus' own linter) must pass on the first
scrape and after session traffic; every family must be there, with HELP and
TYPE, from the first scrape on; counters end in ``_total``, times are
seconds, "never" is no ``-1``, and the epoch is a label of the info gauge.
The alerting rules shipped in ``examples/monitoring`` must pass ``promtool
check rules`` and their own ``promtool test rules`` cases, and name only
metrics a real sidecar serves. Without promtool these tests skip (fail in CI).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from memsession import SessionCache, ZmqBus
from memsession.session import new_id
from tests.servers import free_port
from tests.sidecars import SidecarProcess, wait_until

pytestmark = [pytest.mark.zmq, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "examples" / "monitoring"
RULES = MONITORING / "memsession-alerts.yml"
SESSIONS = 30


@dataclass
class Scrape:
    text: str
    health: dict[str, Any]
    wall: float  # this process's wall time when it was taken


@dataclass
class Scrapes:
    first: Scrape  # the first /metrics that answered 200, before any session traffic
    later: Scrape  # after sessions were written, one destroyed, and the store wrote them
    started: float  # wall time just before the sidecar was started


def scrape(http: httpx.Client) -> Scrape:
    """/metrics and /health from one publish of the stats (the hub thread publishes them every second)."""
    for _ in range(50):
        before = http.get("/health").json()
        text = http.get("/metrics").text
        after = http.get("/health").json()
        if before.get("uptime") == after.get("uptime"):  # no publish in between: both show the same one
            return Scrape(text, after, time.time())
    raise AssertionError("the stats were published again during every one of 50 scrapes")


@pytest.fixture(scope="module")
def scrapes() -> Iterator[Scrapes]:
    with tempfile.TemporaryDirectory(prefix="ms-metrics-store-") as store_dir:
        port = free_port()
        started = time.time()
        sidecar = SidecarProcess(f"file://{store_dir}/sessions.json", "--heartbeat", "0.2",
                                 "--http", f"127.0.0.1:{port}")
        with sidecar, httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
            # /metrics answers 503 until the hub thread first publishes its stats (within a second).
            wait_until(lambda: http.get("/metrics").status_code == 200, 10, "/metrics to answer 200")
            first = scrape(http)
            with SessionCache(bus=ZmqBus(runtime_dir=sidecar.runtime_dir, heartbeat=0.2, silence=0.7,
                                         request_timeout=3.0), touch_interval=3600) as cache:
                sids = [new_id() for _ in range(SESSIONS)]
                for i, sid in enumerate(sids):
                    cache.set(sid, {"n": i})
                cache.destroy(sids[0])
                # /metrics serves what the hub thread last published: wait for the written sessions there.
                later = wait_until(
                    lambda: (s := scrape(http)).health["sessions"] == SESSIONS - 1
                    and s.health["persist"]["saved"] >= SESSIONS and s.health["streams"] >= 1 and s,
                    20, "the sidecar to hold and store the sessions")
            yield Scrapes(first, later, started)


# -- reading the exposition format -----------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def types(text: str) -> dict[str, str]:
    """Family name -> type, from the ``# TYPE`` lines."""
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}


def helps(text: str) -> dict[str, str]:
    return {line.split(" ", 3)[2]: line.split(" ", 3)[3] if line.count(" ") >= 3 else ""
            for line in text.splitlines() if line.startswith("# HELP ")}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        out.append((match[1], dict(LABEL.findall(match[2] or "")), float(match[3])))
    return out


def family_of(name: str, families: dict[str, str]) -> str | None:
    if name in families:
        return name
    for suffix in ("_sum", "_count", "_bucket"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in ("summary", "histogram"):
            return base
    return None


def sample_value(text: str, name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples(text) if n == name and all(ls.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def check_metrics(promtool: str, text: str) -> str:
    """promtool's complaints about ``text`` ("" when it passes)."""
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60, check=False)
    problems = (run.stdout + run.stderr).strip()
    return problems if run.returncode or problems else ""


# -- the tests --------------------------------------------------------------------------------


def test_promtool_passes_the_first_scrape(promtool: str, scrapes: Scrapes) -> None:
    assert check_metrics(promtool, scrapes.first.text) == ""


def test_promtool_passes_after_session_traffic(promtool: str, scrapes: Scrapes) -> None:
    assert check_metrics(promtool, scrapes.later.text) == ""


def test_every_family_is_there_with_help_and_type_from_the_first_scrape(scrapes: Scrapes) -> None:
    first, later = types(scrapes.first.text), types(scrapes.later.text)
    assert len(first) > 40
    assert first == later  # nothing appears only once it has a value
    assert set(helps(scrapes.first.text)) == set(first)
    assert all(helps(scrapes.first.text).values()), "a family with an empty HELP"
    for scraped in (scrapes.first, scrapes.later):
        unknown = {n for n, _, _ in samples(scraped.text) if family_of(n, first) is None}
        assert not unknown, f"samples without a family announced in the first scrape: {sorted(unknown)}"


def test_counters_end_in_total_and_nothing_else_does(scrapes: Scrapes) -> None:
    kinds = types(scrapes.later.text)
    assert "counter" in kinds.values() and "gauge" in kinds.values()
    for name, kind in kinds.items():
        assert name.startswith("memsession_")
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"


def test_counters_start_at_zero_and_count_the_traffic(scrapes: Scrapes) -> None:
    first, later = scrapes.first.text, scrapes.later.text
    # The status server's own count of what it served: the scrapes themselves are its traffic.
    counters = [n for n, kind in types(first).items() if kind == "counter" and n != "memsession_http_served_total"]
    for name in counters:
        for _, labels, value in (s for s in samples(first) if s[0] == name):
            assert value == 0, f"{name}{labels} = {value} before any traffic"
    assert sample_value(later, "memsession_received_total") >= SESSIONS
    assert sample_value(later, "memsession_persist_saved_total") >= SESSIONS
    assert sample_value(later, "memsession_sessions") == SESSIONS - 1
    assert sample_value(later, "memsession_tombstones") == 1


def test_names_use_base_units_and_values_no_negative_sentinels(scrapes: Scrapes) -> None:
    for scraped in (scrapes.first, scrapes.later):
        for name in types(scraped.text):
            words = name.split("_")
            assert not {"ms", "s", "us", "age", "p50", "p99"} & set(words), name
        negative = [(n, ls, v) for n, ls, v in samples(scraped.text) if v < 0]
        assert not negative, negative


def test_the_epoch_is_a_label_of_the_info_gauge(scrapes: Scrapes) -> None:
    for scraped in (scrapes.first, scrapes.later):
        epoch = str(scraped.health["epoch"])
        assert sample_value(scraped.text, "memsession_info", epoch=epoch, role="sidecar", store="jsonfile") == 1
        assert types(scraped.text)["memsession_info"] == "gauge"
        assert not any("epoch" in name for name in types(scraped.text) if name != "memsession_info")


def test_times_are_unix_timestamps_and_never_is_zero(scrapes: Scrapes) -> None:
    first, later = scrapes.first.text, scrapes.later.text
    start = sample_value(first, "memsession_start_time_seconds")
    assert scrapes.started - 1 <= start <= scrapes.first.wall
    assert sample_value(later, "memsession_start_time_seconds") == start
    assert sample_value(first, "memsession_persist_last_flush_timestamp_seconds") == 0  # never flushed
    flushed = sample_value(later, "memsession_persist_last_flush_timestamp_seconds")
    assert scrapes.first.wall - 1 <= flushed <= scrapes.later.wall
    # Nothing waits for the store in either scrape: no oldest unwritten change.
    assert sample_value(first, "memsession_persist_oldest_unwritten_timestamp_seconds") == 0
    assert sample_value(later, "memsession_persist_depth") == 0
    assert sample_value(later, "memsession_persist_oldest_unwritten_timestamp_seconds") == 0


def test_the_replication_lag_is_a_summary_in_seconds(scrapes: Scrapes) -> None:
    first, later = scrapes.first.text, scrapes.later.text
    assert types(first)["memsession_replication_lag_seconds"] == "summary"
    # No change received yet: no quantiles, a zero count.
    assert not [s for s in samples(first) if s[0] == "memsession_replication_lag_seconds"]
    assert sample_value(first, "memsession_replication_lag_seconds_count") == 0
    assert sample_value(later, "memsession_replication_lag_seconds_count") >= SESSIONS
    p99 = sample_value(later, "memsession_replication_lag_seconds", quantile="0.99")
    p50 = sample_value(later, "memsession_replication_lag_seconds", quantile="0.5")
    assert 0 <= p50 <= p99 < 60  # seconds, not milliseconds: a local bus is far under a minute
    assert sample_value(later, "memsession_replication_lag_seconds_sum") >= 0


def test_dropped_frames_start_at_zero_for_every_known_reason(scrapes: Scrapes) -> None:
    reasons = {ls["reason"] for n, ls, _ in samples(scrapes.first.text) if n == "memsession_dropped_total"}
    assert {"malformed", "other version", "malformed request", "not a request", "seq jump", "error"} <= reasons


def test_every_numeric_stat_of_health_is_exported_or_said_why_not(scrapes: Scrapes) -> None:
    from memsession.service.metrics import FAMILIES, FEDERATED, NOT_EXPORTED

    exported = {source for family in FAMILIES for source in family.sources}
    leaves = {"dropped"}  # a map of counts by reason
    for key, value in scrapes.later.health.items():
        if isinstance(value, dict):
            # None: a time not set yet ("never" / "nothing waits")
            leaves |= {f"{key}.{sub}" for sub, v in value.items() if v is None or isinstance(v, (int, float))}
        elif (value is None or isinstance(value, (int, float))) and key != "ok":
            leaves.add(key)
    missing = leaves - exported - set(NOT_EXPORTED) - {f"dropped.{r}" for r in scrapes.later.health["dropped"]}
    assert not missing, f"stats /metrics leaves out without a reason: {sorted(missing)}"
    # This sidecar joins no other hosts: it has no federation stats (the federated tests read them).
    stale = {s for s in (exported | set(NOT_EXPORTED)) - leaves if not s.startswith(FEDERATED)}
    assert not stale, f"exported stats a sidecar no longer has: {sorted(stale)}"


# -- the alerting rules in examples/monitoring --------------------------------------------------


def test_the_alerting_rules_pass_promtool(promtool: str) -> None:
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_alerting_rules_fire_on_the_series_their_unit_tests_give(promtool: str) -> None:
    run = subprocess.run([promtool, "test", "rules", str(MONITORING / "memsession-alerts.test.yml")],
                         capture_output=True, text=True, timeout=60, check=False, cwd=MONITORING)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_alerting_rules_use_only_metrics_the_sidecar_serves(scrapes: Scrapes) -> None:
    families = types(scrapes.first.text)
    used = set(re.findall(r"\bmemsession_[a-z0-9_]+\b", RULES.read_text()))
    assert used, "the rules name no memsession metric"
    unknown = {name for name in used if family_of(name, families) is None}
    assert not unknown, f"the rules use metrics /metrics does not serve: {sorted(unknown)}"
