"""How often the hook refused a domain or failed, per pool and operation, since boot: the
counters behind `vfalloc_hook_refusals_total` and `vfalloc_hook_errors_total` (vfalloc.metrics).

Each hook is a process of its own, so the counts live in a file: `hook-counts.json` in the
runtime directory (VFALLOC_RUN_DIR, default /run/vfalloc, a tmpfs that empties at boot, which a
Prometheus counter may do: rate() takes a reset for one). Only a hook that refuses or fails
touches it, so a start that succeeds pays nothing. Not in the lease table: that file lives on
disk across boots, its lock is not held any more when an error has come out of the transaction,
and a refusal must not wait behind a queue of starts to be counted. Increments of hooks that
fail at the same moment are serialised by flock(2) on a sidecar lock file, and the file is
replaced whole (vfalloc.atomicfile), so a reader never sees half of it.

Must not: fail the hook. A count that cannot be kept is lost and said in syslog; a damaged or
foreign file is replaced by counts that start again (a counter reset, logged). `read` for
`vfalloc metrics`, in turn, raises: a number it cannot read is never shown as 0.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterable, Mapping

from .atomicfile import write_atomic
from .errors import VfallocError

NAME = "hook-counts.json"
LOCK_WAIT_S = 2.0  # others hold the lock for one small read and write: far below this
VERSION = 1
KINDS = ("refused", "failed")

Counts = dict[tuple[str, str, str], int]  # (kind, pool, operation) -> count


def path_in(run_dir: str) -> str:
    return f"{run_dir}/{NAME}"


def read(run_dir: str) -> Counts:
    """The counts kept in `run_dir`; none when no hook refused or failed since boot."""
    path = path_in(run_dir)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise VfallocError(f"cannot read the hook's counts {path} ({exc.strerror}); run as root") from exc
    counts = _decode(raw)
    if counts is None:
        raise VfallocError(f"the hook's counts {path} are damaged; remove the file (the counters start "
                           "again from 0, which Prometheus takes as a reset)")
    return counts


def record(run_dir: str, kind: str, pools: Iterable[str], operation: str) -> str | None:
    """Add one to (kind, pool, operation) for each pool (once, pool "" when none is known).
    Returns None, or what went wrong for the caller's log line; never raises."""
    keys = [(kind, pool, operation) for pool in sorted(set(pools)) or [""]]
    path = path_in(run_dir)
    try:
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        lock = _lock(f"{run_dir}/{NAME}.lock")
    except OSError as exc:
        return f"cannot count the hook's {kind} call in {path}: {exc.strerror}"
    if lock is None:
        return f"cannot count the hook's {kind} call: {path}.lock stayed locked for {LOCK_WAIT_S:g} s"
    note = None
    try:
        counts = _read_own(path)
        if counts is None:
            note = f"{path} was damaged or not vfalloc's; its counters start again from 0"
            counts = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        # A count is a fact for this boot only (tmpfs): no fsync.
        write_atomic(path, _encode(counts), 0o600, sync=False)
    except OSError as exc:
        return f"cannot count the hook's {kind} call in {path}: {exc.strerror}"
    finally:
        os.close(lock)
    return note


def _lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.005)
        except OSError:
            os.close(fd)
            raise


def _read_own(path: str) -> Counts | None:
    """The counts, {} when there are none yet, None when the file is not ours or damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            os.unlink(path)  # a planted link: write_atomic's rename replaces it, never follows it
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read()
    finally:
        os.close(fd)
    return _decode(raw)


def _decode(raw: bytes) -> Counts | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("counts"), list):
        return None
    counts: Counts = {}
    for item in data["counts"]:
        if (not isinstance(item, dict) or item.get("kind") not in KINDS
                or not isinstance(item.get("pool"), str) or not isinstance(item.get("operation"), str)
                or not isinstance(item.get("count"), int) or isinstance(item.get("count"), bool)
                or item["count"] < 0):
            return None
        counts[(item["kind"], item["pool"], item["operation"])] = item["count"]
    return counts


def _encode(counts: Mapping[tuple[str, str, str], int]) -> bytes:
    items = [{"kind": k, "pool": p, "operation": o, "count": n} for (k, p, o), n in sorted(counts.items())]
    return (json.dumps({"version": VERSION, "counts": items}, indent=1) + "\n").encode()
