"""Opening the PostgreSQL adapter's connection pool, with a refused login told apart from an outage.

A pool hides why it can't connect: its workers retry in the background and
``open(wait=True)`` only ever says it timed out, so a wrong password used to
read "not reachable within 10 s". ``open_pool`` therefore connects once
itself first:

- a login the server refuses (wrong password, unknown role, no ``pg_hba.conf``
  entry, no password given) is permanent: ``StoreError`` with ``op="connect"``
  and a message saying authentication failed, at once, without retries. It is
  not ``StoreUnavailable``, which promises that retrying may help (the CouchDB
  adapter treats its 401 the same way);
- anything else (connection refused, a timeout) may pass: the pool retries
  until ``connect_timeout`` and then raises ``StoreUnavailable`` naming the
  last error.

libpq reports a failed login without a SQLSTATE (psycopg 3.3 gives
``sqlstate`` None), so the server's message is matched as well as the
SQLSTATE classes 28000/28P01 when they are given; a server whose messages are
translated is still quoted in the error, only reported as unreachable.
Messages quote the server's text, which names the user and host but never
the password.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from memsession.errors import StoreError, StoreUnavailable

__all__ = ["AUTH_SQLSTATES", "DEAD_PEER", "dead_peer_options", "is_auth_failure", "open_pool"]

log = logging.getLogger("memsession.persist")

_NAME = "postgres"
#: libpq options that find a server gone silent (a cut link, a blackholed route) within seconds, not the
#: kernel's 15 minutes of retransmissions: a query waits at most ``tcp_user_timeout`` ms for its bytes
#: to be acknowledged, and an idle connection is probed every few seconds.
DEAD_PEER = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
             "tcp_user_timeout": 10_000}
#: Seconds a pool keeps retrying one lost connection (its delay doubling from 1 s) before it gives that
#: attempt up; the next read or write that waits starts another at once. A database back after a long
#: outage is then used within a couple of seconds, not after a backoff grown to minutes.
RECONNECT_ATTEMPT = 5.0
#: invalid_authorization_specification, invalid_password.
AUTH_SQLSTATES = frozenset({"28000", "28P01"})
#: What PostgreSQL (and libpq) say, in English, when a login is refused: any method's
#: "... authentication failed", no or a rejecting pg_hba.conf line, no password given, no such role.
_AUTH_MESSAGE = re.compile(
    r'authentication failed|no pg_hba\.conf entry|pg_hba\.conf rejects connection|no password supplied'
    r'|role ".*" does not exist'
)


def is_auth_failure(exc: psycopg.Error) -> bool:
    """Whether ``exc`` is the server refusing this login, which no retry can fix."""
    if exc.sqlstate in AUTH_SQLSTATES:
        return True
    pgconn = getattr(exc, "pgconn", None)
    if pgconn is not None and pgconn.needs_password and not pgconn.used_password:
        return True
    return _AUTH_MESSAGE.search(str(exc)) is not None


def _probe(conninfo: str, timeout: float) -> psycopg.OperationalError | None:
    """Connect once and disconnect: the error, or None if the server let us in."""
    try:
        # libpq takes whole seconds and treats anything below 2 as 2.
        with psycopg.connect(conninfo, connect_timeout=max(2, math.ceil(timeout))):
            return None
    except psycopg.OperationalError as exc:
        return exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _refused(exc: psycopg.OperationalError) -> StoreError:
    return StoreError(f"PostgreSQL authentication failed: {_one_line(exc)}", store=_NAME, op="connect")


def dead_peer_options(conninfo: str) -> dict[str, Any]:
    """``DEAD_PEER``'s options that ``conninfo`` does not set itself (what the user set wins)."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        given = {}  # libpq says what is wrong with it at connect
    return {name: value for name, value in DEAD_PEER.items() if name not in given}


def open_pool(
    conninfo: str,
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    connect_timeout: float,
    configure: Callable[[psycopg.Connection[Any]], None] | None,
) -> ConnectionPool:
    """An open pool of autocommit connections, or ``StoreError`` (login refused) / ``StoreUnavailable``."""
    began = time.monotonic()
    failed = _probe(conninfo, connect_timeout)
    if failed is not None and is_auth_failure(failed):
        raise _refused(failed) from failed
    pool = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **dead_peer_options(conninfo)},
        configure=configure,
        timeout=timeout,
        reconnect_timeout=RECONNECT_ATTEMPT,
        name="memsession",
        open=False,
    )
    try:
        pool.open(wait=True, timeout=max(0.1, connect_timeout - (time.monotonic() - began)))
    except PoolTimeout as exc:
        pool.close()
        # The server may have come up meanwhile and refused the login: ask it once more why.
        failed = _probe(conninfo, 2.0) or failed
        if failed is not None and is_auth_failure(failed):
            raise _refused(failed) from failed
        reason = f": {_one_line(failed)}" if failed is not None else ""
        raise StoreUnavailable(
            f"PostgreSQL not reachable within {connect_timeout}s{reason}", store=_NAME, op="connect"
        ) from exc
    if failed is not None:
        log.info("PostgreSQL answered after a failed first connection (%s)", _one_line(failed))
    return pool
