"""Network namespaces as "hosts" on one machine: a veth pair each, made and removed by the test.

A namespace's only way out is its veth pair to this machine's namespace:
``cut()`` takes this side's end down, so nothing crosses (packets are
dropped, not refused: to the processes inside, the network went silent),
``heal()`` brings it back. ``TcpForwarder`` listens on this side of the pair
and forwards to a server on 127.0.0.1 (the test PostgreSQL listens there
only). Needs root and iproute2's ``ip``; ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading

__all__ = ["Netns", "TcpForwarder", "unavailable"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def unavailable() -> str | None:
    """Why namespaces can't be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"msprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Netns:
    """Namespace ``ms<pid>n<index>`` joined to this one by a veth pair on 10.<a>.<b>.0/24 (test-only)."""

    def __init__(self, index: int) -> None:
        tag = f"{os.getpid() % 100000}n{index}"
        self.name = f"ms{tag}"
        self.link = f"msv{tag}"[:15]
        self.peer = f"msp{tag}"[:15]
        subnet = (os.getpid() % 200) * 8 + index
        self.host_addr = f"10.{200 + subnet // 256 % 50}.{subnet % 256}.1"
        self.ns_addr = self.host_addr[:-1] + "2"

    def create(self) -> Netns:
        self.remove()  # what a killed run left behind
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.link, "type", "veth", "peer", "name", self.peer)
            _ip("link", "set", self.peer, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/24", "dev", self.link)
            _ip("link", "set", self.link, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/24", "dev", self.peer)
            _ip("-n", self.name, "link", "set", self.peer, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def prefix(self) -> list[str]:
        """Run a command inside: ``[*ns.prefix(), argv...]`` (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")

    def remove(self) -> None:
        _ip("link", "del", self.link, check=False)
        _ip("netns", "del", self.name, check=False)


class TcpForwarder:
    """Accepts on ``(host, port)`` and forwards each connection to ``target``, in threads of this process."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self.address = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="ms-test-forward", daemon=True)

    def start(self) -> TcpForwarder:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()
