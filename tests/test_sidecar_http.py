"""The sidecar's HTTP status server under hostile clients, over real sockets to a real sidecar process.

Idle connections beyond the cap, a client trickling its headers a byte at a
time, clients that reset the connection mid-request: the process's thread
count stays bounded, every such connection is cut within the connection
timeout and counted, nothing reaches stderr as a traceback, and ``/health``
answers once they are gone.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import tempfile
from collections.abc import Iterator

import pytest

from tests.servers import free_port
from tests.sidecars import SidecarProcess, wait_until

pytestmark = [pytest.mark.zmq, pytest.mark.timeout(120)]

#: Small on purpose, so that the tests are quick: the defaults are 10 s and 32.
TIMEOUT = 2.0
CAP = 8
HEALTH = b"GET /health HTTP/1.0\r\n\r\n"


@pytest.fixture(scope="module")
def sidecar() -> Iterator[SidecarProcess]:
    with tempfile.TemporaryDirectory(prefix="ms-http-store-") as store_dir:
        process = SidecarProcess(
            f"file://{store_dir}/sessions.json", "--heartbeat", "0.2", "--http", f"127.0.0.1:{free_port()}",
            "--http-timeout", str(TIMEOUT), "--http-max-connections", str(CAP),
        )
        process.start()
        try:
            # /health answers 503 until the hub thread first publishes its stats (within a second).
            wait_until(lambda: status(process, HEALTH) == 200, 10, "/health to answer 200")
            yield process
        finally:
            process.stop()


def port_of(sidecar: SidecarProcess) -> int:
    return int(sidecar.args[sidecar.args.index("--http") + 1].rpartition(":")[2])


def connect(sidecar: SidecarProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(sidecar)), timeout=10)


def status(sidecar: SidecarProcess, request: bytes) -> int | None:
    """The status code of ``request`` on a fresh connection, or None if the server cut it first."""
    with connect(sidecar) as conn:
        with contextlib.suppress(OSError):
            conn.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
    words = answer.split(b"\r\n", 1)[0].split()
    return int(words[1]) if len(words) >= 2 and words[1].isdigit() else None


def counts(sidecar: SidecarProcess) -> dict[str, int]:
    return sidecar.stats()["http"]  # type: ignore[no-any-return]


def threads(sidecar: SidecarProcess) -> int:
    assert sidecar.proc is not None
    with open(f"/proc/{sidecar.proc.pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/PID/status")


def closed_by_server(conn: socket.socket) -> bool:
    """Whether the server has closed ``conn`` (EOF or reset, after any answer), without waiting."""
    try:
        while select.select([conn], [], [], 0)[0]:
            if not conn.recv(65536):
                return True
    except OSError:
        return True
    return False


def reset(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the server sees a reset, as from a client that crashed."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_idle_connections_past_the_cap_hold_no_threads_and_are_cut_within_the_timeout(
    sidecar: SidecarProcess,
) -> None:
    baseline = threads(sidecar)
    before = counts(sidecar)
    idle = [connect(sidecar) for _ in range(10 * CAP)]
    try:
        turned_away = 10 * CAP - CAP
        wait_until(lambda: counts(sidecar)["over_capacity"] >= before["over_capacity"] + turned_away, 10,
                   "the connections past the cap to be turned away")
        # One thread per served connection, none for the others (a couple of spare for the process's own).
        assert threads(sidecar) <= baseline + CAP + 2
        assert status(sidecar, HEALTH) == 503  # full: answered at once, not queued
        wait_until(lambda: all(closed_by_server(conn) for conn in idle), 5 * TIMEOUT,
                   "the server to close every idle connection")
        wait_until(lambda: status(sidecar, HEALTH) == 200, 5 * TIMEOUT, "/health to answer again")
        after = counts(sidecar)
        assert after["malformed"] >= before["malformed"] + CAP  # the cut ones: they sent no request in time
        wait_until(lambda: threads(sidecar) <= baseline + 2, 5 * TIMEOUT, "the connection threads to end")
    finally:
        for conn in idle:
            conn.close()
    sidecar.check_alive()


def test_a_client_trickling_a_header_byte_a_second_is_cut_off(sidecar: SidecarProcess) -> None:
    before = counts(sidecar)
    with connect(sidecar) as conn:
        conn.sendall(b"GET /health HTTP/1.0\r\nX-Slow: ")
        sent = 0
        # A byte a second: each read is quick, only the connection's total time can run out.
        while not closed_by_server(conn):
            assert sent < 15 * TIMEOUT, "still connected after sending a byte a second for 15x the timeout"
            with contextlib.suppress(OSError):
                conn.sendall(b"a")
            sent += 1
            select.select([conn], [], [], 1.0)
    wait_until(lambda: counts(sidecar)["malformed"] > before["malformed"], 5, "the cut client to be counted")
    assert status(sidecar, HEALTH) == 200
    sidecar.check_alive()


def test_clients_that_reset_mid_request_are_counted_and_print_no_traceback(sidecar: SidecarProcess) -> None:
    before = counts(sidecar)
    for _ in range(5):
        conn = connect(sidecar)
        conn.sendall(HEALTH)  # gone before the answer: the server's write may fail
        reset(conn)
    partial = 20
    for _ in range(partial):
        conn = connect(sidecar)
        conn.sendall(b"GET /hea")  # gone mid-request line: the server's read fails
        reset(conn)
    wait_until(lambda: counts(sidecar)["malformed"] >= before["malformed"] + partial, 5 * TIMEOUT,
               "the reset clients to be counted")
    assert status(sidecar, HEALTH) == 200
    log = sidecar.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception occurred" not in log, log[-3000:]
    sidecar.check_alive()
