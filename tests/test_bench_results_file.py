"""bench.results_file and the runner's results: what a run leaves in bench/results/."""

from __future__ import annotations

import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bench.results_file import (
    LATEST,
    Machine,
    ResultsLog,
    cpu_model,
    git_commit,
    header,
    latest_section,
    merge_latest,
    run_filename,
)

WHEN = datetime(2026, 12, 1, 20, 30, 5, tzinfo=timezone.utc)
MACHINE = Machine(cpu="AMD EPYC", cores=2, python="3.11.7 (CPython)", commit="960fd51a2b3c")
ORDER = ["core", "replication", "web", "soak"]

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme
"""


def test_cpu_model_and_cores_from_cpuinfo() -> None:
    assert cpu_model(CPUINFO) == ("AMD EPYC 7B13 64-Core Processor", 2)
    # Some architectures (arm64) name no model: the count still holds.
    assert cpu_model("processor\t: 0\nBogoMIPS\t: 50\n") == ("unknown CPU", 1)


def test_run_filename_sorts_by_time_and_names_the_suites() -> None:
    assert run_filename(WHEN, ["core", "web"], quick=False) == "20261201T203005Z-core-web.txt"
    assert run_filename(WHEN, ["web"], quick=True) == "20261201T203005Z-web-quick.txt"


def test_header_names_date_machine_python_commit_and_command() -> None:
    text = header(WHEN, MACHINE, "python -m bench web", load="0.50 0.40 0.30")
    assert "2026-12-01 20:30:05 UTC" in text
    assert "AMD EPYC, 2 cores" in text
    assert "load average at start 0.50 0.40 0.30" in text
    assert "3.11.7 (CPython)" in text
    assert "960fd51a2b3c" in text
    assert "python -m bench web" in text


def test_git_commit_of_this_checkout_or_why_not(tmp_path: Path) -> None:
    here = git_commit()
    assert here.startswith("unknown (") or len(here.split()[0]) == 12
    assert git_commit(tmp_path).startswith("unknown (")  # not a repository: says so, does not raise


def test_a_checkout_changed_only_by_benchmark_output_is_not_marked(tmp_path: Path) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    for name in ("bench/web.png", "bench/results/latest.md", "code.py"):
        (tmp_path / name).write_text("v1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and " " not in clean
    (tmp_path / "bench" / "web.png").write_text("v2")
    (tmp_path / "bench" / "results" / "latest.md").write_text("v2")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("v2")
    assert git_commit(tmp_path) == f"{clean} (with uncommitted changes)"


def section(suite: str, body: str) -> str:
    return latest_section(suite, body, WHEN, MACHINE, "x.txt")


class TestMergeLatest:
    def test_first_run_writes_intro_and_sections_in_order(self) -> None:
        text = merge_latest("", {"web": section("web", "W1"), "core": section("core", "C1")}, ORDER)
        assert text.startswith("# Latest benchmark results")
        assert text.index("## core") < text.index("## web")
        assert "```text\nW1\n```" in text

    def test_a_later_run_replaces_only_its_own_suites(self) -> None:
        first = merge_latest("", {"core": section("core", "C1"), "web": section("web", "W1")}, ORDER)
        second = merge_latest(first, {"web": section("web", "W2")}, ORDER)
        assert "C1" in second and "W2" in second and "W1" not in second
        assert second.count("## web") == 1 and second.count("## core") == 1
        assert second.index("## core") < second.index("## web")

    def test_an_unknown_suite_stays_after_the_known_ones(self) -> None:
        first = merge_latest("", {"extra": section("extra", "E1")}, ORDER)
        second = merge_latest(first, {"core": section("core", "C1")}, ORDER)
        assert second.index("## core") < second.index("## extra")
        assert "E1" in second

    def test_merging_is_stable(self) -> None:
        once = merge_latest("", {"core": section("core", "C1"), "web": section("web", "W1")}, ORDER)
        assert merge_latest(once, {}, ORDER) == once


class TestResultsLog:
    def log(self, directory: Path, suites: list[str], quick: bool = False) -> ResultsLog:
        return ResultsLog(directory, suites, quick=quick, command="python -m bench", order=ORDER, when=WHEN,
                          machine=MACHINE, load=None)

    def test_file_holds_header_and_what_suites_printed(self, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
        log = self.log(tmp_path, ["core", "web"])

        def core() -> int:
            print("core table")
            print("progress", file=sys.stderr)
            return 0

        assert log.run("core", core) == 0
        assert log.run("web", lambda: print("web table") or 0) == 0
        latest = log.finish()
        text = (tmp_path / "20261201T203005Z-core-web.txt").read_text()
        assert text.startswith("memsession benchmarks\n")
        assert "core table\n" in text and "web table\n" in text
        assert "progress" not in text
        assert "core table" in capsys.readouterr().out  # still printed too
        assert latest == tmp_path / LATEST
        assert "## core" in latest.read_text() and "## web" in latest.read_text()

    def test_quick_runs_keep_their_file_but_leave_latest_alone(self, tmp_path: Path) -> None:
        log = self.log(tmp_path, ["web"], quick=True)
        log.run("web", lambda: print("quick table") or 0)
        assert log.finish() is None
        assert not (tmp_path / LATEST).exists()
        assert "quick table" in (tmp_path / "20261201T203005Z-web-quick.txt").read_text()

    def test_a_failed_suite_is_kept_in_the_file_not_in_latest(self, tmp_path: Path) -> None:
        log = self.log(tmp_path, ["core", "web"])
        log.run("core", lambda: print("core table") or 0)
        assert log.run("web", lambda: print("half a web table") or 2) == 2

        def crash() -> int:
            print("before the crash")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            log.run("replication", crash)
        latest = log.finish()
        assert latest is not None
        text = latest.read_text()
        assert "## core" in text and "## web" not in text and "## replication" not in text
        run_file = (tmp_path / "20261201T203005Z-core-web.txt").read_text()
        assert "half a web table" in run_file and "before the crash" in run_file


def test_runner_writes_a_results_file(tmp_path: Path) -> None:
    from bench.__main__ import main

    suite = types.ModuleType("bench.web")
    suite.main = lambda options: print("suite table", options) or 0  # type: ignore[attr-defined]

    def runner(argv: list[str]) -> int:
        return main(argv, import_suite=lambda name: suite)

    assert runner(["web", "--quick", "--results-dir", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*-web-quick.txt")
    text = written.read_text()
    assert "=== web ===" in text and "suite table ['--quick']" in text
    assert "command: python -m bench web --quick --results-dir" in text
    assert runner(["web", "--no-results", "--results-dir", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()
