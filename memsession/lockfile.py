"""Lock files that their holder removes when it lets go, without ever letting two holders in.

A lock file is what keeps a second hub out of a runtime dir (``hub.lock``)
and a second store off a JSON file (``.<name>.lock``): ``flock`` on it,
exclusive and non-blocking. Leaving the file behind after a clean stop is
untidy; removing it naively is a race:

1. A holds the lock on the file (inode 1); B opens the same name (inode 1)
   and is about to ``flock`` it;
2. A removes the name and lets go; B's ``flock`` of inode 1 now succeeds;
3. C opens the name, creates inode 2 and locks it: B and C both "hold" it.

Two rules close it. The holder removes the name *while it still holds the
lock* (``release``: unlink, then close), and a lock counts only if, once
taken, the name still names the file locked (``acquire`` compares
``(st_dev, st_ino)`` and tries again otherwise). B's lock in step 2 is then
on a file the name no longer reaches: B tries again, and C and B race for
one file, which ``flock`` settles. A holder killed outright (SIGKILL) leaves
its file; nobody holds it, so the next one locks it and goes on.

Both sides must follow these rules: a process of an older release (which
closed without removing) is still kept out by the lock it finds, but it may
itself take the lock on a file a newer holder was removing.
"""

from __future__ import annotations

import logging
import os

__all__ = ["acquire", "release"]

log = logging.getLogger("memsession.lockfile")

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _same_file(fd: int, name: str, dir_fd: int | None) -> bool:
    try:
        linked = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (linked.st_dev, linked.st_ino) == (held.st_dev, held.st_ino)


def acquire(name: str, *, dir_fd: int | None = None) -> int | None:
    """The descriptor of the lock file ``name`` (made mode 0600 if missing), locked; None if another holds it.

    ``dir_fd``: the directory ``name`` is in (a descriptor checked beforehand,
    as the hub's runtime dir is). Other ``OSError`` s (no permission, a
    symlink at ``name``) are raised for the caller to translate.
    """
    import fcntl

    while True:
        fd = os.open(name, _FLAGS, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, name, dir_fd):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file its last holder removed meanwhile: take the one the name names now


def release(name: str, fd: int, *, dir_fd: int | None = None) -> None:
    """Remove the lock file ``name``, then let go of it: in that order (see the module docstring)."""
    try:
        if _same_file(fd, name, dir_fd):  # what the name names is ours while we hold it; checked all the same
            os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:  # the lock still goes; the next holder takes over the file left
        log.warning("could not remove the lock file %s: %s", name, exc)
    finally:
        os.close(fd)
