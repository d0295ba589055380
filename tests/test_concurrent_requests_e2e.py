"""Requests of one user that run at the same moment on different workers lose nothing (issue #15).

Real gunicorn, four sync workers, the embedded sidecar, once over a JSON
file and once over PostgreSQL. Each round makes a fresh session, then sends
two or three requests of that user at the same moment on fresh connections,
each changing a different key. The app holds every changing request a moment
after its session is loaded (``tests.e2e_apps.flask_concurrent``), so the
requests run on different workers, each from the copy it loaded; the pid
each ran on is recorded and most rounds must have spanned two workers, or
the test would not be checking what it claims.

Afterwards the session is read on every worker, with the cookie a browser
would send next (that of the response that came back last), and from the
store: every change of every round must be everywhere. A worker or the
store that has not caught up yet is read again until it has, within
``SETTLE`` seconds of the last round; what is still wrong then is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from memsession.session import Record, session_key
from persist.jsonfile import read_snapshot
from tests.sidecars import POLL, Readers, client
from tests.webservers import WebServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.zmq, pytest.mark.timeout(240)]

APP = "tests.e2e_apps.flask_concurrent:app"
CONFIG = "tests/e2e_apps/gunicorn_embedded.conf.py"
COOKIE = "session"
WORKERS = 4
#: Seconds after the last round for every worker and the store to show every round's changes.
SETTLE = 15.0
#: Seconds for the requests of one read to have reached every worker.
EVERY_WORKER = 10.0

Data = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One request of a round: set ``key`` to a value, or delete it (``value`` None)."""

    key: str
    #: What the key is set to, with the round's number appended; None: the key is deleted.
    value: str | None = None

    def value_in(self, n: int) -> str:
        return f"{self.value}{n}"

    def request(self, n: int) -> tuple[str, dict[str, str]]:
        if self.value is None:
            return "/delete", {"key": self.key}
        return "/set", {"key": self.key, "value": self.value_in(n)}


@dataclass(frozen=True)
class Scenario:
    """``rounds`` fresh sessions holding ``initial``, each changed by all of ``changes`` at once."""

    rounds: int
    initial: tuple[str, ...]
    changes: tuple[Change, ...]

    def start(self, n: int) -> dict[str, str]:
        return {key: f"{key}{n}" for key in self.initial}

    def expected(self, n: int) -> Data:
        data: Data = dict(self.start(n))
        for change in self.changes:
            if change.value is None:
                data.pop(change.key)
            else:
                data[change.key] = change.value_in(n)
        return data


SCENARIOS = {
    "two-keys": Scenario(200, ("user",), (Change("a", "A"), Change("b", "B"))),
    "three-keys": Scenario(100, ("user",), (Change("a", "A"), Change("b", "B"), Change("c", "C"))),
    "set-and-delete-another": Scenario(100, ("x", "y"), (Change("a", "A"), Change("x"))),
}


@dataclass
class Round:
    """One fresh session, what its concurrent requests ran on, and what each worker served after."""

    expected: Data
    #: The worker pid each concurrent request ran on.
    pids: list[int]
    #: The cookie of the response that came back last: what the browser sends next.
    cookie: str
    sid: str | None = None
    #: Worker pid -> the session data it served with ``cookie``, last read.
    views: dict[int, Data] = field(default_factory=dict)
    #: What the store held, last read (None: no record).
    stored: Data | None = None

    def wrong_keys(self) -> set[str]:
        """Keys that some worker or the store holds otherwise than expected (missing, other value, back)."""
        wrong: set[str] = set()
        for view in [*self.views.values(), self.stored or {}]:
            wrong.update(k for k in self.expected.keys() | view.keys() if view.get(k) != self.expected.get(k))
        return wrong

    def on_every_worker(self) -> bool:
        return all(view == self.expected for view in self.views.values())

    def in_the_store(self) -> bool:
        return self.stored == self.expected


@dataclass
class Deployment:
    """A running gunicorn over one store, and how to read that store directly."""

    server: WebServer
    #: Session key -> data of every live record the store holds now.
    read_store: Callable[[], dict[str, Data]]


def live(records: Iterable[Record]) -> dict[str, Data]:
    return {r.key: dict(r.data) for r in records if not r.deleted}


STORES = [pytest.param("jsonfile", id="jsonfile"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    with ExitStack() as stack:
        if request.param == "postgres":
            from persist.postgres import PostgresStore

            location = request.getfixturevalue("postgres_url")
            # The table is made here, before the sidecar starts, so the test can read it at any time.
            store = stack.enter_context(closing(PostgresStore(location, create_table=True)))

            def read_store() -> dict[str, Data]:
                return live(store.load_all(time.time()))
        else:
            path = tmp_path / "sessions.json"
            location = str(path)

            def read_store() -> dict[str, Data]:
                # The sidecar writes its first snapshot a moment after the first change.
                return live(read_snapshot(location, time.time())) if path.exists() else {}

        server = WebServer("gunicorn", APP, workers=WORKERS, env={"MEMSESSION_STORE": location}, config=CONFIG)
        stack.enter_context(server)
        yield Deployment(server, read_store)


def every_worker(readers: Readers, cookie: str) -> dict[int, dict[str, Any]]:
    """Worker pid -> its ``/whoami`` answer with ``cookie``, read until every worker has answered."""
    answers: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + EVERY_WORKER
    while len(answers) < WORKERS:
        assert time.monotonic() < deadline, f"only workers {sorted(answers)} answered within {EVERY_WORKER}s"
        for answer in readers.many("/whoami", cookie, WORKERS):
            answers[answer["pid"]] = answer
    return answers


def read_workers(readers: Readers, round_: Round) -> None:
    answers = every_worker(readers, round_.cookie)
    round_.views = {pid: answer["session"] for pid, answer in answers.items()}
    round_.sid = round_.sid or next((a["sid"] for a in answers.values() if a["sid"]), None)


class RoundRunner:
    """Runs the rounds of one scenario: a fresh session, then its changes all at once."""

    def __init__(self, server: WebServer, scenario: Scenario) -> None:
        self.scenario = scenario
        self.starter = client(server.url)
        self.senders = [client(server.url) for _ in scenario.changes]
        self.pool = ThreadPoolExecutor(len(scenario.changes))

    def close(self) -> None:
        self.pool.shutdown()
        for c in [self.starter, *self.senders]:
            c.close()

    def run(self, n: int) -> Round:
        response = self.starter.post("/start", params=self.scenario.start(n))
        self.starter.cookies.clear()
        assert response.status_code == 200, response.text
        cookie = response.cookies[COOKIE]
        together = threading.Barrier(len(self.senders))
        arrived: list[str] = []
        lock = threading.Lock()

        def send(sender: httpx.Client, change: Change) -> int:
            path, params = change.request(n)
            together.wait(timeout=EVERY_WORKER)
            answer = sender.post(path, params=params, headers={"Cookie": f"{COOKIE}={cookie}"})
            sender.cookies.clear()
            assert answer.status_code == 200, answer.text
            with lock:  # the order responses came back in: the browser keeps the last Set-Cookie
                arrived.append(answer.cookies.get(COOKIE) or cookie)
            pid: int = answer.json()["pid"]
            return pid

        futures = [self.pool.submit(send, s, c) for s, c in zip(self.senders, self.scenario.changes)]
        pids = [f.result() for f in futures]
        return Round(self.scenario.expected(n), pids, arrived[-1])


def settle(deployment: Deployment, readers: Readers, rounds: list[Round]) -> None:
    """Read again what has not caught up, until everything has or ``SETTLE`` has passed."""
    deadline = time.monotonic() + SETTLE
    while True:
        stored = deployment.read_store()
        for r in rounds:
            r.stored = stored.get(session_key(r.sid)) if r.sid else None
        behind = [r for r in rounds if not r.on_every_worker()]
        if not behind and all(r.in_the_store() for r in rounds):
            return
        if time.monotonic() >= deadline:
            return
        for r in behind:
            read_workers(readers, r)
        time.sleep(POLL)


def summary(name: str, rounds: list[Round], first_read_behind: int) -> str:
    spread = sum(len(set(r.pids)) > 1 for r in rounds)
    every = sum(len(set(r.pids)) == len(r.pids) for r in rounds)
    lost = [r for r in rounds if r.wrong_keys()]
    lost_on_workers = sum(not r.on_every_worker() for r in rounds)
    lost_in_store = sum(not r.in_the_store() for r in rounds)
    return (f"{name}: {len(rounds)} rounds, {spread} on more than one worker ({every} on a worker each); "
            f"{first_read_behind} not yet everywhere at the first read; after settling "
            f"{len(lost)} rounds lost {sum(len(r.wrong_keys()) for r in rounds)} keys "
            f"(workers wrong in {lost_on_workers} rounds, the store in {lost_in_store}; "
            f"of the rounds on more than one worker {sum(1 for r in lost if len(set(r.pids)) > 1)})")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_concurrent_changes_of_one_user_all_survive_on_every_worker_and_in_the_store(
    deployment: Deployment, name: str
) -> None:
    scenario = SCENARIOS[name]
    rounds: list[Round] = []
    runner = RoundRunner(deployment.server, scenario)
    with closing(runner), Readers(deployment.server.url, threads=WORKERS, cookie_name=COOKIE) as readers:
        for n in range(scenario.rounds):
            round_ = runner.run(n)
            read_workers(readers, round_)
            rounds.append(round_)
        first_read_behind = sum(not r.on_every_worker() for r in rounds)
        settle(deployment, readers, rounds)
    report = summary(name, rounds, first_read_behind)
    print(report)
    workers = set().union(*(r.views for r in rounds))
    assert len(workers) == WORKERS, f"workers {sorted(workers)} answered: one was restarted\n{report}"
    assert all(r.sid for r in rounds), report
    assert 2 * sum(len(set(r.pids)) > 1 for r in rounds) > len(rounds), f"most rounds ran on one worker\n{report}"
    lost = [r for r in rounds if r.wrong_keys()]
    examples = "\n".join(f"expected {r.expected}, ran on {r.pids}, workers {r.views}, store {r.stored}"
                         for r in lost[:3])
    assert len(lost) == 0, f"{report}\n{examples}"
