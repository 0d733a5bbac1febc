"""How often the hook refused a domain or failed, per pool and operation, since boot: the
counters behind `vfalloc_hook_refusals_total` and `vfalloc_hook_errors_total` (vfalloc.metrics.exposition).

Each hook is a process of its own, so the counts live in a file: `hook-counts.json` in the
runtime directory (VFALLOC_RUN_DIR, default /run/vfalloc, a tmpfs that empties at boot, which a
Prometheus counter may do: rate() takes a reset for one). Only a hook that refuses or fails
touches it, so a start that succeeds pays nothing. Not in the lease table: that file lives on
disk across boots, its lock is not held any more when an error has come out of the transaction,
and a refusal must not wait behind a queue of starts to be counted. Increments of hooks that
fail at the same moment are serialised by flock(2) on a sidecar lock file (vfalloc.locking), and the file is
replaced whole (vfalloc.atomicfile), so a reader never sees half of it.

What a domain XML names is hostile (its user need not be root): a pool the config does not
define is counted under the one label UNKNOWN_POOL, an operation that is none of libvirt's
under OTHER_OPERATION, so the file holds at most (pools + 1) x (operations + 1) x kinds
entries, each of a few hundred bytes, whatever the XML says, and a refusal adds at most one
entry per pool of the config (plus one). A file larger than any such count can be (MAX_BYTES,
left by a vfalloc that kept every name) is never read whole.

Must not: fail the hook. A count that cannot be kept is lost and said in syslog; a damaged,
foreign or oversized file is replaced by counts that start again (a counter reset, logged).
`read` for `vfalloc metrics`, in turn, raises: a number it cannot read is never shown as 0.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Collection, Iterable, Mapping

from .. import locking, rundir
from ..atomicfile import write_atomic
from ..errors import VfallocError

NAME = "hook-counts.json"
LOCK_WAIT_S = 2.0  # others hold the lock for one small read and write: far below this
VERSION = 1
KINDS = ("refused", "failed")
# A pool name of the config is letters, digits and _ . : - (config._checked_name): this label
# can name none of them. It also stands for "no pool" (an XML that cannot be read).
UNKNOWN_POOL = "(unknown)"
# libvirt's qemu hook operations (libvirt 11.3, docs/hooks.rst); argv[1] is counted as one of
# these or as OTHER_OPERATION.
OPERATIONS = ("prepare", "start", "started", "stopped", "release", "migrate", "restore", "reconnect", "attach")
OTHER_OPERATION = "(other)"
# Far above what the labels above allow for a config of a few hundred pools (an entry is under
# 200 bytes): a larger file is not this version's, and is not read.
MAX_BYTES = 1 << 20

Counts = dict[tuple[str, str, str], int]  # (kind, pool, operation) -> count


def path_in(run_dir: str) -> str:
    return f"{run_dir}/{NAME}"


def pool_label(pool: str, known: Collection[str]) -> str:
    return pool if pool in known else UNKNOWN_POOL


def operation_label(operation: str) -> str:
    return operation if operation in OPERATIONS else OTHER_OPERATION


def fold(counts: Mapping[tuple[str, str, str], int], known: Collection[str]) -> Counts:
    """The counts with every pool not in `known` (the config's) and every operation not
    libvirt's added up under UNKNOWN_POOL and OTHER_OPERATION."""
    folded: Counts = {}
    for (kind, pool, operation), n in counts.items():
        key = (kind, pool_label(pool, known), operation_label(operation))
        folded[key] = folded.get(key, 0) + n
    return folded


def read(run_dir: str, known: Collection[str]) -> Counts:
    """The counts kept in `run_dir`, folded onto the pools in `known` (fold); none when no hook
    refused or failed since boot."""
    path = path_in(run_dir)
    unusable = rundir.problem(run_dir) if os.path.lexists(run_dir) else None
    if unusable:  # the hook keeps no counts there: they are unknown, not 0
        raise VfallocError(f"the hook's counts are not kept: {unusable}")
    try:
        found = _bounded(path)
    except OSError as exc:
        fix = "remove it" if exc.errno == errno.ELOOP else "run as root"
        raise VfallocError(f"cannot read the hook's counts {path} ({exc.strerror}); {fix}") from exc
    if found is None:
        return {}
    st, raw = found
    if not stat.S_ISREG(st.st_mode):
        raise VfallocError(f"the hook's counts {path} are not a regular file; remove it")
    size = st.st_size
    if size > MAX_BYTES or len(raw) > MAX_BYTES:
        raise VfallocError(f"the hook's counts {path} hold {max(size, len(raw))} bytes, more than counts "
                           f"ever take ({MAX_BYTES}); remove the file (the counters start again from 0, "
                           "which Prometheus takes as a reset)")
    counts = _decode(raw)
    if counts is None:
        raise VfallocError(f"the hook's counts {path} are damaged; remove the file (the counters start "
                           "again from 0, which Prometheus takes as a reset)")
    return fold(counts, known)


def record(run_dir: str, kind: str, pools: Iterable[str], operation: str,
           known: Collection[str] | None) -> str | None:
    """Add one to (kind, pool, operation) for each pool (once; a pool not in `known`, the
    config's, and no pool at all count as UNKNOWN_POOL, an operation not libvirt's as
    OTHER_OPERATION). `known` None: the config could not be read; then the counts already kept
    stay under their pools. Returns None, or what went wrong for the caller's log line; never
    raises."""
    op = operation_label(operation)
    labels = {pool_label(p, known or ()) for p in pools} or {UNKNOWN_POOL}
    keys = [(kind, pool, op) for pool in sorted(labels)]
    path = path_in(run_dir)
    unusable = rundir.ensure(run_dir)
    if unusable:
        return f"cannot count the hook's {kind} call: the runtime directory is not used: {unusable}"
    try:
        lock = locking.take(f"{run_dir}/{NAME}.lock", LOCK_WAIT_S)
    except locking.LockTimeout:
        return f"cannot count the hook's {kind} call: {path}.lock stayed locked for {LOCK_WAIT_S:g} s"
    except Exception as exc:  # never fail the hook: filelock's own errors too
        return f"cannot count the hook's {kind} call in {path}: {getattr(exc, 'strerror', None) or exc}"
    note = None
    try:
        counts, trouble = _read_own(path)
        if trouble:
            note = f"{path} {trouble}; its counters start again from 0"
        if known is not None:
            counts = fold(counts, known)  # what an older file counted under names no pool has
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        # A count is a fact for this boot only (tmpfs): no fsync.
        write_atomic(path, _encode(counts), 0o600, sync=False)
    except OSError as exc:
        return f"cannot count the hook's {kind} call in {path}: {exc.strerror}"
    finally:
        lock.release()
    return note


def note_hook_failure(environ: Mapping[str, str], operation: str, xml: bytes, exc: BaseException,
                      refused: bool, settings) -> None:
    """Count a refusal or an error of the hook under the pools it concerns, and have the
    textfile refreshed (metrics.textfile) so the counter shows. Never raises: the hook is failing already.

    A pool the config does not define (a name from the domain XML) is counted as UNKNOWN_POOL;
    without settings (the call failed before it loaded them, or could not) every pool is, and
    the counts kept already are left as they are."""
    from ..log import log
    from .textfile import request_refresh

    known = {p.name for p in settings.config.pools} if settings is not None else None
    pool = getattr(exc, "pool", None)
    pools = {pool} if isinstance(pool, str) else set()
    if not pools and xml and known:
        try:
            from .. import domxml

            info = domxml.read_domain(xml)
            pools = {r.pool for r in info.requests}
        except Exception:  # an XML that cannot be read is counted under UNKNOWN_POOL
            pools = set()
    trouble = record(rundir.run_dir(environ), "refused" if refused else "failed", pools, operation, known)
    if trouble is None and settings is not None and settings.metrics_textfile:
        trouble = request_refresh(environ)
    if trouble:
        log(environ, f"metrics: {trouble}", settings)


def _read_own(path: str) -> tuple[Counts, str | None]:
    """The counts ({} when there are none yet) and, when the file cannot be taken as ours, why
    (its counts are then {})."""
    damaged = "was damaged or not vfalloc's"
    try:
        found = _bounded(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            os.unlink(path)  # a planted link: write_atomic's rename replaces it, never follows it
            return {}, damaged
        raise
    if found is None:
        return {}, None
    st, raw = found
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        return {}, damaged
    if st.st_size > MAX_BYTES:  # not read at all: its parse would cost seconds and gigabytes
        return {}, f"held {st.st_size} bytes, more than counts ever take ({MAX_BYTES})"
    if len(raw) > MAX_BYTES:  # it grew since fstat: not ours either
        return {}, damaged
    counts = _decode(raw)
    return ({}, damaged) if counts is None else (counts, None)


def _bounded(path: str) -> tuple[os.stat_result, bytes] | None:
    """The counts file's stat and, when it is a regular file of at most MAX_BYTES, its bytes (at
    most MAX_BYTES + 1: one more means it grew past the bound); None when there is no file.
    Opened O_NOFOLLOW | O_NONBLOCK: a link fails (ELOOP), and whatever else was planted there is
    neither waited for nor read (b"")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return st, b""
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return st, fh.read(MAX_BYTES + 1)
    finally:
        os.close(fd)


def _decode(raw: bytes) -> Counts | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
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
