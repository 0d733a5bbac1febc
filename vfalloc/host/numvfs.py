"""`vfalloc host numvfs PF N`: set how many VFs a PF has, the only way the kernel allows it
(0 first, then N), wait for the VFs to appear, and turn the kernel's refusals into their causes.

Owns: the write sequence, the lease guard, the bounded wait, the errno -> explanation table.
Must not: write sysfs other than through Sysfs.write_attr (the one seam), or change leases.

Kernel facts (drivers/pci/iov.c sriov_numvfs_store() and sriov_enable(), Linux 4.x .. 6.x):
- N > sriov_totalvfs: ERANGE. The same count again: a no-op.
- No driver bound, or a driver without sriov_configure: ENOENT.
- Non-zero to another non-zero count: EBUSY ("%d VFs already enabled. Disable before enabling").
  Every change of a non-zero count therefore removes ALL VFs of the PF for a moment.
- Not enough bus numbers or MMIO window for the VF BARs: ENOMEM ("not enough MMIO resources for
  SR-IOV", "can't enable %d VFs (bus %02x out of range ...)"): the firmware did not reserve room
  (BIOS SR-IOV support off), which pci=realloc and pci=assign-busses let the kernel fix.
- The driver may enable fewer VFs than asked ("%d VFs requested; only %d enabled").
- ice returns ENOSPC when its MSI-X vectors/queues cannot serve the VFs ("Not enough resources for
  %d VFs", ice_sriov.c, Linux 5.x .. 6.x); the x86 vector allocator returns ENOSPC too.
- sriov_drivers_autoprobe (Linux 4.12) is read when VFs are created: write it before N.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..allocator import stale_reason
from ..errors import HostError, SysfsError, UsageError
from ..model import PF, Lease, LeaseTable
from ..sysfs import Sysfs


class NumvfsError(HostError):
    """sriov_numvfs refused a write; `errno` is the kernel's."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass
class Clock:
    """Time for the bounded wait; tests pass one that does not sleep."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Result:
    pf: PF
    before: int
    writes: list[str] = field(default_factory=list)


def explain(exc: SysfsError, pf: PF, value: int) -> str:
    """One line naming the PF, what was written, the kernel's reason and the fix."""
    name = f"{pf.name} ({pf.address})"
    code = exc.errno
    reason = errno.errorcode.get(code, "?") if code is not None else "?"
    head = f"{name}: writing {value} to sriov_numvfs failed ({reason})"
    if code == errno.ENOMEM:
        return (f"{head}: the kernel found no room for {value} VFs (MMIO window or bus numbers "
                "for the VF BARs); enable SR-IOV in the BIOS/UEFI setup, or boot with pci=realloc "
                "(and pci=assign-busses when the VFs need bus numbers): "
                "`vfalloc host kernel-args --realloc --assign-busses`, then reboot")
    if code == errno.ENOSPC:
        return (f"{head}: not enough MSI-X interrupt vectors or queues for {value} VFs; ask for "
                "fewer VFs, or give the PF fewer queues first (ethtool -L IFACE combined K)")
    if code == errno.EBUSY:
        return (f"{head}: VFs are already enabled (the kernel allows no change between two "
                "non-zero counts) or the driver is busy; something else set sriov_numvfs "
                "meanwhile: see `vfalloc host check` for other owners of numvfs")
    if code == errno.ENOENT:
        return (f"{head}: no driver is bound to the PF, or its driver ({pf.driver or 'none'}) "
                "cannot set VFs through sysfs; load and bind the PF driver (modprobe "
                f"{pf.driver or 'DRIVER'})")
    if code == errno.ERANGE:
        return f"{head}: more than the {pf.totalvfs} VFs the PF offers (sriov_totalvfs)"
    if code in (errno.EPERM, errno.EACCES):
        return f"{head}: not permitted; run as root (or the driver refuses while VFs are assigned to guests)"
    return f"{head}: {exc.problem}"


def blocking_leases(pf: PF, n: int, table: LeaseTable, boot_id: str | None) -> list[Lease]:
    """Leases of this boot on VFs of `pf` that a change to `n` VFs would take away: with VFs
    present every change passes through 0, so all of them."""
    if pf.numvfs == 0 or n == pf.numvfs:
        return []
    vfs = {str(vf.address): vf for vf in pf.vfs}
    return [lease for lease in table.leases
            if lease.vf in vfs and (boot_id is None or stale_reason(lease, vfs, boot_id) is None)]


def lease_refusal(pf: PF, n: int, leases: list[Lease]) -> str:
    index = {str(vf.address): vf.index for vf in pf.vfs}
    gone = [lz for lz in leases if index.get(lz.vf, 0) >= n]
    held = ", ".join(f"{lz.vf} ({lz.domain})" for lz in leases)
    if gone:
        why = f"{len(gone)} leased VF(s) would no longer exist with {n} VFs"
    else:
        why = "the kernel removes every VF before it creates the new count, so they leave their guests"
    return (f"{pf.name}: leased VFs {held}: {why}; stop those domains first, "
            "or pass --force to change numvfs anyway")


def check_request(pf: PF, n: int) -> None:
    if n < 0:
        raise UsageError(f"numvfs {n} is negative; use 0 to {pf.totalvfs}")
    if n > pf.totalvfs:
        raise UsageError(f"{pf.name} offers {pf.totalvfs} VFs (sriov_totalvfs); {n} is more")


def set_numvfs(sysfs: Sysfs, pf: PF, n: int, *, autoprobe: bool | None = None, dry_run: bool = False) -> Result:
    """Write 0 then N. Leases are the caller's check, and so is the wait for the VFs (wait_for):
    the caller holds the lease lock across the writes but not across the wait."""
    result = Result(pf, pf.numvfs)
    steps = []
    if autoprobe is not None:
        steps.append(("sriov_drivers_autoprobe", "1" if autoprobe else "0"))
    if n != pf.numvfs:
        if pf.numvfs:
            steps.append(("sriov_numvfs", "0"))
        if n:
            steps.append(("sriov_numvfs", str(n)))
    for attr, value in steps:
        result.writes.append(f"{sysfs.describe(pf.address, attr)} <- {value}")
        if not dry_run:
            _write(sysfs, pf, attr, value)
    return result


def _write(sysfs: Sysfs, pf: PF, attr: str, value: str) -> None:
    try:
        sysfs.write_attr(pf.address, attr, value)
    except SysfsError as exc:
        if attr != "sriov_numvfs":
            raise
        raise NumvfsError(explain(exc, pf, int(value)), exc.errno) from exc


def wait_for(sysfs: Sysfs, pf: PF, n: int, timeout: float, clock: Clock) -> PF:
    """Poll until the PF lists N VFs (virtfnN links) and says sriov_numvfs N, at most `timeout`."""
    deadline = clock.now() + timeout
    seen = "nothing readable"
    while True:
        try:
            now = sysfs.read_pf(pf.address)
        except SysfsError as exc:  # a VF directory half made while its driver probes
            seen = f"an unreadable VF ({exc.problem})"
        else:
            if now.numvfs == n and len(now.vfs) == n:
                return now
            seen = f"sriov_numvfs {now.numvfs} and {len(now.vfs)} VFs"
        if clock.now() >= deadline:
            break
        clock.sleep(0.1)
    raise HostError(f"{pf.name}: asked for {n} VFs, the kernel reports {seen} after {timeout:g}s; "
                    "see `dmesg` for the driver's reason (it may enable fewer VFs than asked)")
