"""The runtime directory of the ipc sockets: no symlink followed, checked through its descriptor, never swapped.

The attack these tests play: another local user plants a symlink at the
runtime dir's path (by default ``<tmp>/memsession-<uid>``, in a directory
everyone can write) pointing at a 0700 directory the victim owns, so an owner
check that follows links passes; then swaps the link to a directory of theirs
before a socket is bound or connected, and receives the victim's session
writes. Here the swap is played with two directories of our own (a test can
own no other), which is the harder case: every ownership check passes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from memsession import SessionCache, session_key
from memsession.bus import ZmqBus
from memsession.errors import ConfigError
from memsession.hub import Hub, HubConfig, default_runtime_dir, query_snapshot
from memsession.hub.runtime_dir import open_private_dir, socket_address
from memsession.service.cli import main
from tests.sidecars import wait_until
from tests.webservers import Process

FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 2.0}


def private_dir(path: Path) -> Path:
    path.mkdir()
    os.chmod(path, 0o700)
    return path


def swap_for_a_symlink(runtime_dir: Path, target: Path) -> Path:
    """Rename the checked directory away and put a symlink to ``target`` at its path; return the new name."""
    moved = runtime_dir.with_name(runtime_dir.name + "-moved")
    os.rename(runtime_dir, moved)
    os.symlink(target, runtime_dir)
    return moved


def status(runtime_dir: str) -> str:
    """``memsession status --json`` run in a process of its own."""
    return subprocess.run([sys.executable, "-m", "memsession", "status", "--runtime-dir", runtime_dir, "--json",
                           "--timeout", "1"], capture_output=True, text=True, timeout=30, check=False).stdout


# -- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["own-0700-dir", "missing", "tmp"])
def test_a_symlink_at_the_runtime_path_is_refused(tmp_path: Path, target: str) -> None:
    pointed = {"own-0700-dir": private_dir(tmp_path / "mine"), "missing": tmp_path / "nothing-here",
               "tmp": Path(tempfile.gettempdir())}[target]
    link = tmp_path / "rt"
    os.symlink(pointed, link)
    with pytest.raises(ConfigError, match="symbolic link"):
        HubConfig(runtime_dir=str(link)).endpoints()
    with pytest.raises(ConfigError, match="symbolic link"):
        ZmqBus(runtime_dir=str(link))
    assert os.path.islink(link)  # refused as found: nothing created, nothing followed


def test_a_symlink_planted_at_the_default_runtime_path_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the shared <tmp> of the attack
    default = default_runtime_dir()
    assert default == str(tmp_path / f"memsession-{os.getuid()}")
    os.symlink(private_dir(tmp_path / "victims-own"), default)
    with pytest.raises(ConfigError, match="symbolic link"):
        HubConfig().endpoints()
    with pytest.raises(ConfigError, match="symbolic link"):
        ZmqBus()


def test_explicit_ipc_endpoints_get_the_same_check(tmp_path: Path) -> None:
    link = tmp_path / "rt"
    os.symlink(private_dir(tmp_path / "mine"), link)
    endpoints = {name: f"ipc://{link}/{name}.sock" for name in ("publish", "subscribe", "requests")}
    with pytest.raises(ConfigError, match="symbolic link"):
        HubConfig(**endpoints).endpoints()
    with pytest.raises(ConfigError, match="symbolic link"):
        ZmqBus(**endpoints)
    good = private_dir(tmp_path / "good")
    ZmqBus(**{name: f"ipc://{good}/{name}.sock" for name in endpoints}).close()


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o770, 0o777, 0o711])
def test_a_directory_group_or_others_can_enter_is_refused(tmp_path: Path, mode: int) -> None:
    shared = private_dir(tmp_path / "rt")
    os.chmod(shared, mode)
    with pytest.raises(ConfigError, match="group or others"):
        HubConfig(runtime_dir=str(shared)).endpoints()


def test_something_else_than_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rt").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        HubConfig(runtime_dir=str(tmp_path / "rt")).endpoints()


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_parent_others_can_change_is_refused_unless_sticky(tmp_path: Path, mode: int) -> None:
    parent = private_dir(tmp_path / "parent")
    os.chmod(parent, mode)
    with pytest.raises(ConfigError, match="parent"):
        HubConfig(runtime_dir=str(parent / "rt")).endpoints()
    assert not (parent / "rt").exists()
    os.chmod(parent, mode | stat.S_ISVTX)  # sticky, as /tmp: no one else may rename our entry
    HubConfig(runtime_dir=str(parent / "rt")).endpoints()
    assert stat.S_IMODE(os.lstat(parent / "rt").st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_or_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = private_dir(tmp_path / "theirs")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by another user"):
        HubConfig(runtime_dir=str(theirs)).endpoints()
    with pytest.raises(ConfigError, match="parent"):
        HubConfig(runtime_dir=str(theirs / "rt")).endpoints()


# -- a swap after the check redirects nothing (real sockets) ---------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(runtime dir, another private dir of ours)``."""
    yield tmp_path / "rt", private_dir(tmp_path / "elsewhere")


@pytest.mark.zmq
def test_a_socket_bound_after_a_swap_lands_in_the_directory_checked(dirs: tuple[Path, Path]) -> None:
    import zmq

    runtime_dir, elsewhere = dirs
    address = socket_address(f"ipc://{runtime_dir}/pub.sock")  # checks (and makes) the directory
    moved = swap_for_a_symlink(runtime_dir, elsewhere)
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind(address)
        push.connect(address)
        push.send(b"hello")
        assert pull.poll(5000) and pull.recv() == b"hello"
        assert os.listdir(moved) == ["pub.sock"] and os.listdir(elsewhere) == []
    finally:
        pull.close(linger=0)
        push.close(linger=0)
        ctx.term()


@pytest.mark.zmq
def test_after_a_swap_a_new_hub_or_worker_is_refused(dirs: tuple[Path, Path]) -> None:
    runtime_dir, elsewhere = dirs
    HubConfig(runtime_dir=str(runtime_dir)).endpoints()
    swap_for_a_symlink(runtime_dir, elsewhere)
    with pytest.raises(ConfigError, match="symbolic link"):
        Hub(runtime_dir=str(runtime_dir)).start()
    with pytest.raises(ConfigError, match="symbolic link"):
        ZmqBus(runtime_dir=str(runtime_dir))
    assert os.listdir(elsewhere) == []


@pytest.mark.zmq
def test_a_worker_reconnecting_after_a_swap_reaches_the_directory_checked_not_the_new_target(
    dirs: tuple[Path, Path],
) -> None:
    import zmq

    runtime_dir, elsewhere = dirs
    rt = str(runtime_dir)
    hub = Hub(runtime_dir=rt, heartbeat=0.2).start()
    ctx = zmq.Context()
    sockets = []
    try:
        with SessionCache(bus=ZmqBus(runtime_dir=rt, **FAST_BUS)) as worker:
            assert worker.bus.wait_joined(5)
            moved = swap_for_a_symlink(runtime_dir, elsewhere)
            hub.stop()  # the worker's connections drop; ZeroMQ reconnects by the address it was given

            def listener(directory: Path) -> zmq.Socket:
                sock = ctx.socket(zmq.XSUB)
                sock.bind(f"ipc://{directory}/pub.sock")
                sock.send(b"\x01")  # subscribe to everything the worker publishes
                sockets.append(sock)
                return sock

            impostor = listener(elsewhere)  # where the planted link now points
            checked = listener(moved)  # the directory the worker checked, under its new name
            worker.set("k" * 43, {"user": "ada"})
            assert checked.poll(10_000), "the worker never reconnected to the directory it checked"
            assert not impostor.poll(0), "the worker published into the directory the link points to"
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
        hub.stop()


@pytest.mark.zmq
@pytest.mark.timeout(60)
def test_a_runtime_dir_made_again_by_its_owner_is_followed_by_a_running_worker(tmp_path: Path) -> None:
    # systemd's RuntimeDirectory= removes the directory when the sidecar stops and makes it
    # again when it starts: a worker that checked the old one must reach the new one.
    import shutil

    rt = str(tmp_path / "rt")

    def hub_process() -> Process:
        proc = Process([sys.executable, "-m", "memsession", "hub", "--runtime-dir", rt, "--heartbeat", "0.2",
                        "--log-level", "WARNING"], name="hub").start()
        wait_until(lambda: os.path.exists(os.path.join(rt, "req.sock")) or proc.check_alive(), 15, "the hub's sockets")
        return proc

    first = hub_process()
    try:
        with SessionCache(bus=ZmqBus(runtime_dir=rt, **FAST_BUS)) as worker:
            assert worker.bus.wait_joined(5)
            worker.set("a" * 43, {"user": "ada"})
            first.stop()
            shutil.rmtree(rt)
            os.mkdir(rt, 0o700)
            second = hub_process()
            try:
                # Asked from another process: here, asking would check the directory for the worker.
                # The worker alone must notice the hub's silence, check the new directory and move
                # its sockets there; it then hands the new hub what it holds.
                wait_until(lambda: '"sessions": 1' in status(rt), 30, "the worker to hand its session over")
                assert [r.key for r in query_snapshot(f"ipc://{rt}/req.sock")] == [session_key("a" * 43)]
            finally:
                second.stop()
    finally:
        first.stop()


# -- the held descriptor ------------------------------------------------------------------------


def test_a_held_descriptor_closed_elsewhere_is_never_written_over(tmp_path: Path) -> None:
    rt = str(tmp_path / "rt")
    held = open_private_dir(rt)
    os.close(held)  # as code that closes every descriptor it did not open would
    unrelated = os.open(tmp_path / "unrelated", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        again = open_private_dir(rt)
        assert again != unrelated
        assert stat.S_ISREG(os.fstat(unrelated).st_mode)  # still the file it was, not the directory
        assert stat.S_ISDIR(os.fstat(again).st_mode)
    finally:
        os.close(unrelated)


def test_without_proc_self_fd_the_checked_path_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memsession.hub import runtime_dir

    monkeypatch.setattr(runtime_dir, "_leads_back", lambda fd: False)  # as on a system without /proc
    endpoint = f"ipc://{tmp_path}/rt/pub.sock"
    assert socket_address(endpoint) == endpoint
    link = tmp_path / "link"
    os.symlink(tmp_path / "rt", link)
    with pytest.raises(ConfigError, match="symbolic link"):  # the checks stand without the pinning
        socket_address(f"ipc://{link}/pub.sock")


# -- what is shown and handed on keeps the path -----------------------------------------------------


@pytest.mark.zmq
def test_endpoints_and_status_show_the_path_never_the_descriptor(tmp_path: Path, capsys) -> None:
    rt = str(tmp_path / "rt")
    with Hub(runtime_dir=rt) as hub:
        assert hub.endpoints == tuple(f"ipc://{rt}/{name}.sock" for name in ("pub", "sub", "req"))
        assert main(["status", "--runtime-dir", rt]) == 0
    out = capsys.readouterr().out
    assert f"hub at ipc://{rt}/req.sock" in out and "/proc/" not in out


@pytest.mark.zmq
def test_a_process_started_with_exec_checks_and_opens_the_directory_itself(tmp_path: Path) -> None:
    # The descriptor is close-on-exec: a child is given the path and opens its own (status runs one).
    rt = str(tmp_path / "rt")
    with Hub(runtime_dir=rt):
        assert '"sessions": 0' in status(rt)
