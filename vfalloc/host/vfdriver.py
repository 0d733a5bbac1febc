"""`vfalloc host vf-driver`: keep the host's own drivers off the VFs, so a VF is free for vfio-pci
when a guest takes it (the host does not grab it, bring it up, or run DHCP on it).

Two ways, with their costs:
- `--autoprobe off` writes the PF's sriov_drivers_autoprobe (Linux 4.12,
  Documentation/ABI/testing/sysfs-bus-pci): VFs created from then on get no driver; the VFs of
  other PFs and the host's own use of the driver are untouched. It applies only to VFs created
  after the write and is lost at reboot (persist it: `vfalloc host persist --autoprobe off`).
- `--blacklist DRIVER` writes a modprobe.d(5) `blacklist` line: the module is no longer loaded
  automatically by device alias, host-wide; a driver already loaded stays loaded, an explicit
  `modprobe` still loads it, and an initramfs that carries the module needs regenerating.

Owns: the blacklist file, the autoprobe writes, and the warnings. Must not: unbind drivers or
touch VFs themselves (libvirt's managed='yes' binds vfio-pci at guest start).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SysfsError, UsageError
from ..model import PF, Host
from ..sysfs import Sysfs

BLACKLIST_PATH = "/etc/modprobe.d/vfalloc-vf-blacklist.conf"
HEADER = "# Written by `vfalloc host vf-driver --blacklist`; keeps VF drivers from loading by alias."
# PF driver -> the driver its VFs get (i40evf was renamed iavf in Linux 4.17).
VF_DRIVERS = {"igb": "igbvf", "ixgbe": "ixgbevf", "i40e": "iavf", "ice": "iavf", "bnxt_en": "bnxt_en",
              "mlx5_core": "mlx5_core", "mlx4_core": "mlx4_core", "qede": "qede", "enic": "enic"}
_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class InUse:
    address: str
    what: str


def blacklisted(text: str | None) -> set[str]:
    return {m[1].replace("-", "_") for m in re.finditer(r"^\s*blacklist\s+(\S+)", text or "", re.M)}


def blacklist_text(old: str | None, driver: str, remove: bool) -> str | None:
    """The new file: `driver` added (or removed) and every other line kept; None when it would
    hold nothing but the header."""
    lines = (old or f"{HEADER}\n").splitlines()
    norm = driver.replace("-", "_")
    lines = [ln for ln in lines if not re.match(rf"^\s*blacklist\s+{re.escape(driver)}\s*$", ln)
             and not re.match(rf"^\s*blacklist\s+{re.escape(norm)}\s*$", ln)]
    if not remove:
        lines.append(f"blacklist {driver}")
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return "\n".join(lines) + "\n" if body else None


def check_driver(driver: str, host: Host) -> None:
    if not _MODULE.match(driver):
        raise UsageError(f"{driver!r} is not a kernel module name")
    pfs = [pf.name for pf in host.pfs if pf.driver and pf.driver.replace("-", "_") == driver.replace("-", "_")]
    if pfs:
        raise UsageError(f"{driver} also drives the PFs ({', '.join(pfs)}); blacklisting it would "
                         "leave them without a driver: use `--autoprobe off` instead")


def users(sysfs: Sysfs, host: Host, driver: str) -> list[InUse]:
    """Functions bound to `driver` now that the host itself uses: anything that is not a VF of
    an SR-IOV PF, and VFs whose network interface is up."""
    vfs = host.vf_map()
    found = []
    for address in sysfs.pci_addresses():
        dev = sysfs.device(address)
        if dev.driver != driver:
            continue
        vf = vfs.get(str(address))
        if vf is None:
            found.append(InUse(str(address), f"{dev.vendor}:{dev.device}, not a VF"))
        elif vf.netdev and _is_up(sysfs, vf.address, vf.netdev):
            found.append(InUse(str(address), f"VF {vf.index} of {vf.pf}, interface {vf.netdev} is up"))
    return found


def _is_up(sysfs: Sysfs, address, netdev: str) -> bool:
    try:
        return sysfs.read_attr(address, f"net/{netdev}/operstate") == "up"
    except SysfsError:
        return False


def autoprobe_pfs(host: Host, refs: list[str], pool_pfs: list[str]) -> list[PF]:
    """The PFs named, else the PFs of the pools, else every SR-IOV PF."""
    if refs:
        found = []
        for ref in refs:
            pf = host.pf(ref)
            if pf is None:
                raise UsageError(f"{ref} is not an SR-IOV PF on this host (see `vfalloc host check`)")
            found.append(pf)
        return found
    if pool_pfs:
        return [pf for pf in host.pfs if str(pf.address) in pool_pfs]
    return list(host.pfs)


def autoprobe_warning(pf: PF, on: bool) -> str | None:
    bound = [vf for vf in pf.vfs if vf.driver and vf.driver != "vfio-pci"]
    if on or not pf.vfs:
        return None
    tail = f"; {len(bound)} of them are bound to a host driver now" if bound else ""
    return (f"{pf.name}: the {len(pf.vfs)} existing VFs keep their drivers{tail} (autoprobe applies to "
            f"VFs created later: `vfalloc host numvfs {pf.name} 0` then N), and the setting is lost at "
            "reboot: `vfalloc host persist --autoprobe off`")
