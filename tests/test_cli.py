"""The ``memsession`` command line (memsession.service.cli): what ``--help`` shows, and ``ddl`` without psycopg."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from memsession.service.cli import main
from persist.postgres import ddl

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("hub", "keys", "ddl", "sidecar", "status")


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def options(text: str) -> dict[str, str]:
    """Each option of a help text and its help, on one line (argparse wraps them)."""
    out: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        found = re.match(r"  (-\S+)", line)
        if found:
            current = found.group(1).rstrip(",")
            out[current] = line
        elif current and line.startswith("      "):
            out[current] += line
        else:
            current = ""
    return {name: " ".join(text.split()) for name, text in out.items()}


def test_the_overview_is_plain_text_and_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    assert "``" not in text  # no reStructuredText markup
    for name in COMMANDS:
        assert re.search(rf"^ +{name} +\w", text, re.MULTILINE), name  # listed with what it does


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_help_is_plain_text(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert "``" not in help_of(capsys, command)


def test_a_command_help_shows_the_defaults_that_mean_something(capsys: pytest.CaptureFixture[str]) -> None:
    sidecar = options(help_of(capsys, "sidecar"))
    assert sidecar["--flush-interval"].endswith("(default: 0.1)")
    assert sidecar["--batch-size"].endswith("(default: 2000)")
    assert sidecar["--maxsize"].endswith("(default: 1000000)")
    assert sidecar["--log-level"].endswith("(default: INFO)")
    assert sidecar["--table"].endswith("(default: memsession)")  # said in words: not twice
    assert sidecar["--table"].count("default") == 1
    hub = options(help_of(capsys, "hub"))
    assert hub["--heartbeat"].endswith("(default: 1.0)")
    assert hub["--sndhwm"].endswith("(default: 100000)")
    assert options(help_of(capsys, "status"))["--timeout"].endswith("(default: 2.0)")
    assert options(help_of(capsys, "ddl"))["--table"].endswith("(default: memsession)")
    for command in COMMANDS:
        text = help_of(capsys, command)
        # Flags and unset options have nothing to show.
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text


def test_status_offers_only_the_options_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(options(help_of(capsys, "status"))) == {
        "-h", "--runtime-dir", "--requests", "--keys", "--insecure", "--json", "--timeout",
    }


#: Runs the command line in a Python where psycopg can't be imported.
WITHOUT_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = None; "
    "from memsession.service.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_without_psycopg(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_PSYCOPG, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_ddl_prints_the_sql_without_psycopg() -> None:
    done = run_without_psycopg("ddl", "--schema", "app", "--column", "key=id")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ddl("app", "memsession", {"key": "id"})
    assert done.stderr == ""


def test_ddl_prints_the_change_logs_tables_when_asked() -> None:
    done = run_without_psycopg("ddl", "--table", "sess", "--change-log")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ddl(None, "sess", change_log=True)
    assert 'CREATE TABLE IF NOT EXISTS "sess_changes"' in done.stdout
    assert "sess_changes" not in run_without_psycopg("ddl", "--table", "sess").stdout


def test_without_psycopg_the_postgres_store_says_what_to_install() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['psycopg'] = None; from persist.postgres import PostgresStore"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "pip install 'memsession[postgres]'" in done.stderr


@pytest.mark.parametrize(("store", "extra", "said"), [
    ("file:{dir}/sessions.json", ("--host-name", "host-a"), "--host-name"),  # a file joins no hosts
    ("http://127.0.0.1:9/sessions", ("--host-name", "host-a", "--log-retention", "60"), "--log-retention"),
    ("file:{dir}/sessions.json", ("--log-retention", "60"), "--log-retention"),
])
def test_a_sidecar_refuses_what_its_store_can_not_do_before_it_starts(
    tmp_path: Path, store: str, extra: tuple[str, ...], said: str
) -> None:
    argv = ["sidecar", "--store", store.format(dir=tmp_path), "--runtime-dir", str(tmp_path / "run"), *extra]
    done = subprocess.run([sys.executable, "-m", "memsession", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "PostgreSQL" in done.stderr
