"""A real headless Chromium for page tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol commands from its fd 3
and write answers and events to its fd 4, each a JSON message ended by a NUL
byte: no websocket client and no port needed. The browser runs in its own
process group with a fresh profile, no network of its own (the flags from
INFRA.md), and is stopped by its pid like every process the tests start.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.servers import track
from tests.webservers import ROOT, Process

#: Flags that keep a headless Chromium to itself (no sync, updates or background requests).
QUIET = ("--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--mute-audio", "--hide-scrollbars")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _above_9(fd: int) -> int:
    """``fd`` moved to a number above 9, so that putting the child's ends at 3 and 4 can't clobber it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Chromium(Process):
    """Headless Chromium with one page; ``call`` sends a DevTools command to it and returns the result."""

    def __init__(self, binary: str, *, width: int = 1100, height: int = 900) -> None:
        self.profile = tempfile.mkdtemp(prefix="ms-chromium-")
        flags = [*QUIET, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                 "--remote-debugging-pipe"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        super().__init__([binary, *flags, "about:blank"], name="chromium")
        self._to: int | None = None
        self._from: int | None = None
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        #: Protocol events received so far (``method``, ``params``), oldest first.
        self.events: list[tuple[str, dict[str, Any]]] = []

    def start(self, timeout: float = 30.0) -> Chromium:
        commands_in, commands_out = os.pipe()
        answers_in, answers_out = os.pipe()
        child_in, child_out = _above_9(commands_in), _above_9(answers_out)
        # bash (not dash: it takes fds above 9) puts the pipe ends at 3 and 4, then runs the browser.
        argv = ["bash", "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-',
                *self.argv]
        try:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             pass_fds=(child_in, child_out))
        finally:
            os.close(child_in)
            os.close(child_out)
        self._owner_pid = os.getpid()
        track(self)
        self._to, self._from = commands_out, answers_in
        page = next(t for t in self.call("Target.getTargets", timeout=timeout)["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        return self

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self._from is not None
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise self.fail("no answer from the DevTools pipe in time")
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise self.fail("closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def call(self, method: str, *, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """Run ``method`` (in the page's session unless it is a ``Target.`` command) and return its result."""
        assert self._to is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer.get("result", {})  # type: ignore[no-any-return]
            if "method" in answer:
                self.events.append((answer["method"], answer.get("params", {})))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def stop(self, timeout: float = 10.0) -> None:
        for fd in (self._to, self._from):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = None
        super().stop(timeout)
        shutil.rmtree(self.profile, ignore_errors=True)
