"""Writing a file whole or not at all: the one atomic writer behind the lease table, the hook
file, the config cache and every file `vfalloc host` writes under its root.

Owns the sequence: a temp file beside the target (O_EXCL, O_NOFOLLOW: never through a planted
link), every byte written (write(2) may write less than asked on a full disk or past a file size
limit), fsync, the mode set, rename(2) over the target (atomic within one filesystem) and an
fsync of the directory so the rename survives a crash. A reader therefore sees the old or the new
file, never part of one. Must not: know what the files hold, or turn OSError into vfalloc errors
(the caller names the file and the fix).
"""

from __future__ import annotations

import os
from contextlib import suppress


def temp_path(path: str, prefix: str = ".") -> str:
    """Where the new content of `path` is written before the rename."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{prefix}{name}.{os.getpid()}.tmp")


def write_atomic(path: str, data: bytes, mode: int, *, prefix: str = ".", sync: bool = True) -> None:
    """Replace `path` by `data` (file mode `mode`); raises OSError and leaves no temp file behind.
    `sync=False` skips both fsyncs, for a file that is only a cache of something else."""
    tmp = temp_path(path, prefix)
    with suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a writer of the same pid that died before its rename
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
            os.fchmod(fd, mode)  # the umask narrowed what os.open set
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _sync_dir(os.path.dirname(path) or ".")


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
