"""Why a device shares its IOMMU group: walk from the device up to its root port, read each hop's
config space through Sysfs, judge it the way Linux judges it, and propose the
`pcie_acs_override=id:VVVV:DDDD` argument for the hops that block isolation.

Owns: the per-hop verdicts and the override proposal. Must not: parse config bytes (pciconfig),
edit kernel arguments (boot_config), or print (commands/host_show renders the report).

Kernel facts (drivers/pci/pci.c pci_acs_enabled() and drivers/iommu/iommu.c pci_device_group(),
Linux 4.x .. 6.x): every bridge on the path to the root must have ACS, or everything below the
highest bridge without it lands in one group. Root ports and downstream switch ports need the
flags SV RR CR UF enabled; upstream ports and endpoints need them only when multi-function;
PCIe-to-PCI and PCI-to-PCIe bridges and conventional PCI never isolate. Device-specific quirks
(drivers/pci/quirks.c) are checked first, so the groups the kernel made are the truth and this
walk only explains them. The override is the out-of-tree "ACS override" patch (carried by e.g.
Proxmox VE and some distribution kernels, never mainline): its `id:` form fakes ACS for exactly
one vendor:device, which is narrower than `downstream` or `multifunction`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SysfsError
from ..model import PciAddress
from ..sysfs import PciDevice, Sysfs
from . import pciconfig
from .pciconfig import ConfigInfo

OK, NOT_NEEDED, NO_ACS, ACS_OFF, PCI_BRIDGE, UNREADABLE = (
    "ok", "not needed", "no ACS", "ACS not enabled", "PCI bridge", "unreadable")
BLOCKING = (NO_ACS, ACS_OFF)

OVERRIDE_WARNING = ("pcie_acs_override needs a kernel carrying the out-of-tree ACS override "
                    "patch (e.g. Proxmox VE's); it makes the kernel trust a bridge that does not "
                    "isolate its devices, so a guest may reach the devices behind the same bridge "
                    "by peer-to-peer DMA")


@dataclass(frozen=True)
class Hop:
    device: PciDevice
    role: str          # "device" or "bridge"
    port: str          # port type as the config space says, or "?" when unreadable
    verdict: str
    detail: str

    @property
    def blocks(self) -> bool:
        return self.verdict in BLOCKING

    @property
    def ident(self) -> str:
        return f"{self.device.vendor}:{self.device.device}"


@dataclass(frozen=True)
class AcsReport:
    device: PciDevice
    group: int | None
    peers: tuple[PciAddress, ...]
    hops: tuple[Hop, ...]

    @property
    def isolated(self) -> bool:
        return self.group is not None and not self.peers

    @property
    def blockers(self) -> tuple[Hop, ...]:
        return tuple(h for h in self.hops if h.blocks)

    @property
    def needs_override(self) -> bool:
        return self.group is not None and not self.isolated and bool(self.blockers)


def report(sysfs: Sysfs, address: PciAddress, groups: dict[int, list[PciAddress]] | None = None) -> AcsReport:
    groups = sysfs.iommu_groups() if groups is None else groups
    dev = sysfs.device(address)
    members = groups.get(dev.iommu_group, []) if dev.iommu_group is not None else []
    peers = tuple(a for a in members if a != address)
    hops = [judge(sysfs, dev, "device")]
    hops += [judge(sysfs, sysfs.device(up), "bridge") for up in sysfs.upstream(address)]
    return AcsReport(dev, dev.iommu_group, peers, tuple(hops))


def judge(sysfs: Sysfs, dev: PciDevice, role: str) -> Hop:
    try:
        info = pciconfig.parse(sysfs.config_space(dev.address))
    except SysfsError as exc:
        return Hop(dev, role, "?", UNREADABLE, f"config space unreadable ({exc.problem}); run as root")
    verdict, detail = verdict_for(info, role)
    port = info.port_name + (", multi-function" if info.multifunction else "")
    return Hop(dev, role, port, verdict, detail)


def verdict_for(info: ConfigInfo, role: str) -> tuple[str, str]:
    """The kernel's pci_acs_enabled() decision for one hop, with the reason."""
    if info.size < 0x40:
        return UNREADABLE, f"only {info.size} bytes of config space; not a config space dump"
    if info.size <= 0x40:
        # drivers/pci/pci-sysfs.c: readers without CAP_SYS_ADMIN get the first 64 bytes only.
        return UNREADABLE, "only the first 64 bytes of config space are readable; run as root"
    if not info.is_pcie:
        return PCI_BRIDGE if role == "bridge" else NOT_NEEDED, "conventional PCI: cannot isolate"
    if info.port_type in (0x7, 0x8, 0xA):
        return PCI_BRIDGE, f"{info.port_name}: the kernel never isolates behind it"
    needs = info.port_type in (pciconfig.ROOT_PORT, pciconfig.DOWNSTREAM) or info.multifunction
    if not needs:
        return NOT_NEEDED, "single function: ACS does not apply"
    if not info.extended_readable:
        return UNREADABLE, "extended config space (past 256 bytes) not accessible; run as root"
    if info.acs is None:
        return NO_ACS, "no Access Control Services capability"
    if not info.acs.enabled:
        return ACS_OFF, f"ACS present but {pciconfig.flag_names(info.acs.missing)} not enabled"
    if not info.acs.capability & pciconfig.REQ_ACS_FLAGS:
        return OK, "ACS present, no controls: hard-wired isolation"
    return OK, f"ACS enabled ({pciconfig.flag_names(info.acs.control & pciconfig.REQ_ACS_FLAGS)})"


def override_ids(reports: list[AcsReport]) -> list[str]:
    """vendor:device of every blocking hop of the reports that need an override, in walk order."""
    ids: list[str] = []
    for rep in reports:
        if rep.needs_override:
            for hop in rep.blockers:
                if hop.ident not in ids:
                    ids.append(hop.ident)
    return ids


def override_arg(ids: list[str]) -> str | None:
    """The kernel argument; the patch reads a comma-separated list of `id:VVVV:DDDD`."""
    return "pcie_acs_override=" + ",".join(f"id:{i}" for i in ids) if ids else None
