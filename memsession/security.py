"""CURVE keys for tcp endpoints: generation, loading, and socket setup.

A keys directory holds one side's key pair and the other side's public keys::

    keys/                        (mode 0700)
      server.key  server.key_secret      the hub's pair (hub side)
      client.key  client.key_secret      a worker's pair (worker side)
      clients/    *.key                  public keys the hub accepts

``memsession keys DIR`` creates all of that for a single-tenant deployment
(one client pair shared by all workers); copy ``server.key`` and
``client.key_secret`` to the workers' hosts. Secret files never sit in the
folder of allowed keys.

Any tcp endpoint makes CURVE mandatory for every socket of the hub or the
bus; ``insecure=True`` opts out and logs a warning. Missing or unreadable keys
are a ``ConfigError`` at start, never a silent downgrade.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

__all__ = ["CurveClient", "CurveServer", "client_policy", "generate_keys", "server_policy"]

log = logging.getLogger("memsession.security")


def _load(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError("keys", path, f"cannot read key file: {exc}") from exc
    if secret and not secret_key:
        raise ConfigError("keys", path, "holds no secret key")
    return public, secret_key


def generate_keys(directory: str, *, overwrite: bool = False) -> dict[str, str]:
    """Create the server pair, a client pair, and ``clients/client.key``; return their paths."""
    import zmq.auth

    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    clients = os.path.join(directory, "clients")
    os.makedirs(clients, mode=0o700, exist_ok=True)
    paths = {}
    for name in ("server", "client"):
        secret = os.path.join(directory, f"{name}.key_secret")
        if os.path.exists(secret) and not overwrite:
            raise ConfigError("keys", secret, "exists; pass overwrite to replace it")
        public_path, secret_path = zmq.auth.create_certificates(directory, name)
        os.chmod(secret_path, 0o600)
        paths[name] = public_path
        paths[f"{name}_secret"] = secret_path
    allowed = os.path.join(clients, "client.key")
    with open(paths["client"], "rb") as src, open(allowed, "wb") as dst:
        dst.write(src.read())
    paths["allowed"] = allowed
    return paths


def _tcp(endpoints: Iterable[str]) -> bool:
    return any(e.startswith("tcp://") for e in endpoints)


class CurveServer:
    """The hub's side: its secret key, and the public keys it lets in."""

    def __init__(self, directory: str) -> None:
        self.public, self.secret = _load(os.path.join(directory, "server.key_secret"), secret=True)
        clients = os.path.join(directory, "clients")
        if not os.path.isdir(clients):
            raise ConfigError("keys", clients, "missing folder of allowed client keys")
        self.allowed = {self.public}  # the hub's own publisher joins its proxy over the same mechanism
        for name in sorted(os.listdir(clients)):
            if name.endswith(".key"):
                self.allowed.add(_load(os.path.join(clients, name), secret=False)[0])
        if len(self.allowed) == 1:
            raise ConfigError("keys", clients, "no *.key client public keys")

    def server(self, socket: Any) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def client(self, socket: Any) -> None:
        """The hub's internal publisher authenticates with the hub's own pair."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.public

    def start_authenticator(self, ctx: Any) -> Any:
        from zmq.auth.thread import ThreadAuthenticator

        allowed = self.allowed

        class _Keys:
            def callback(self, domain: str, key: bytes) -> bool:
                ok = key in allowed
                if not ok:
                    log.warning("refused a CURVE client with an unknown key")
                return ok

        auth = ThreadAuthenticator(ctx, log=logging.getLogger("memsession.security.zap"))
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_Keys())
        return auth


class CurveClient:
    """A worker's side: its key pair and the hub's public key."""

    def __init__(self, directory: str) -> None:
        self.public, self.secret = _load(os.path.join(directory, "client.key_secret"), secret=True)
        self.server_public = _load(os.path.join(directory, "server.key"), secret=False)[0]

    def client(self, socket: Any) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server_public


def server_policy(config: Any, endpoints: Iterable[str]) -> CurveServer | None:
    """CURVE for a hub when any endpoint is tcp; None for ipc/inproc or an explicit opt-out."""
    if not _tcp(endpoints):
        return None
    if config.keys:
        return CurveServer(config.keys)
    if config.insecure:
        log.warning("hub listening on tcp WITHOUT encryption or authentication (insecure=True)")
        return None
    raise ConfigError("keys", None, "tcp endpoints need CURVE keys (see `memsession keys`) or insecure=True")


def client_policy(config: Any, endpoints: Iterable[str]) -> CurveClient | None:
    """CURVE for a bus client when any endpoint is tcp."""
    if not _tcp(endpoints):
        return None
    if config.keys:
        return CurveClient(config.keys)
    if config.insecure:
        log.warning("bus using tcp WITHOUT encryption or authentication (insecure=True)")
        return None
    raise ConfigError("keys", None, "tcp endpoints need CURVE keys (see `memsession keys`) or insecure=True")
