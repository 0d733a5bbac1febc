"""The lease table on disk: one versioned JSON file.

Owns the file format, the lock and the atomic write. Every read-modify-write runs inside
`StateStore.transaction()`, under an exclusive flock(2) lock on a sidecar file
(`state.json.lock`, taken through vfalloc.locking), waited for up to a timeout while the table
does not change. The new table is written to a temp file in the same directory, fsynced,
renamed over the old one (rename(2) is atomic within a filesystem), and the directory is
fsynced so the rename survives a crash. A reader without
the lock therefore always sees a whole old or a whole new table. A file that does not parse, or
has a version this code does not know, is refused and never overwritten.

Every field of every lease and the table's own rules (one lease per VF, one lease per request of
a domain) are checked when the file is read and again before a table is written (check_leases),
so a table hand-edited wrong is refused with the way to recover, and vfalloc never writes one.
The state file and its lock must be regular files: they are opened without blocking (a FIFO there
would hang every command with the lock held) and refused otherwise. This module knows nothing of
VFs beyond the Lease values it stores.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from . import locking
from .atomicfile import write_atomic
from .errors import StateError, UsageError, shown
from .model import PHASES, REQUEST_TYPES, Lease, LeaseTable, check_name

VERSION = 1
_TMP_PREFIX = ".tmp-"
# How vfalloc writes a PCI address (model.PciAddress's text), a MAC and a UUID into a lease.
_ADDRESS = r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
_MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_MAX_INDEX = 999_999  # domxml: device aliases ua-vfalloc-N have at most 6 digits
_REQUIRED = tuple(k for k in Lease._fields if k not in Lease._defaults)


class BrokenTable(Exception):
    """What is wrong with a lease table, in words (check_leases); StateError names the file."""


def check_leases(leases: list, last: object) -> None:
    """Raise BrokenTable unless every lease (as JSON: a dict) has every field right and the
    table keeps its rules: one lease per VF, one lease per (domain UUID, request index)."""
    vfs: dict[str, int] = {}
    requests: dict[tuple[str, int], int] = {}
    for n, item in enumerate(leases):
        _check_lease(n, item)
        vf, key = item["vf"], (item["uuid"], item["index"])
        if vf in vfs:
            raise BrokenTable(f"leases {vfs[vf]} and {n} both hold VF {vf}")
        if key in requests:
            raise BrokenTable(f"leases {requests[key]} and {n} both serve request {key[1]} of domain {key[0]}")
        vfs[vf], requests[key] = n, n
    if not isinstance(last, dict):
        raise BrokenTable("`last` is not an object")
    for uuid, held in last.items():
        if not _is(_UUID, uuid) or not isinstance(held, dict):
            raise BrokenTable(f"`last` has an entry {shown(repr(uuid))} that is not a UUID with its VFs")
        for index, vf in held.items():
            if not (isinstance(index, str) and index.isascii() and index.isdigit() and len(index) <= 6) \
                    or not _is(_ADDRESS, vf):
                raise BrokenTable(f"`last` of {uuid} has {shown(repr(index))}: {shown(repr(vf))}, "
                                  "not a request index and a VF address")


def _is(pattern: str, value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def _check_lease(n: int, item: object) -> None:
    if not isinstance(item, dict):
        raise BrokenTable(f"lease {n} is not an object")
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise BrokenTable(f"lease {n} has no {missing[0]!r}")
    get: Callable[..., Any] = item.get
    problem = None
    if not _is(_ADDRESS, get("vf")):
        problem = "vf is not a PCI address"
    elif not _is(_ADDRESS, get("pf")):
        problem = "pf is not a PCI address"
    elif not _is(_UUID, get("uuid")):
        problem = "uuid is not a lower-case domain UUID"
    elif type(get("index")) is not int or not 0 <= get("index") <= _MAX_INDEX:
        problem = f"index is not a request position from 0 to {_MAX_INDEX}"
    elif get("mac") is not None and (not _is(_MAC, get("mac")) or int(get("mac")[:2], 16) & 1
                                     or get("mac") == "00:00:00:00:00:00"):
        problem = "mac is not a lower-case unicast MAC address"
    elif get("vlan") is not None and (type(get("vlan")) is not int or not 1 <= get("vlan") <= 4094):
        problem = "vlan is not a VLAN id from 1 to 4094"
    elif get("phase") not in PHASES:
        problem = f"phase is not one of {', '.join(PHASES)}"
    elif get("type", "interface") not in REQUEST_TYPES:
        problem = f"type is not one of {', '.join(REQUEST_TYPES)}"
    elif get("trust") not in (None, "on", "off") or get("spoofchk") not in (None, "on", "off"):
        problem = "trust or spoofchk is not on or off"
    elif type(get("required", False)) is not bool:
        problem = "required is not true or false"
    elif not all(isinstance(get(k), str) and get(k).isprintable() for k in ("since", "boot_id")):
        problem = "since or boot_id is not a line of text"
    else:
        for key, what in (("domain", "domain"), ("pool", "pool")):
            try:
                check_name(get(key), what)
            except UsageError as exc:
                problem = str(exc).partition(";")[0]
    if problem is not None:
        raise BrokenTable(f"lease {n} ({shown(repr(get('vf')))}): {problem}")


class TableChange:
    """The lease table being changed under the lock; assign a new LeaseTable to `table` to have
    it written."""

    def __init__(self, table: LeaseTable) -> None:
        self.table = table


TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from collections.abc import Callable
    from typing import Any


class StateStore:
    def __init__(self, path: str | os.PathLike[str], lock_timeout: float = 10.0) -> None:
        # Plain strings: pathlib costs the hook more to import than the whole lock and write.
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self._dir = os.path.dirname(self.path) or "."
        self._name = os.path.basename(self.path)
        self.lock_timeout = lock_timeout
        self.warnings: list[str] = []

    # -- reading --
    def read(self) -> LeaseTable:
        """The current table, without taking the lock (writes are atomic renames)."""
        raw = self._read_bytes()
        return LeaseTable() if raw is None else self._decode(raw)

    def _read_bytes(self) -> bytes | None:
        try:
            # O_NONBLOCK: opening a FIFO would block until someone writes to it; _check_owner then
            # refuses anything but a regular file.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._io_error("cannot be opened", exc) from exc
        try:
            self._check_owner(os.fstat(fd))
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read()
        except OSError as exc:
            raise self._io_error("cannot be read", exc) from exc
        finally:
            os.close(fd)

    def _check_owner(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise StateError(self.path, "is not a regular file",
                             "point --state (or VFALLOC_STATE, or state in [settings]) at a file")
        if st.st_uid != os.geteuid():
            raise StateError(self.path, f"is owned by uid {st.st_uid}, not by the user running vfalloc "
                             f"(uid {os.geteuid()})", "run vfalloc as the owner (root) or fix the owner with chown")
        if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
            self.warnings.append(f"state file {self.path} is writable by group/others "
                                 f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 {self.path}")

    def _io_error(self, what: str, exc: OSError) -> StateError:
        if exc.errno == errno.ELOOP:
            return StateError(self.path, "is a symbolic link, which vfalloc does not follow",
                              "remove the link; the state file must be a plain file")
        if isinstance(exc, PermissionError):
            return StateError(self.path, f"{what} (permission denied)", "run vfalloc as root")
        return StateError(self.path, f"{what} ({exc.strerror})")

    def _decode(self, raw: bytes) -> LeaseTable:
        recover = (f"move it aside (mv {self.path} {self.path}.broken) to start an empty table, "
                   "then run `vfalloc gc` and restart the VMs that hold VFs")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = "is empty" if not raw.strip() else f"is not valid JSON ({exc})"
            raise StateError(self.path, where, recover) from exc
        except ValueError as exc:  # a number of more than 4,300 digits: int()'s limit
            raise StateError(self.path, "holds a number of more digits than Python reads (4300)", recover) from exc
        except RecursionError as exc:
            raise StateError(self.path, "nests arrays or objects too deep to read", recover) from exc
        if not isinstance(data, dict) or "version" not in data:
            raise StateError(self.path, "is not a vfalloc lease table (no version)", recover)
        version = data["version"]
        if type(version) is not int or version != VERSION:
            if type(version) is int and version > VERSION:
                raise StateError(self.path, f"has version {version}, newer than this vfalloc knows ({VERSION})",
                                 "upgrade vfalloc; the file is left as it is")
            raise StateError(self.path, f"has unknown version {shown(repr(version))}", recover)
        items, last = data.get("leases", []), data.get("last", {})
        try:
            if not isinstance(items, list):
                raise BrokenTable("`leases` is not a list")
            check_leases(items, last)
        except BrokenTable as exc:
            raise StateError(self.path, f"holds a broken lease table: {exc}", recover) from exc
        return LeaseTable(tuple(Lease.from_json(item) for item in items), last)

    # -- writing --
    @contextmanager
    def transaction(self) -> Iterator[TableChange]:
        """Lock, read, let the caller change `txn.table`, write it back if it changed."""
        self._ensure_dir()
        with self._locked():
            before = self.read()
            txn = TableChange(before)
            yield txn
            if txn.table != before:
                self._write(txn.table)

    def _ensure_dir(self) -> None:
        if os.path.isdir(self._dir):
            return
        try:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(self.path, f"its directory cannot be created ({exc.strerror})",
                             "run as root or choose another --state path") from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The exclusive lock (vfalloc.locking: one flock(2) when it is free, filelock to wait).
        The timeout bounds a wait in which the lease table does not change: every transaction
        that changes it replaces its file, so while the file keeps changing the processes ahead
        are getting their turns and this one, queued behind them, waits on. The hooks of 64
        domains started at once (an autostart) queue up so, and on a busy host their queue lasts
        longer than the timeout; a holder that changes nothing for that long is what the timeout
        is for."""
        try:
            held: locking.Releasable | None = locking.take_now(self.lock_path)
            seen = self._table_stamp() if held is None else None
            while held is None:
                try:
                    held = locking.wait(self.lock_path, self.lock_timeout)
                except locking.LockTimeout as exc:
                    stamp = self._table_stamp()
                    if stamp == seen:
                        raise StateError(self.path, f"is locked by another vfalloc for more than "
                                         f"{self.lock_timeout:g} s",
                                         f"find the process holding {self.lock_path} (fuser {self.lock_path})") from exc
                    seen = stamp  # others took their turns meanwhile: wait on behind them
        except locking.NotRegularFile as exc:
            raise StateError(self.lock_path, "is not a regular file",
                             "remove it; vfalloc creates its lock file beside the state file") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(self.lock_path, "is a symbolic link, which vfalloc does not follow",
                                 "remove the link") from exc
            raise self._io_error("cannot be locked", exc) from exc
        try:
            yield
        finally:
            held.release()

    def _table_stamp(self) -> tuple[int, int, int] | None:
        """What tells one version of the table file from the next: each write is a new file
        (atomicfile: a temp file renamed over it), so a new inode number and change time."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._io_error("cannot be read", exc) from exc
        return st.st_ino, st.st_ctime_ns, st.st_size

    def _write(self, table: LeaseTable) -> None:
        data: dict[str, Any] = {
            "version": VERSION,
            "leases": [lease.to_json() for lease in table.leases],
            "last": {k: dict(v) for k, v in table.last.items()},
        }
        try:
            check_leases(data["leases"], data["last"])
        except BrokenTable as exc:
            raise StateError(self.path, f"was not written: the new lease table would be broken ({exc})",
                             "the file is left as it was; report this as a vfalloc bug") from exc
        payload = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
        self._clean_temps()
        try:
            write_atomic(self.path, payload, 0o600, prefix=_TMP_PREFIX)
        except OSError as exc:
            raise self._io_error("cannot be written", exc) from exc

    def _clean_temps(self) -> None:
        """Remove temp files left by a writer that died before its rename (we hold the lock)."""
        prefix = f"{_TMP_PREFIX}{self._name}."
        for entry in os.scandir(self._dir):
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
