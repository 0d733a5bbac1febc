"""The one way vfalloc takes a lock: an exclusive flock(2) on a lock file of its own, for the
lease table (state.py), the FDB ledger (fdb/ledger.py), the hook's counts (metrics/counts.py)
and the metrics refresher (metrics/textfile.py).

What a lock taken here guarantees:
- The lock file is opened O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, created 0600,
  and must be a regular file: a symbolic link fails the open (ELOOP), a FIFO or device planted
  there is refused (NotRegularFile) without waiting in open(2) for a writer.
- A free lock costs one flock(2) and imports nothing (`take_now`, and the first step of `take`).
- A held lock is waited for with filelock (`wait`), polling every 5 ms, for at most `timeout`
  seconds. filelock's UnixFileLock takes this same lock, flock(LOCK_EX) on the same file, and
  leaves the file in place on release so that every process locks the same inode (filelock
  3.x and 4.x, _unix.py): both ways of taking it exclude each other. Importing filelock costs
  more than a hook's whole run, so it is imported only to wait.
- A timeout (LockTimeout) means another process held the lock for the whole wait; nothing was
  changed, and the caller decides whether to wait again or to give up.
- The lock is let go by `release()` (closing the descriptor, or filelock's release), also when
  the process dies.

Must not: know what a lock protects, or turn OSError into vfalloc errors (callers name the file
and the fix).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

POLL_S = 0.005  # look again every 5 ms (filelock's default: 50)


class NotRegularFile(OSError):
    """The lock file is a FIFO, a device, a directory: anything but a regular file."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EINVAL, "not a regular file", path)


class LockTimeout(TimeoutError):
    """Another process held the lock for the whole wait."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"locked by another process for more than {timeout:g} s", path)
        self.timeout = timeout


class Held:
    """A lock taken with one flock(2), held through its descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        os.close(self.fd)


TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from typing import Protocol

    class Releasable(Protocol):
        def release(self) -> object: ...


def open_own_file(path: str) -> int:
    """The descriptor of a file of vfalloc's own, opened read-write and created 0600 (a lock file;
    the metrics refresher's mark), refused unless it is a regular file: never through a link, never
    waiting in open(2) on a FIFO."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(path)
    except OSError:
        os.close(fd)
        raise
    return fd


def take_now(path: str) -> Held | None:
    """The lock if it is free now, else None; one flock(2)."""
    fd = open_own_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return Held(fd)


def wait(path: str, timeout: float) -> Releasable:
    """The lock, waited for up to `timeout` seconds with filelock; LockTimeout when it stayed
    held. The file is checked again first: filelock opens it itself, following a link."""
    from filelock import FileLock, Timeout

    os.close(open_own_file(path))
    # No mode=: filelock < 3.10 (Debian 12 ships 3.9) has none; the file exists, created 0600
    # above, and filelock's O_CREAT leaves an existing file's mode alone.
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire(poll_interval=POLL_S)
    except Timeout as exc:
        raise LockTimeout(path, timeout) from exc
    return lock


def take(path: str, timeout: float) -> Releasable:
    """The lock: at once when it is free, else waited for up to `timeout` seconds (LockTimeout)."""
    return take_now(path) or wait(path, timeout)
