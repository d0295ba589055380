"""Where a benchmark run's tables are kept: ``bench/results/``.

Each run writes ``<UTC date-time>-<suites>.txt``: a header (date, the CPU model
and core count from /proc/cpuinfo, Python, the memsession commit, the command)
and then everything the suites printed to stdout, as they printed it. A full
run (not ``--quick``) also replaces its suites' sections of ``latest.md``,
which keeps the newest full run of every suite for the README to link to.
Progress goes to stderr and stays out of both.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

__all__ = [
    "LATEST", "RESULTS", "Machine", "ResultsLog", "cpu_model", "git_commit", "header", "latest_section",
    "load_average", "merge_latest", "run_filename", "this_machine",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LATEST = "latest.md"
_SECTION = re.compile(r"^## (\S+)\s*$", re.MULTILINE)
_LATEST_INTRO = """# Latest benchmark results

The newest full run (`./scripts/bench`, not `--quick`) of each suite, as it printed its tables.
Every run, quick ones included, is also kept whole next to this file as
`<UTC date-time>-<suites>.txt`. Ratios are measured in one run; on a shared machine
compare runs by their ratios, not their absolute rates.
"""


@dataclass(frozen=True)
class Machine:
    """What a result was measured on and with."""

    cpu: str
    cores: int
    python: str
    commit: str

    def summary(self) -> str:
        return f"{self.cpu}, {self.cores} cores · Python {self.python} · commit {self.commit}"


def cpu_model(cpuinfo: str) -> tuple[str, int]:
    """``(model name, logical cores)`` from the text of /proc/cpuinfo; ``("unknown", 0)`` parts if absent."""
    models = re.findall(r"^model name\s*:\s*(.+?)\s*$", cpuinfo, re.MULTILINE)
    cores = len(re.findall(r"^processor\s*:", cpuinfo, re.MULTILINE))
    return (models[0] if models else "unknown CPU"), cores


#: What the benchmarks themselves write: a checkout is not "changed" by an earlier run's output.
_OUTPUTS = (":(exclude)bench/results", ":(exclude)bench/*.png")


def git_commit(root: Path = ROOT) -> str:
    """The checkout's commit, marked when tracked files differ from it; says why when git can't tell."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_OUTPUTS],
                               cwd=root, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    return f"{head} (with uncommitted changes)" if dirty else head


def load_average() -> str | None:
    """The 1, 5 and 15 minute load averages, or None where /proc has none."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def this_machine(root: Path = ROOT) -> Machine:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cpu, cores = cpu_model(cpuinfo)
    return Machine(cpu=cpu, cores=cores or os.cpu_count() or 0,
                   python=f"{platform.python_version()} ({platform.python_implementation()})",
                   commit=git_commit(root))


def run_filename(when: datetime, suites: Sequence[str], quick: bool) -> str:
    """``20261201T203005Z-core-web.txt``; ``when`` is UTC."""
    return f"{when:%Y%m%dT%H%M%SZ}-{'-'.join(suites)}{'-quick' if quick else ''}.txt"


def header(when: datetime, machine: Machine, command: str, load: str | None) -> str:
    """The lines that open a run's file."""
    lines = [
        "memsession benchmarks",
        f"date:    {when:%Y-%m-%d %H:%M:%S} UTC",
        f"machine: {machine.cpu}, {machine.cores} cores (/proc/cpuinfo)"
        + (f"; load average at start {load}" if load else ""),
        f"python:  {machine.python}",
        f"commit:  {machine.commit}",
        f"command: {command}",
    ]
    return "\n".join(lines) + "\n"


def latest_section(suite: str, output: str, when: datetime, machine: Machine, filename: str,
                   load: str | None = None) -> str:
    """One suite's section of ``latest.md``."""
    busy = f" · load average {load}" if load else ""
    return (
        f"## {suite}\n\n"
        f"{when:%Y-%m-%d %H:%M} UTC · {machine.summary()}{busy} · [{filename}]({filename})\n\n"
        f"```text\n{output.strip()}\n```\n"
    )


def merge_latest(existing: str, sections: Mapping[str, str], order: Sequence[str]) -> str:
    """``latest.md`` with ``sections`` (suite -> section) replacing those suites' old ones.

    Suites are kept in ``order``, then any others in the order they stood.
    """
    kept: dict[str, str] = {}
    starts = list(_SECTION.finditer(existing))
    for match, following in zip(starts, [*starts[1:], None]):
        end = following.start() if following is not None else len(existing)
        kept[match.group(1)] = existing[match.start():end].strip() + "\n"
    kept.update(sections)
    names = [n for n in order if n in kept] + [n for n in kept if n not in order]
    return _LATEST_INTRO + "".join("\n" + kept[n] for n in names)


class _Tee(io.TextIOBase):
    """Writes go to the terminal and into a buffer (a suite's captured output)."""

    def __init__(self, terminal: TextIO, sink: TextIO) -> None:
        self.terminal = terminal
        self.sink = sink
        self.captured = io.StringIO()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.sink.write(text)
        self.captured.write(text)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.sink.flush()


class ResultsLog:
    """One run's results file, and at the end ``latest.md``.

    ``log.run(name, main)`` captures what the suite prints to stdout into the
    file (written as it comes, so a run stopped half-way keeps what it measured).
    """

    def __init__(self, directory: Path, suites: Sequence[str], *, quick: bool, command: str,
                 order: Sequence[str], when: datetime, machine: Machine, load: str | None = None) -> None:
        self.directory = directory
        self.quick = quick
        self.order = order
        self.when = when
        self.machine = machine
        self.load = load
        self.filename = run_filename(when, suites, quick)
        self.path = directory / self.filename
        self.outputs: dict[str, str] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by finish()
        self._file.write(header(when, machine, command, load))
        self._file.flush()

    def run(self, name: str, main: Callable[[], int]) -> int:
        """``main()``'s status; its stdout also goes to the file, and to ``latest.md`` if it succeeded."""
        tee = _Tee(sys.stdout, self._file)
        try:
            with contextlib.redirect_stdout(tee):
                status = main()
        finally:
            tee.flush()
        if status == 0:
            self.outputs[name] = tee.captured.getvalue()
        return status

    def finish(self) -> Path | None:
        """Close the file; for a full run, update ``latest.md`` and return its path."""
        self._file.close()
        if self.quick or not self.outputs:
            return None
        latest = self.directory / LATEST
        existing = latest.read_text(encoding="utf-8") if latest.exists() else ""
        sections = {name: latest_section(name, out, self.when, self.machine, self.filename, self.load)
                    for name, out in self.outputs.items()}
        text = merge_latest(existing, sections, self.order)
        temp = latest.with_suffix(".md.tmp")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, latest)
        return latest
