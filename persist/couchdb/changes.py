"""A CouchStore's ``_changes`` feed read in a thread of its own: the one loop ``CouchFollower`` and
``CouchChangeFeed`` share.

The feed is CouchDB's continuous one with the documents (``feed=continuous``,
``include_docs``) and a heartbeat every ``heartbeat`` seconds, read line by
line with a size limit per line (``max_line_bytes``: a longer line is an
error, never a buffer without end). The lines that arrive together (what
the server had to send at once) go together to ``on_lines``, with the
``since`` they reach, which the reader then stands at. A heartbeat (an empty
line) means the server had nothing more to send: once the lines before it
are handed over, the reader is at the end of the feed (``idle_at``).

Any failure is logged (``memsession.persist``), counted as ``errors``, and
followed by a reconnect after a backoff (``retry_min`` doubling up to
``retry_max``) from the ``since`` the reader stands at; a feed the server
ends (its ``last_seq`` line) is followed again at once, counted as
``reconnects``. ``on_connect`` runs before every connect, and may move
``since``. A ``400`` answer to ``since`` (a sequence the server can't
follow from) goes to ``on_refused``, which says where to go on from; without
one, or for the since it gave, it is a failure like any other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import httpx
import orjson

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import StoreError, StoreUnavailable
from memsession.validate import check_int, check_number

from ..feed import MAX_CURSOR
from .database import NAME

if TYPE_CHECKING:
    from .store import CouchStore

__all__ = ["ChangesReader", "Seq", "check_reader_options", "seq_fault"]

log = logging.getLogger("memsession.persist")

#: A CouchDB sequence: an int (PouchDB) or an opaque str (CouchDB 2 and later).
Seq = Union[str, int]
OnLines = Callable[[list[dict[str, Any]], Seq], Any]


def seq_fault(seq: Any) -> str | None:
    """What is wrong with a sequence the server sent, or None: an int >= 0, or 1 to ``MAX_CURSOR`` ASCII."""
    if type(seq) is int:
        return None if seq >= 0 else "a sequence is a negative int"
    if type(seq) is not str or not 0 < len(seq) <= MAX_CURSOR or not (seq.isascii() and seq.isprintable()):
        return f"a sequence is neither an int nor printable ASCII text of 1 to {MAX_CURSOR} characters"
    return None


def check_reader_options(heartbeat: Any, retry_min: Any, retry_max: Any, max_line_bytes: Any) -> None:
    """``ConfigError`` for an option ``ChangesReader`` can't take."""
    for option, value in (("heartbeat", heartbeat), ("retry_min", retry_min), ("retry_max", retry_max)):
        check_number(option, value)
    check_int("max_line_bytes", max_line_bytes)


class ChangesReader:
    """Follows ``store``'s ``_changes`` feed from ``since`` and hands what it reads to ``on_lines``.

    ``counts`` (the caller's) gets ``errors`` and ``reconnects`` added to.
    ``connected`` is set while a feed is open. An exception from a callback
    is a failure of the connection: logged, counted, and followed by a
    reconnect from where the reader stood before the lines it was handed.
    """

    def __init__(
        self,
        store: CouchStore,
        on_lines: OnLines,
        *,
        since: Seq,
        counts: dict[str, int],
        heartbeat: float = 1.0,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
        max_line_bytes: int = 8 << 20,
        on_connect: Callable[[], Any] | None = None,
        on_refused: Callable[[], Seq] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "memsession-couch-changes",
    ) -> None:
        check_reader_options(heartbeat, retry_min, retry_max, max_line_bytes)
        self.store = store
        self.on_lines = on_lines
        self.since: Seq = since
        self.counts = counts
        self.heartbeat = heartbeat
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.max_line_bytes = max_line_bytes
        self.on_connect = on_connect
        self.on_refused = on_refused
        self.clock = clock
        self.name = name
        #: When (``clock.monotonic``) a heartbeat last found every line before it handed over; None: never.
        self.idle_at: float | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The since ``on_refused`` gave last: refused in turn, it is a failure, not one more refusal.
        self._offered: Seq | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop following; returns within about ``heartbeat`` seconds. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = self.retry_min
        try:
            while not self._stop.is_set():
                try:
                    self._follow()
                    backoff = self.retry_min
                except Exception as exc:
                    self.connected.clear()
                    if self._stop.is_set():
                        break
                    self.counts["errors"] += 1
                    log.warning(
                        "following CouchDB changes failed (%s: %s); reconnecting in %.1fs",
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.retry_max)
                else:
                    self.counts["reconnects"] += 1
        finally:
            self.connected.clear()

    def _follow(self) -> None:
        """One connection: read until the server ends the feed, it fails, or ``stop()``."""
        if self.on_connect is not None:
            self.on_connect()
        params: dict[str, str | int] = {
            "feed": "continuous",
            "include_docs": "true",
            "heartbeat": int(self.heartbeat * 1000),
            "since": self.since,
        }
        # Identity: gzip-encoded continuous feeds stall on some servers.
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        # The store's client (thread-safe); the read timeout only has to outlast a heartbeat.
        timeout = httpx.Timeout(10.0, read=self.heartbeat * 5 + 5)
        client = self.store.client
        with client.stream("GET", "_changes", params=params, headers=headers, timeout=timeout) as response:
            if response.status_code == 400 and self.on_refused is not None and self.since != self._offered:
                self.since = self._offered = self.on_refused()
                return
            if response.status_code != 200:
                raise StoreUnavailable(f"_changes answered HTTP {response.status_code}",
                                       store=NAME, op="changes")
            self.connected.set()
            buffer = b""
            for chunk in response.iter_bytes():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if lines and not self._take(lines):
                    return
                if len(buffer) > self.max_line_bytes:
                    raise StoreError(f"_changes line over {self.max_line_bytes} bytes",
                                     store=NAME, op="changes")
                if self._stop.is_set():
                    return

    def _take(self, lines: list[bytes]) -> bool:
        """Hand over the changes among ``lines`` and stand past them; False when the server ended the feed."""
        changes: list[dict[str, Any]] = []
        since = self.since
        idle = ended = False
        for line in lines:
            if not line.strip():
                idle = True
                continue
            item = orjson.loads(line)
            if not isinstance(item, dict):
                continue
            if "last_seq" in item and "id" not in item:
                since, ended = self._checked(item["last_seq"]), True
                break
            since = self._checked(item.get("seq", since))
            changes.append(item)
        if changes:
            self.on_lines(changes, since)
        self.since = since
        if idle and not ended:
            self.idle_at = self.clock.monotonic()
        return not ended

    @staticmethod
    def _checked(seq: Any) -> Seq:
        fault = seq_fault(seq)
        if fault is not None:
            raise StoreError(f"_changes: {fault}", store=NAME, op="changes")
        assert isinstance(seq, (str, int))
        return seq
