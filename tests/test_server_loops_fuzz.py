"""Every server loop survives every malformed request, over real sockets to real processes.

The hub's ROUTER (``python -m memsession hub``), the sidecar's ack socket and
its HTTP status server (``python -m memsession sidecar --http``) are sent
hypothesis-made garbage: wrong frame counts, undecodable bytes, wrong msgpack
types, out-of-range numbers, unknown ops, truncated and oversized frames; for
HTTP garbage request lines, unknown methods and paths, oversized headers,
bodies. After each one a valid request must get its correct answer, the
refusal must show in the process's counters, and the process must be alive.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsession import wire
from memsession.errors import WireError
from memsession.hub import HubConfig, query_stats
from memsession.service.ack import SidecarAckStore, default_ack_endpoint
from memsession.service.ack_server import parse_request
from memsession.session import Record, new_id
from tests.servers import free_port
from tests.sidecars import SidecarProcess, wait_until
from tests.webservers import Process

pytestmark = [pytest.mark.zmq, pytest.mark.timeout(180)]

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMEOUT_MS = 5000
MAX_FRAME = wire.DEFAULT_LIMITS.max_frame

# -- processes --------------------------------------------------------------------------


class HubProcess(Process):
    """``python -m memsession hub`` on ipc sockets in a private runtime dir."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ms-fz-")
        self.runtime_dir = f"{self.tmp}/rt"
        self.requests = HubConfig(runtime_dir=self.runtime_dir).endpoints()[2]
        super().__init__([sys.executable, "-m", "memsession", "hub", "--runtime-dir", self.runtime_dir,
                          "--heartbeat", "0.2", "--log-level", "WARNING"], name="hub")

    def start(self) -> HubProcess:
        super().start()

        def answers() -> bool:
            self.check_alive()
            with contextlib.suppress(Exception):
                return bool(query_stats(self.requests, timeout=0.3))
            return False

        wait_until(answers, 20, "the hub to answer")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def hub() -> Iterator[HubProcess]:
    process = HubProcess().start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def sidecar() -> Iterator[SidecarProcess]:
    with tempfile.TemporaryDirectory(prefix="ms-fz-store-") as store_dir:
        process = SidecarProcess(f"file://{store_dir}/sessions.json", "--flush-interval", "0.05",
                                 "--heartbeat", "0.2", "--http", f"127.0.0.1:{free_port()}")
        process.start()
        try:
            # /health answers 503 until the hub thread first publishes its stats (within a second).
            wait_until(lambda: http_exchange(http_port(process), b"GET /health HTTP/1.0\r\n\r\n") == 200, 10,
                       "/health to answer 200")
            yield process
        finally:
            process.stop()


@pytest.fixture(scope="module")
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


@contextlib.contextmanager
def dealer(ctx: zmq.Context[Any], endpoint: str) -> Iterator[zmq.Socket[Any]]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def receive(sock: zmq.Socket[Any], what: str) -> list[bytes]:
    if not sock.poll(TIMEOUT_MS):
        raise AssertionError(f"no answer to {what}")
    return sock.recv_multipart()


def hub_stats(sock: zmq.Socket[Any], rid: int) -> dict[str, Any]:
    """A STATS request on ``sock``: answered after everything sent before it on the same socket."""
    sock.send_multipart(wire.encode_request(wire.STATS, rid))
    reply = wire.decode_reply(receive(sock, "STATS"))
    assert (reply.op, reply.rid) == (wire.STATS_REPLY, rid)
    return reply.body[0]  # type: ignore[no-any-return]


def refused_requests(stats: dict[str, Any]) -> int:
    dropped = stats["dropped"]
    assert "error" not in dropped, dropped  # no request may reach the hub's catch-all
    return int(dropped.get("malformed request", 0) + dropped.get("not a request", 0))


def warnings_about(process: Process, what: str) -> int:
    return sum(1 for line in process.log.read_text(errors="replace").splitlines() if what in line)


# -- what malformed looks like ----------------------------------------------------------

numbers = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True), st.sampled_from([-1, 2**63, 2**64 - 1]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
request_topics = st.sampled_from(sorted(wire._TOPICS.values()))
odd_topics = st.one_of(st.binary(max_size=6), st.builds(lambda b: wire.PROTOCOL + bytes([b]), st.integers(0, 255)),
                       st.sampled_from([b"ms9S", b"ms2", b"MS2Q", b""]))


def _valid_requests() -> st.SearchStrategy[list[bytes]]:
    record = ["k", 3, 1, 1.0, 1.0, 1e12, False, msgpack.packb({})]
    return st.sampled_from([
        wire.encode_request(wire.STATS, 1), wire.encode_request(wire.SNAPSHOT, 2),
        wire.encode_request(wire.GET, 3, "k"), wire.encode_request(wire.PUSH, 4, [record], 0),
        wire.encode_request(wire.WRITE, 5, [record]),
    ])


def _truncated(frames: list[bytes], cut: int) -> list[bytes]:
    return [frames[0], frames[1][:cut % max(1, len(frames[1]))]]


hub_garbage = st.one_of(
    st.lists(st.binary(max_size=40), min_size=1, max_size=5),  # any frame count, any bytes
    st.tuples(request_topics, st.binary(max_size=60)).map(list),  # a known op, garbage payload
    st.tuples(request_topics, st.lists(values, max_size=5).map(msgpack.packb)).map(list),  # wrong types
    st.tuples(odd_topics, st.lists(values, max_size=3).map(msgpack.packb)).map(list),  # unknown ops, versions
    st.builds(_truncated, _valid_requests(), st.integers(0, 1000)),
    st.builds(lambda frames, extra: [*frames, *extra], _valid_requests(),
              st.lists(st.binary(max_size=8), min_size=1, max_size=3)),  # a good request with extra frames
)


def is_valid_request(frames: list[bytes]) -> bool:
    try:
        return wire.decode_reply(frames).op in wire.REQUEST_OPS
    except WireError:
        return False


# -- the hub's ROUTER -------------------------------------------------------------------


@FUZZ
@given(frames=hub_garbage)
def test_the_hub_drops_counts_and_logs_malformed_requests_and_serves_on(
    hub: HubProcess, context: zmq.Context[Any], frames: list[bytes],
) -> None:
    if is_valid_request(frames):
        return  # hypothesis may build a well-formed request; nothing to refuse then
    with dealer(context, hub.requests) as sock:
        before = refused_requests(hub_stats(sock, 1))
        sock.send_multipart(frames)
        after = hub_stats(sock, 2)  # the same socket: the hub has read the garbage first
    assert refused_requests(after) == before + 1
    hub.check_alive()


def test_the_hub_answers_valid_requests_after_the_garbage_and_logs_a_few_lines(
    hub: HubProcess, context: zmq.Context[Any],
) -> None:
    with dealer(context, hub.requests) as sock:
        before = refused_requests(hub_stats(sock, 1))
        for i in range(150):
            sock.send_multipart([wire._TOPICS[wire.GET], msgpack.packb([i, 7])])  # key must be a str
        assert refused_requests(hub_stats(sock, 2)) == before + 150
        record = Record(new_id(), {"n": 1}, 5, 9, 1.0, 1.0, 1e12)
        sock.send_multipart(wire.encode_request(wire.PUSH, 3, [wire.record_to_list(record)], 0))
        assert wire.decode_reply(receive(sock, "PUSH")) == wire.Reply(wire.ACK, 3, (1,))
        sock.send_multipart(wire.encode_request(wire.GET, 4, record.key))
        got = wire.decode_reply(receive(sock, "GET"))
        assert got.rid == 4 and got.body[0].key == record.key and got.body[0].data == {"n": 1}
    hub.check_alive()
    # Logged at WARNING the 1st, 10th, 100th... time only (the log level is WARNING).
    logged = warnings_about(hub, "hub dropped a frame (malformed request)")
    assert 1 <= logged <= 4


def send_and_get_cut_off(ctx: zmq.Context[Any], endpoint: str, frames: list[bytes]) -> None:
    """Send ``frames`` from a fresh socket and wait until the server cuts its connection."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not monitor.poll(TIMEOUT_MS):
            raise AssertionError(f"{endpoint} read a frame over {MAX_FRAME} bytes instead of cutting the sender off")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def test_the_hub_refuses_an_oversized_frame_unread_and_serves_on(hub: HubProcess, context: zmq.Context[Any]) -> None:
    with dealer(context, hub.requests) as sock:
        before = refused_requests(hub_stats(sock, 1))
        send_and_get_cut_off(context, hub.requests, [wire._TOPICS[wire.GET], b"\x00" * (MAX_FRAME + 1)])
        assert refused_requests(hub_stats(sock, 2)) == before  # never read, so nothing to decode or count
    hub.check_alive()


# -- the sidecar's ack socket -----------------------------------------------------------


def _ack_requests() -> st.SearchStrategy[list[bytes]]:
    wants = st.lists(st.one_of(values, st.lists(values, min_size=4, max_size=4)), max_size=4)
    payloads = st.one_of(
        st.binary(max_size=60),
        st.lists(values, max_size=5).map(msgpack.packb),
        st.tuples(numbers, wants, st.one_of(numbers, st.text(max_size=3))).map(lambda t: msgpack.packb(list(t))),
        st.builds(lambda k, v, o, a, t: msgpack.packb([1, [[k, v, o, a]], t]),
                  values, numbers, numbers, numbers, st.integers(-(10**6), 10**6)),
    )
    return st.one_of(
        payloads.map(lambda p: [p]),
        st.lists(st.binary(max_size=20), min_size=2, max_size=4),  # wrong frame count
    )


def is_valid_ack(frames: list[bytes]) -> bool:
    try:
        parse_request(frames[0])
    except ValueError:
        return False
    return len(frames) == 1


def ack_counts(sidecar: SidecarProcess) -> dict[str, int]:
    return sidecar.stats()["ack"]  # type: ignore[no-any-return]


@FUZZ
@given(frames=_ack_requests())
def test_the_ack_socket_drops_counts_and_logs_malformed_requests_and_serves_on(
    sidecar: SidecarProcess, context: zmq.Context[Any], frames: list[bytes],
) -> None:
    if is_valid_ack(frames):
        return
    before = ack_counts(sidecar)["malformed"]
    with dealer(context, default_ack_endpoint(sidecar.runtime_dir)) as sock:
        sock.send_multipart(frames)
        sock.send(msgpack.packb([77, [], 0]))  # waits for nothing: answered at once, after the garbage
        assert msgpack.unpackb(receive(sock, "a valid ack request")[0]) == [77, [], []]
    assert ack_counts(sidecar)["malformed"] == before + 1
    sidecar.check_alive()


def test_the_ack_socket_confirms_real_writes_after_garbage_and_oversized_frames(
    sidecar: SidecarProcess, context: zmq.Context[Any],
) -> None:
    endpoint = default_ack_endpoint(sidecar.runtime_dir)
    before = ack_counts(sidecar)["malformed"]
    with dealer(context, endpoint) as sock:
        for i in range(120):
            sock.send(msgpack.packb([i, [], "x"]))  # the reported failure: a timeout that is no number
        sock.send(msgpack.packb([500, [], 0]))
        assert msgpack.unpackb(receive(sock, "a valid ack request")[0]) == [500, [], []]
    assert ack_counts(sidecar)["malformed"] == before + 120
    send_and_get_cut_off(context, endpoint, [b"\x93" + b"\x00" * MAX_FRAME])  # refused unread, so not counted
    store = SidecarAckStore(runtime_dir=sidecar.runtime_dir, timeout=5.0)
    try:
        record = Record(new_id(), {"acked": True}, 11, 3, 1.0, 1.0, 1e12)
        assert store.save([record]) == 1
        assert store.load(record.key) is not None
    finally:
        store.close()
    assert ack_counts(sidecar)["malformed"] == before + 120
    sidecar.check_alive()
    assert 1 <= warnings_about(sidecar, "ack request dropped") <= 4


# -- the sidecar's HTTP status server ---------------------------------------------------


def http_exchange(port: int, request: bytes) -> int | None:
    """Send ``request`` on a fresh connection; the status code, or None if the server cut it first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        with contextlib.suppress(OSError):  # the server may answer and close before it all went out
            conn.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
    words = answer.split(b"\r\n", 1)[0].split()
    return int(words[1]) if len(words) >= 2 and words[1].isdigit() else None


def http_port(sidecar: SidecarProcess) -> int:
    for i, arg in enumerate(sidecar.args):
        if arg == "--http":
            return int(sidecar.args[i + 1].rpartition(":")[2])
    raise AssertionError("the sidecar has no --http")


def http_counts(sidecar: SidecarProcess) -> dict[str, int]:
    return sidecar.stats()["http"]  # type: ignore[no-any-return]


def _no_newline(b: bytes) -> bool:
    return b"\n" not in b


header_name = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"), min_size=1,
                      max_size=10)
http_garbage = st.one_of(
    st.binary(min_size=1, max_size=200).filter(_no_newline).map(lambda line: line + b"\r\n\r\n"),
    st.builds(lambda method, path: f"{method} {path} HTTP/1.0\r\n\r\n".encode(),
              st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "get"]),
              st.sampled_from(["/health", "/metrics", "/"])),
    st.builds(lambda path: f"GET {path} HTTP/1.0\r\n\r\n".encode(),
              st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)),
    st.builds(lambda n: b"GET /health HTTP/1.0\r\nX-Big: " + b"a" * n + b"\r\n\r\n", st.integers(65_537, 70_000)),
    st.builds(lambda n: b"GET /health HTTP/1.0\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(n)) + b"\r\n",
              st.integers(101, 150)),
    st.builds(lambda version: f"GET /health {version}\r\n\r\n".encode(),
              st.sampled_from(["HTTP/2.0", "HTTP/1", "HTTP/x.y", "FTP/1.0", "HTTP/1.1.1", "HTTP/99999999999.0"])),
    st.builds(lambda length, body: b"POST /health HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % length + body,
              st.integers(-(2**63), 2**63), st.binary(max_size=2000)),
    st.builds(lambda name, value: f"GET /nowhere HTTP/1.0\r\n{name}: {value}\r\n\r\n".encode(),
              header_name, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
)


def _blank_request(request: bytes) -> bool:
    # http.server closes the connection on a blank request line without an answer: nothing to count.
    return not request.split(b"\n", 1)[0].decode("iso-8859-1").split()


@FUZZ
@given(request=http_garbage)
def test_the_http_server_refuses_counts_and_logs_malformed_requests_and_serves_on(
    sidecar: SidecarProcess, request: bytes,
) -> None:
    if _blank_request(request):
        return
    port = http_port(sidecar)
    before = http_counts(sidecar)
    status = http_exchange(port, request)
    after = wait_until(lambda: (c := http_counts(sidecar)) != before and c, 5, "the request to be counted")
    if status in (200, 503):  # hypothesis built a valid request after all
        assert after == {**before, "served": before["served"] + 1}
    else:
        assert status is None or status >= 400
        assert after == {**before, "malformed": before["malformed"] + 1}
    assert http_exchange(port, b"GET /health HTTP/1.0\r\n\r\n") == 200
    sidecar.check_alive()


def test_the_http_counters_are_in_health_and_metrics_and_a_flood_logs_a_few_lines(sidecar: SidecarProcess) -> None:
    port = http_port(sidecar)
    for _ in range(120):
        assert http_exchange(port, b"BREW /pot HTTP/1.0\r\n\r\n") == 501
    malformed = http_counts(sidecar)["malformed"]
    assert malformed >= 120

    def metric() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            text = b""
            while chunk := conn.recv(65536):
                text += chunk
        for line in text.decode().splitlines():
            if line.startswith("memsession_http_malformed_total "):
                return int(line.split()[1])
        return -1

    wait_until(lambda: metric() >= malformed, 5, "/metrics to show memsession_http_malformed_total")
    assert 1 <= warnings_about(sidecar, "http request refused") <= 4
    sidecar.check_alive()


@pytest.mark.parametrize("payload", [
    msgpack.packb([1, ["1234"], 10]),  # a string unpacks into four "fields"
    msgpack.packb([1, [["k", "7", 1, 1.0]], 10]),  # a version that is a string
    msgpack.packb([1, [["k", 1.5, 1, 1.0]], 10]),
    msgpack.packb([1, [[["k"], 1, 1, 1.0]], 10]),  # a key that is no string
    msgpack.packb([1, [["k", 1, 1, "nan"]], 10]),
    msgpack.packb([1, [["k", -1, 1, 1.0]], 10]),
    msgpack.packb([1, [], True]),
    msgpack.packb([1, [["k", 1, 1, 1.0]] * (wire.DEFAULT_LIMITS.max_records + 1), 10]),
])
def test_ack_requests_of_the_wrong_types_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="malformed ack request"):
        parse_request(payload)
