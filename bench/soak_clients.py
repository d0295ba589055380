"""The soak benchmark's users: each writes and reads its own session and keeps a ledger of what it was told.

A user is a thread with its own cookie jar. Every request opens a fresh
connection (``urllib`` does not keep connections alive), so requests spread
over the workers. ``GET /write`` increments the session's counter and answers
the new value: a 2xx answer is an acknowledged write. ``GET /read`` answers
the counter. From the answers the ledger tells:

* a replaced session: a write answered with a cookie naming another session
  id, or with a counter at or below the last acknowledged one (same id): the
  user's earlier writes are gone;
* a stale read: a read answering less than the last acknowledged write;
* a failed request: a non-2xx answer or a connection error (timeouts
  included); a failed write may or may not have happened, so the next write
  may skip a number, which is no loss.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Ledger", "Replacement", "User", "session_id"]

COOKIE = "session"
TIMEOUT = 15.0


def session_id(jar: http.cookiejar.CookieJar) -> str | None:
    """The session id in the jar's memsession cookie (``<sid>.<version>.<mac>``), if any."""
    for cookie in jar:
        if cookie.name == COOKIE and cookie.value:
            return cookie.value.split(".", 1)[0]
    return None


@dataclass
class Replacement:
    at: float  # seconds since the run began
    old_sid: str
    new_sid: str
    acked_before: int  # the last acknowledged counter of the old session
    answered: int  # what the write answered


@dataclass
class Ledger:
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "500", "503", "connection", ...
    replacements: list[Replacement] = field(default_factory=list)
    stale_reads: int = 0
    sid: str | None = None
    acked: int = 0  # the last acknowledged counter of the current session


class User(threading.Thread):
    """One user: write, read, repeat until ``stop`` is set, with ``think`` seconds between requests."""

    def __init__(self, index: int, base_url: str, stop: threading.Event, think: float, began: float) -> None:
        super().__init__(name=f"soak-user-{index}", daemon=True)
        self.base_url = base_url
        self.stop_event = stop
        self.think = think
        self.began = began
        self.jar = http.cookiejar.CookieJar()
        # No proxy: everything is on 127.0.0.1, whatever http_proxy says.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.jar))
        self.ledger = Ledger()

    def get(self, path: str) -> int | None:
        """The counter a 2xx answer carries; None for a failed request (counted)."""
        self.ledger.requests += 1
        try:
            with self.opener.open(self.base_url + path, timeout=TIMEOUT) as response:
                return int(response.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            self.ledger.failures[str(exc.code)] += 1
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            self.ledger.failures["connection"] += 1
        return None

    def write(self) -> None:
        answered = self.get("/write")
        if answered is None:
            return
        ledger = self.ledger
        sid = session_id(self.jar)
        if ledger.sid is not None and sid is not None and (sid != ledger.sid or answered <= ledger.acked):
            ledger.replacements.append(Replacement(time.monotonic() - self.began, ledger.sid, sid,
                                                   ledger.acked, answered))
        ledger.sid = sid
        ledger.acked = answered

    def read(self) -> None:
        answered = self.get("/read")
        if answered is not None and answered < self.ledger.acked:
            self.ledger.stale_reads += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.write()
            if self.stop_event.wait(self.think):
                break
            self.read()
            self.stop_event.wait(self.think)

    def final_read(self) -> int | str:
        """The counter the app answers for this user's session now, or why it did not (not counted as load)."""
        try:
            with self.opener.open(self.base_url + "/read", timeout=TIMEOUT) as response:
                return int(response.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            return f"connection error: {exc}"
