"""What tomllib made of the config file, kept between runs so the hook need not import it.

The hook is a new process on every libvirt call, and importing tomllib is a large part of what
it costs (docs/performance.md, "What made the difference"). So a run that parsed the
file keeps the result in the runtime directory (VFALLOC_RUN_DIR, default /run/vfalloc, a tmpfs
that empties at boot, vfalloc.rundir), one file per config path. The memo holds the file's exact text and is
used only when the file still holds that very text: it cannot go stale. Only a config that
vfalloc accepted is kept, so a wrong one is parsed, and refused, every time.

Owns that one file. Never an error and never a default: a memo that is missing, unreadable,
not this user's, writable by others, damaged, of another text or in a runtime directory that is
not private (rundir.problem) is not used, and the file is parsed; one that cannot be written is
not written. It never follows a symlink.
"""

from __future__ import annotations

import binascii
import json
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from typing import Any

from . import rundir
from .atomicfile import write_atomic

VERSION = 1


def memo_path(run_dir: str, config_path: str) -> str:
    key = binascii.crc32(os.path.abspath(config_path).encode())
    return f"{run_dir}/config-{key:08x}.json"


def recall(run_dir: str, config_path: str, text: str) -> dict[str, Any] | None:
    """The parsed config kept for this path and text, or None."""
    if rundir.problem(run_dir) is not None:
        return None
    try:
        # O_NONBLOCK: a FIFO planted there would block the open; _ours() then refuses it.
        fd = os.open(memo_path(run_dir, config_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _ours(os.fstat(fd)):
            return None
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        memo = json.loads(b"".join(chunks))
    except ValueError:
        return None
    if (not isinstance(memo, dict) or memo.get("version") != VERSION
            or memo.get("path") != os.path.abspath(config_path) or memo.get("text") != text
            or not isinstance(memo.get("data"), dict)):
        return None
    return memo["data"]


def keep(run_dir: str, config_path: str, text: str, data: dict[str, Any]) -> None:
    """Keep `data`, what tomllib made of `text`, for the next run; quietly not when it cannot."""
    try:
        body = json.dumps({"version": VERSION, "path": os.path.abspath(config_path), "text": text,
                           "data": data}).encode()
    except (TypeError, ValueError):
        return  # a TOML date or time: JSON has none, so such a config is parsed every time
    path = memo_path(run_dir, config_path)
    if rundir.ensure(run_dir) is not None:
        return
    try:
        write_atomic(path, body, 0o600, sync=False)  # a cache: a torn one fails the text check anyway
    except OSError:
        pass


def _ours(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
