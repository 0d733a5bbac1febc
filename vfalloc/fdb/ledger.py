"""The ledger: vfalloc's record of the FDB entries it added, a JSON file of its own beside the lease table
(`fdb.json` in the state file's directory), and its lock.

Why a file of its own: the entries are not leases, they change at other moments (`started
begin`, not `prepare begin`) and a start must not wait for the lease table's lock while another
domain's entries are added. Every change of a PF's table and of this record happens inside
`LedgerFile.transaction()`, under an exclusive lock on `fdb.json.lock` (flock(2) through vfalloc.locking, as
the lease table's), so the ledger always says what vfalloc put into the tables: two hooks, or a hook
and `vfalloc fdb sync`, never add or remove the same entry at once, and a sync reads the running
domains inside the lock, after any hook that added a domain's entries. Written with
vfalloc.atomicfile; a file that does not parse, or has a newer version, is refused and left as
it is.

Format: {"version": 1, "entries": [{"pf": IFNAME, "mac": MAC, "owners": [{"kind", "id",
"name"}, ...]}, ...]}. Must not: run commands or decide anything (fdb.upkeep, fdb.entries do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .. import locking
from ..atomicfile import write_atomic
from ..errors import FdbError
from .entries import Owner

VERSION = 1
NAME = "fdb.json"

Ledger = dict[tuple[str, str], frozenset[Owner]]


class LedgerChange:
    """The ledger being changed under the lock; it is written when `ledger` differs at the end."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger


class LedgerFile:
    def __init__(self, state_path: str, lock_timeout: float = 10.0) -> None:
        self.path = os.path.join(os.path.dirname(os.path.abspath(state_path)), NAME)
        self.lock_path = self.path + ".lock"
        self.lock_timeout = lock_timeout

    def raw(self) -> bytes | None:
        """The file's bytes, None when there is none (the hook's cheap look for a domain)."""
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FdbError(self.path, f"cannot be read ({exc.strerror})", "run vfalloc as root") from exc

    def read(self) -> Ledger:
        raw = self.raw()
        return {} if raw is None else self._decode(raw)

    def _decode(self, raw: bytes) -> Ledger:
        fix = f"move it aside (mv {self.path} {self.path}.broken) and run `vfalloc fdb sync`"
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FdbError(self.path, f"is not valid JSON ({exc})", fix) from exc
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise FdbError(self.path, "is not vfalloc's record of FDB entries (no version)", fix)
        if data["version"] > VERSION:
            raise FdbError(self.path, f"has version {data['version']}, newer than this vfalloc knows ({VERSION})",
                           "upgrade vfalloc; the file is left as it is")
        if data["version"] != VERSION:
            raise FdbError(self.path, f"has unknown version {data['version']}", fix)
        ledger: Ledger = {}
        try:
            for item in data.get("entries", []):
                key = (str(item["pf"]), str(item["mac"]).lower())
                ledger[key] = ledger.get(key, frozenset()) | {Owner.from_json(o) for o in item["owners"]}
        except (KeyError, TypeError, AttributeError) as exc:
            raise FdbError(self.path, f"holds a malformed entry ({exc!r})", fix) from exc
        return ledger

    @contextmanager
    def transaction(self) -> Iterator[LedgerChange]:
        """Lock, read, let the caller change `txn.ledger` (and the tables), write it if it changed."""
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise FdbError(self.path, f"its directory cannot be created ({exc.strerror})", "run as root") from exc
        try:
            lock = locking.take(self.lock_path, self.lock_timeout)
        except locking.LockTimeout as exc:
            raise FdbError(self.path, f"is locked by another vfalloc for more than {self.lock_timeout:g} s",
                           f"find the process holding {self.lock_path} (fuser {self.lock_path})") from exc
        except OSError as exc:
            raise FdbError(self.lock_path, f"cannot be locked ({exc.strerror})", "run vfalloc as root") from exc
        try:
            before = self.read()
            txn = LedgerChange(dict(before))
            yield txn
            if txn.ledger != before:
                self._write(txn.ledger)
        finally:
            lock.release()

    def _write(self, ledger: Ledger) -> None:
        entries = [{"pf": pf, "mac": mac, "owners": [o.to_json() for o in sorted(owners)]}
                   for (pf, mac), owners in sorted(ledger.items()) if owners]
        payload = (json.dumps({"version": VERSION, "entries": entries}, indent=1) + "\n").encode()
        try:
            write_atomic(self.path, payload, 0o600)
        except OSError as exc:
            raise FdbError(self.path, f"cannot be written ({exc.strerror})") from exc
