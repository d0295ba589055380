"""Lock files removed by their holder (memsession.lockfile)."""

from __future__ import annotations

import os
from pathlib import Path

from memsession import lockfile


def test_one_holder_at_a_time_and_the_file_goes_with_the_lock(tmp_path: Path) -> None:
    name = str(tmp_path / "x.lock")
    held = lockfile.acquire(name)
    assert held is not None and os.path.exists(name)
    assert lockfile.acquire(name) is None  # another open file: refused, even in this process
    lockfile.release(name, held)
    assert not os.path.exists(name)
    again = lockfile.acquire(name)
    assert again is not None
    lockfile.release(name, again)


def test_a_lock_taken_on_a_file_its_holder_removed_is_not_the_lock(tmp_path: Path) -> None:
    # The race the module closes: B opened the file, A removed it and let go, then B locked it.
    import fcntl

    name = str(tmp_path / "x.lock")
    a = lockfile.acquire(name)
    assert a is not None
    b = os.open(name, os.O_RDWR)
    lockfile.release(name, a)
    fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: on a file no name reaches any more
    try:
        c = lockfile.acquire(name)  # so a new holder is not kept out by it...
        assert c is not None
        assert lockfile.acquire(name) is None  # ...and is the only one
        lockfile.release(name, c)
    finally:
        os.close(b)


def test_a_file_left_by_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    name = tmp_path / "x.lock"
    name.write_bytes(b"")
    held = lockfile.acquire(str(name))
    assert held is not None
    lockfile.release(str(name), held)
    assert not name.exists()


def test_dir_fd_names_the_directory(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        held = lockfile.acquire("hub.lock", dir_fd=dir_fd)
        assert held is not None and os.listdir(tmp_path) == ["hub.lock"]
        lockfile.release("hub.lock", held, dir_fd=dir_fd)
        assert os.listdir(tmp_path) == []
    finally:
        os.close(dir_fd)
