"""Stale leases: which leases cannot be live any more, and freeing them. Used by `vfalloc gc`
(frees), `vfalloc list` / `vfalloc pools` (only shows) and the hook at `reconnect begin` (frees,
without libvirt); `vfalloc alloc` asks here whether the domain whose reservation it would replace
runs.

A lease is stale when it was taken in an earlier boot (its boot_id is not this boot's), when its
VF no longer exists, or when its domain is not running. A lease in phase "reserved" (taken by
`vfalloc alloc` or by `vfalloc start` before the domain runs) is never stale for the last reason:
it is meant for a domain that does not run yet. The first two reasons are the allocator's
(allocator.stale_reason); "not running" is judged here, the same way holdings.vf_rows judges it.

Which domains run is learnt from libvirt when it answers (virt.py, imported lazily and only by
`observe`), else from libvirt's runtime status directory (settings.libvirt_run, default
/run/libvirt/qemu). Facts (libvirt 11.3, checked on these machines): `NAME.xml` (a <domstatus>
holding the live <domain>) and `NAME.pid` are there exactly while domain NAME runs; they are
written between the `start begin` and `started begin` hooks, so during `prepare begin` a lease
already exists while the files do not. Judged from that directory, leases younger than
RUNDIR_GRACE seconds are therefore left alone.

Must not: import libvirt at module level (the hook imports this module); ask libvirt anything
while holding the state lock (libvirt holds a domain's lock while that domain's hook runs, and
the hook waits for the state lock). `collect` reads the table, then asks who runs, then frees
under the lock only the leases that are still exactly as read, so a lease taken meanwhile by a
starting domain is never freed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from .allocator import stale_reason
from .errors import VfallocError
from .model import VF, Lease, LeaseTable, PciAddress, Phase, whole_number
from .record import Record

RUNDIR_GRACE = 300.0
NOT_RUNNING = "its domain is not running"


class Running(Record):
    """The domains that run now, as one source saw them."""

    uuids: frozenset[str]
    source: str
    unsure: frozenset[str] = frozenset()  # names whose status file could not be read: assumed running
    grace: float = 0.0                     # leases younger than this (seconds) are assumed running

    def covers(self, lease: Lease, now: datetime) -> bool:
        """True when the lease's domain runs, or this source cannot tell that it does not."""
        if self.runs(lease.uuid, lease.domain):
            return True
        return self.grace > 0 and _age(lease.since, now) < self.grace

    def runs(self, uuid: str, name: str) -> bool:
        """True when the domain runs, or its status file says it does but cannot be read; the
        grace for young leases is not applied (it is for leases taken at `prepare begin`)."""
        return uuid in self.uuids or name in self.unsure


class Report(Record):
    stale: tuple[tuple[Lease, str], ...]   # freed (or, with dry_run, to be freed), with the reason
    running: Running | None
    note: str | None = None                 # why libvirt itself was not asked, if it was not
    dry_run: bool = False


class Observed(Record):
    running: Running | None                 # None: nobody can say which domains run
    note: str | None = None                 # why libvirt itself was not asked, if it was not


def now_utc() -> datetime:
    return datetime.now(UTC)


def _age(since: str, now: datetime) -> float:
    try:
        then = datetime.fromisoformat(since)
    except (TypeError, ValueError):
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (now - then).total_seconds()


def find_stale(table: LeaseTable, vfs: dict[str, VF], boot_id: str, running: Running | None,
               now: datetime) -> list[tuple[Lease, str]]:
    """Each stale lease with its reason; `running` None: nobody can say which domains run, so
    no lease is judged by that."""
    found = []
    for lease in table.leases:
        reason = stale_reason(lease, vfs, boot_id)
        if reason is None and running is not None and lease.phase != Phase.RESERVED and not running.covers(lease, now):
            reason = NOT_RUNNING
        if reason:
            found.append((lease, reason))
    return found


def treated_as_running(table: LeaseTable, running: Running | None, now: datetime) -> frozenset[str] | None:
    """The UUIDs holdings.vf_rows should take as running so that `vfalloc list` shows exactly what
    `vfalloc gc` would free."""
    if running is None:
        return None
    return running.uuids | {lease.uuid for lease in table.leases if running.covers(lease, now)}


# -- who runs --

def from_rundir(path: Path, names: Iterable[str] | None = None) -> Running | None:
    """Running domains from libvirt's status directory, without libvirt. None when the directory
    does not exist (libvirt has not run since boot, or keeps its state elsewhere). With `names`,
    only those domains' status files are read (a status file carries QEMU's capabilities and is
    tens of KiB)."""
    from . import domxml

    path = Path(path)
    try:
        entries = set(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VfallocError(f"{path}: cannot list libvirt's status directory ({exc.strerror}); run as root") from exc
    wanted = {f"{n}.xml" for n in names} if names is not None else {e for e in entries if e.endswith(".xml")}
    uuids, unsure = set(), set()
    for entry in sorted(wanted & entries):
        name = entry[:-len(".xml")]
        if not _pid_alive(path / f"{name}.pid"):
            continue
        try:
            uuids.add(domxml.read_domain((path / entry).read_bytes()).uuid)
        except (OSError, VfallocError):
            unsure.add(name)  # it runs, but its UUID is unreadable: keep every lease of that name
    return Running(frozenset(uuids), f"libvirt's status files in {path}", frozenset(unsure), RUNDIR_GRACE)


def _pid_alive(pidfile: Path) -> bool:
    try:
        text = pidfile.read_text().strip()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there but unreadable: assume it runs
    pid = whole_number(text, 1 << 22)  # PID_MAX_LIMIT (include/linux/threads.h)
    if pid is None:
        return True  # being written: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # QEMU is gone though its files are left (libvirtd down when it died)
    except PermissionError:
        return True
    return True


def observe(libvirt_run: Path, uri: str | None, names: Iterable[str] | None = None) -> Observed:
    """Running domains from libvirt at `uri` (None: LIBVIRT_DEFAULT_URI, else qemu:///system),
    else from the status directory."""
    try:
        from . import virt

        uri = virt.resolve_uri(uri)
        with virt.Connection(uri) as conn:
            return Observed(Running(conn.running_uuids(), f"libvirt at {uri}"))
    except ImportError as exc:
        why = f"libvirt-python is not installed ({exc})"
    except VfallocError as exc:
        why = str(exc)
    running = from_rundir(libvirt_run, names)
    if running is None:
        return Observed(None, f"{why}; and {libvirt_run} does not exist")
    return Observed(running, why)


def domain_runs(libvirt_run: Path, uri: str | None, uuid: str, name: str) -> tuple[bool | None, str]:
    """Whether one domain runs, as `observe` sees it (None: nobody can say), and what the verdict
    rests on: the source that was asked, or why none could be."""
    seen = observe(libvirt_run, uri, {name})
    if seen.running is None:
        return None, seen.note or "running domains unknown"
    return seen.running.runs(uuid, name), seen.running.source


def names_of(table: LeaseTable) -> set[str]:
    return {lease.domain for lease in table.leases}


# -- freeing --

def _vf_map(ctx, table: LeaseTable) -> dict[str, VF]:
    """The VFs of just the PFs the leases name (a PF gone from sysfs takes its VFs with it)."""
    pfs = {PciAddress.parse(lease.pf) for lease in table.leases if PciAddress.looks_like(lease.pf)}
    return ctx.sysfs.read_host(only=pfs, brief=True).vf_map()


def collect(ctx, observe_running: Callable[[LeaseTable], Observed], now: datetime | None = None,
            dry_run: bool = False) -> Report:
    """Find the stale leases and (unless dry_run) free them. `observe_running` is asked after
    the table was read, so a lease in the table belongs to a domain that was already listed as
    running when it took the lease, if it runs at all."""
    now = now or now_utc()
    before = ctx.store.read()
    if not before.leases:
        return Report((), None, None, dry_run)
    seen = observe_running(before)
    stale = find_stale(before, _vf_map(ctx, before), ctx.boot_id, seen.running, now)
    if dry_run or not stale:
        return Report(tuple(stale), seen.running, seen.note, dry_run)
    with ctx.store.transaction() as txn:
        current = set(txn.table.leases)
        freed = tuple((lease, why) for lease, why in stale if lease in current)
        txn.table = txn.table.without(lease for lease, _ in freed)
    return Report(freed, seen.running, seen.note, dry_run)


def collect_offline(ctx, now: datetime | None = None) -> Report:
    """The hook's gc (at `reconnect begin`): running domains from the status directory only."""
    return collect(ctx, lambda table: Observed(from_rundir(ctx.settings.libvirt_run, names_of(table)),
                                               "the hook never asks libvirt"), now)
