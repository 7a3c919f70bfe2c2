"""One run at a time in a folder: a lock file holding the holder's PID, host and start time.

The lock itself is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on
``<folder>/.nuclei.lock``: it is released when the holder ends, however it ends (SIGKILL, a
crash), so a lock file left behind is stale by construction and is taken over with a note. The
PID in the file names the holder in the messages.

Must not: know what the folder holds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.errors import NucleiError

#: Name of the lock file in a locked folder.
LOCK_NAME = ".nuclei.lock"
#: Seconds between two tries while waiting for a lock.
POLL_SECONDS = 0.5


def _try_lock(fd: int) -> bool:
    """Take the OS lock on an open file without blocking; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    """'PID 123 on host, since 12:00' from a lock file (what it holds, if unreadable)."""
    try:
        pid, host, since = path.read_text().split("\t")[:3]
    except (OSError, ValueError):
        return "another process"
    return f"PID {pid} on {host}, since {since.strip()}"


def _acquire(path: Path) -> tuple[int | None, str]:
    """Try once: (open locked file descriptor, '') or (None, who holds it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            os.close(fd)
            return None, _holder(path)
        try:  # the holder may have removed the file between our open and our lock: retry then
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None, ""
    except BaseException:
        os.close(fd)
        raise
    return fd, ""


@contextlib.contextmanager
def folder_lock(folder: str | Path, wait: bool = False, what: str = "nuclei",
                note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block (one ``what`` run at a time in it).

    Parameters
    ----------
    folder : str or Path
        An existing, writable folder.
    wait : bool
        When another process holds the lock: wait for it (saying so once through ``note``)
        instead of refusing.
    what : str
        The command, for the messages.
    note : callable, optional
        Called with one-line messages (waiting; a stale lock taken over); default: stderr.

    Raises
    ------
    NucleiError
        The folder is locked by another process and ``wait`` is False (one line naming the
        folder and the holder).
    """
    note = note or (lambda message: print(f"nuclei: {message}", file=sys.stderr))
    path = Path(folder) / LOCK_NAME
    said = False
    while True:
        try:
            fd, holder = _acquire(path)
        except OSError as exc:  # a file system without locks: go on unprotected, and say so
            note(f"{path}: cannot lock ({exc.strerror or exc}); another run could write here at the same time")
            yield path
            return
        if fd is not None:
            break
        if holder and not wait:
            raise NucleiError(f"{folder}: in use by another {what} run ({holder}); pass --wait to wait "
                              "for it, or choose another output folder")
        if holder and not said:
            note(f"{folder}: in use by another {what} run ({holder}); waiting for it to finish")
            said = True
        time.sleep(POLL_SECONDS if holder else 0)
    try:
        stale = _holder(path) if path.stat().st_size else ""
        if stale:
            note(f"{path}: stale lock of {stale} (no longer running) taken over")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\t{socket.gethostname()}\t{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the lock is released: a waiter re-checks the file it locked
        os.close(fd)
