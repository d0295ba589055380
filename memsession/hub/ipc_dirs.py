"""What a hub owns in its ipc directories: ``hub.lock`` in each, and the socket files it binds there.

Binding an ipc endpoint silently steals a live hub's socket (libzmq removes
the file first), so a hub holds ``hub.lock`` in every directory it binds in
from before the first bind. libzmq leaves the socket files behind when
sockets close, so on the way out the holder removes them and then the lock
file, still holding the lock, then lets go (``memsession.lockfile``: that
order is what keeps two hubs from ever running in one directory). Only the
lock holder binds in a directory, so the files it removes are its own, or
stale ones of a hub killed before it (which its bind replaced).

The removals go through the directory descriptors checked at the start
(``runtime_dir``), and only while each still holds the directory it held
then: a runtime dir made again meanwhile (``runtime_dir`` lets a process
follow that) may have another hub's files in it, under another lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from .. import lockfile
from ..errors import BusError
from .runtime_dir import ipc_path, open_private_dir

__all__ = ["LOCK_NAME", "IpcDirs"]

log = logging.getLogger("memsession.hub")

LOCK_NAME = "hub.lock"


class IpcDirs:
    """``hub.lock`` held in the directory of every ipc endpoint given (``BusError`` if another hub holds one).

    ``release()`` removes those endpoints' socket files and the lock files,
    then lets go. Other transports are ignored.
    """

    def __init__(self, endpoints: Iterable[str]) -> None:
        paths = [path for path in map(ipc_path, endpoints) if path is not None]
        #: ``(directory descriptor, lock descriptor)`` of each lock held.
        self._locks: list[tuple[int, int]] = []
        #: ``(directory descriptor, file name)`` of each socket file to remove.
        self._sockets: list[tuple[int, str]] = []
        #: What each directory descriptor held when the lock was taken.
        self._identity: dict[int, tuple[int, int]] = {}
        try:
            for directory in sorted({os.path.dirname(path) or "." for path in paths}):
                # Inside the directory checked (and held) for the sockets, whatever its path names now.
                dir_fd = open_private_dir(directory)
                self._identity[dir_fd] = _identity(dir_fd)
                fd = lockfile.acquire(LOCK_NAME, dir_fd=dir_fd)
                if fd is None:
                    raise BusError(f"another hub is running in {directory}", endpoint=paths[0])
                self._locks.append((dir_fd, fd))
        except BaseException:
            self._let_go()  # what was locked here is ours to remove; nothing was bound yet
            raise
        self._sockets = [(open_private_dir(os.path.dirname(path) or "."), os.path.basename(path)) for path in paths]

    def release(self) -> None:
        """Remove the socket files, then the lock files, then let go. Idempotent."""
        sockets, self._sockets = self._sockets, []
        for dir_fd, name in sockets:
            if not self._same_dir(dir_fd):
                continue
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # never bound (a failed start), or removed by hand
            except OSError as exc:
                log.warning("could not remove the socket file %s: %s", name, exc)
        self._let_go()

    def _same_dir(self, dir_fd: int) -> bool:
        if _identity(dir_fd) == self._identity.get(dir_fd):
            return True
        log.warning("the runtime dir was made again while this hub ran: its files there are left alone")
        return False

    def _let_go(self) -> None:
        locks, self._locks = self._locks, []
        for dir_fd, fd in locks:
            if self._same_dir(dir_fd):
                lockfile.release(LOCK_NAME, fd, dir_fd=dir_fd)
            else:
                os.close(fd)  # the lock on the directory we held goes; its file went with that directory


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
