"""The private directory the ipc sockets live in: checked through a descriptor, and held.

The threat: another local user plants a symlink at the runtime dir's path
(``<tmp>/memsession-<uid>`` by default, in a directory everyone can write)
pointing to a 0700 directory the victim owns, so a check that follows links
passes, then swaps the link for one to a directory of theirs before a socket
is bound or connected (ZeroMQ resolves an ipc path again at every bind,
connect and reconnect). The workers would publish every session change to
them, and take forged ones.

The checks, each made on an open descriptor rather than on a path that can
change between the check and the use (``open_private_dir``):

1. the parent is opened (its own ancestors resolve as usual: ``/var/run`` ->
   ``/run``) and must belong to us or root, and not be writable by group or
   others unless sticky (``/tmp``): otherwise someone else could rename the
   directory away and put another in its place;
2. the directory is made there (mode 0700) when missing, and opened with
   ``O_NOFOLLOW | O_DIRECTORY`` relative to the parent's descriptor: a
   symlink is refused with a ``ConfigError``, never followed;
3. ``fstat`` of that descriptor: a directory, ours, nothing for group or
   others.

Then the sockets are made inside the directory that was checked, whatever
happens to its path later: the descriptor stays open for the life of the
process and ZeroMQ is given ``ipc:///proc/self/fd/<n>/<name>`` (``socket_address``).
That magic link resolves to the opened directory itself, at bind, at connect
and at every reconnect, and ``/proc/self`` is whichever process resolves it.
The other designs weighed: checking the path again after bind or connect
(too late for every later reconnect); ``fchdir`` to the directory and a
relative path (the working directory is the whole process's, and ZeroMQ's
I/O thread resolves the path whenever it reconnects); Linux abstract sockets
(no permissions at all: any local process may connect); the parent checks
alone (they stop another user in ``/tmp``, but not a swap by whoever can
write an ancestor, and nothing pins a reconnect).

Where ``/proc/self/fd`` does not lead back to the directory (no ``/proc``,
not Linux) the path itself is given to ZeroMQ after the same checks, which
still refuse what another user can plant; what remains is a swap by someone
who may write an ancestor. Logged once.

Processes: a forked child inherits the descriptor, so the same address
means the same directory there. The descriptor is close-on-exec: a process
started with exec (``memsession hub|sidecar|status``, spawned workers) is
handed the path (``--runtime-dir``, ``runtime_dir=``, ``HubConfig``
endpoints) and checks and opens the directory itself. A ``/proc/self/fd``
address is never shown nor handed on: endpoints, logs, ``memsession status``
and the sidecar's ready file keep the path.

The directory made again by its owner (systemd's ``RuntimeDirectory=`` does
so when the sidecar restarts): the next check of the path finds another
directory; if it passes, it replaces the held one under the same descriptor
number (``dup2``), so the sockets already made reconnect into it. Every new
socket's address is such a check, and a bus that hears no hub checks once a
second (``HubAddresses.follow_if``). A path that no longer passes never
replaces the held directory: it is refused for new sockets and logged.

libzmq's bind removes a stale socket file before binding: through the
address, only inside the checked directory, never where a link points.
The address is short (``/proc/self/fd/<n>/pub.sock``), well within the 107
bytes an ipc path may have; the path itself is still held to that limit
(``config.ipc_endpoints``), as the fallback and other tools connect by it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading

from ..errors import BusError, ConfigError

__all__ = ["FOLLOW_EVERY", "HubAddresses", "ensure_private_dir", "find_private_dir", "follow", "ipc_path",
           "open_private_dir", "socket_address"]

log = logging.getLogger("memsession.hub")

#: Seconds between checks of a client's ipc directories while it hears no hub (``HubAddresses``).
FOLLOW_EVERY = 1.0

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: For each directory path checked in this process (inherited by a fork): the descriptor held
#: and the ``(st_dev, st_ino)`` of the directory put there.
_held: dict[str, tuple[int, tuple[int, int]]] = {}
#: Descriptors through which ``/proc/self/fd`` leads back to the directory.
_anchored: set[int] = set()
_lock = threading.Lock()
_told_unanchored = False
#: The last refusal ``follow`` logged for each directory, so a standing one is logged once.
_follow_refusals: dict[str, str] = {}


def _reset_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a fork while another thread held it must not leave it held


os.register_at_fork(after_in_child=_reset_lock_in_child)


def ipc_path(endpoint: str) -> str | None:
    """The file an ``ipc://`` endpoint names; None for other transports and for abstract or wildcard ones."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    if not path or path.startswith("@") or path == "*":
        return None  # Linux's abstract namespace has no directory; "*" is libzmq's own temporary one
    return path


def _refuse(path: str, reason: str) -> ConfigError:
    return ConfigError("runtime_dir", path, reason)


def _check_parent(path: str, parent: str, fd: int) -> None:
    st = os.fstat(fd)
    if st.st_uid not in (0, os.getuid()):
        raise _refuse(path, f"its parent {parent} is owned by another user (uid {st.st_uid}), who could put "
                            "another directory in its place")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise _refuse(path, f"its parent {parent} is writable by group or others and not sticky: they could "
                            "put another directory in its place; choose a parent only you (or root) can change")


def _open_in(path: str, parent_fd: int, name: str, create: bool) -> int | None:
    """The directory ``name`` inside the parent, opened without following a link; None if missing."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except OSError as exc:
            if not isinstance(exc, FileExistsError):  # an existing one is checked below, whatever it is
                raise _refuse(path, f"cannot create: {exc.strerror}") from exc
    try:
        return os.open(name, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        if create:
            raise _refuse(path, "removed while it was being opened") from None
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            try:
                kind = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
            except OSError:
                kind = 0
            if stat.S_ISLNK(kind):
                raise _refuse(path, "is a symbolic link: the runtime dir is never reached through one "
                                    "(someone may have planted it); remove it or choose another runtime_dir") from exc
            raise _refuse(path, "is not a directory") from exc
        raise _refuse(path, f"cannot open: {exc.strerror}") from exc


def _check(path: str, fd: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is not a directory")
    if st.st_uid != os.getuid():
        raise _refuse(path, "owned by another user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise _refuse(path, "must not be accessible to group or others (chmod 700)")


def _open_checked(path: str, create: bool) -> int | None:
    """A new descriptor of the directory at ``path`` that passed every check; None if it is missing."""
    parent, name = os.path.split(path)
    if not name:
        raise _refuse(path, "the root directory is not a private directory")
    if create:
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _refuse(path, f"cannot create its parent: {exc.strerror}") from exc
    try:
        parent_fd = os.open(parent, _OPEN_DIR)
    except FileNotFoundError:
        if create:
            raise _refuse(path, f"its parent {parent} was removed while it was being opened") from None
        return None
    except OSError as exc:
        raise _refuse(path, f"cannot open its parent {parent}: {exc.strerror}") from exc
    try:
        _check_parent(path, parent, parent_fd)
        fd = _open_in(path, parent_fd, name, create)
    finally:
        os.close(parent_fd)
    if fd is not None:
        try:
            _check(path, fd)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _leads_back(fd: int) -> bool:
    """Whether ``/proc/self/fd/<fd>`` resolves to the directory ``fd`` is open on."""
    try:
        through = os.stat(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
    except OSError:
        return False
    return (through.st_dev, through.st_ino) == (st.st_dev, st.st_ino)


def open_private_dir(path: str) -> int:
    """The descriptor held for the checked private directory at ``path``, made mode 0700 if missing.

    Checks the path afresh every time (``ConfigError`` if it fails); a
    different directory that passes replaces the held one under the same
    number. Never close what it returns.
    """
    fd = _hold(path, create=True)
    if fd is None:  # _open_checked makes what is missing, or refuses
        raise _refuse(path, "missing after it was made")
    return fd


def find_private_dir(path: str) -> int | None:
    """As ``open_private_dir``, but None if there is nothing at ``path``: nothing is made."""
    return _hold(path, create=False)


def _hold(path: str, *, create: bool) -> int | None:
    path = os.path.abspath(path)
    fd = _open_checked(path, create)
    if fd is None:
        return None
    st = os.fstat(fd)
    found = st.st_dev, st.st_ino
    with _lock:
        entry = _held.get(path)
        if entry is not None:
            held, identity = entry
            if _identity(held) != identity:
                # Someone closed our descriptor (its number may be another file's now): never write
                # over it; the directory gets a new one, and sockets made before are past saving.
                log.error("the descriptor held for the runtime dir %s was closed elsewhere; using a new one", path)
                entry = None
            elif identity == found:
                os.close(fd)
                return held
        if entry is None:
            _held[path] = (fd, found)
            _anchored.discard(fd)
            if _leads_back(fd):
                _anchored.add(fd)
            return fd
        # The path names another directory than the one held, and it passed: it was made again.
        os.dup2(fd, held)
        os.close(fd)
        _held[path] = (held, found)
    log.info("runtime dir %s was made again; its sockets now use the new one", path)
    return held


def ensure_private_dir(path: str) -> str:
    """Create ``path`` mode 0700, or check that an existing one is ours and private; return ``path``."""
    open_private_dir(path)
    return path


def socket_address(endpoint: str, *, create: bool = True) -> str:
    """What to give ZeroMQ for ``endpoint``: an ipc file inside its checked directory; others unchanged.

    ``create=False`` (a query) makes no directory: ``BusError`` if it is missing.
    """
    global _told_unanchored
    path = ipc_path(endpoint)
    if path is None:
        return endpoint
    directory, name = os.path.split(path)
    fd = open_private_dir(directory or ".") if create else find_private_dir(directory or ".")
    if fd is None:
        raise BusError(f"no hub answered: the directory of {endpoint} does not exist", endpoint=endpoint)
    if fd in _anchored:
        return f"ipc:///proc/self/fd/{fd}/{name}"
    if not _told_unanchored:
        _told_unanchored = True
        log.info("/proc/self/fd does not lead back to %s here: ipc sockets are given its path, checked "
                 "but not pinned", directory)
    return endpoint


def follow(directory: str) -> None:
    """Check ``directory`` again and let the sockets in it follow a new one that passes; never raises.

    For a process whose hub went silent: the directory may have been made
    again with the new hub's sockets in it. A directory that is missing is
    left for later; one that fails a check is logged and not followed.
    """
    try:
        find_private_dir(directory)
    except (ConfigError, OSError) as exc:
        reason = str(exc)
        if _follow_refusals.get(directory) != reason:
            _follow_refusals[directory] = reason
            log.error("not following the runtime dir %s: %s", directory, reason)
    else:
        _follow_refusals.pop(directory, None)


class HubAddresses:
    """What a client's sockets connect to for the hub's three endpoints (``socket_address`` of each).

    ``follow_if`` is for the client's receiving loop: while it hears no hub,
    its ipc directories are checked again (``follow``) once every
    ``FOLLOW_EVERY`` seconds, so a directory made again with a new hub's
    sockets in it is reached; ZeroMQ reconnects by itself.
    """

    def __init__(self, publish: str, subscribe: str, requests: str) -> None:
        endpoints = (publish, subscribe, requests)
        self.publish, self.subscribe, self.requests = (socket_address(e) for e in endpoints)
        self._directories = sorted({os.path.dirname(p) or "." for p in map(ipc_path, endpoints) if p is not None})
        self._next_check = 0.0

    def follow_if(self, no_hub_heard: bool, now: float) -> None:
        """``now`` on the monotonic clock."""
        if not no_hub_heard or not self._directories or now < self._next_check:
            return
        self._next_check = now + FOLLOW_EVERY
        for directory in self._directories:
            follow(directory)
