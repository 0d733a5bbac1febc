"""`vfalloc host iommu-groups`: every IOMMU group with its devices, from sysfs alone
(kernel/iommu_groups/N/devices, Documentation/ABI/testing/sysfs-kernel-iommu_groups), with the
device names lspci knows when lspci is installed.

A group is the unit vfio hands to a guest: a VF can go to a guest alone only if its group holds
nothing else (bridges aside, vfio refuses a group with devices bound to host drivers).

Owns: the group table and the lspci names (lspci reads a dump built from sysfs IDs, never the
real bus). Must not: judge isolation (check does), explain it (acs does), or print (commands/host_show does).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from ..sysfs import PciDevice, Sysfs


@dataclass(frozen=True)
class Group:
    number: int
    devices: tuple[PciDevice, ...]


def groups(sysfs: Sysfs) -> list[Group]:
    return [Group(n, tuple(sysfs.device(a) for a in members))
            for n, members in sysfs.iommu_groups().items()]


def lspci_names(devices: list[PciDevice]) -> dict[str, str]:
    """address -> "Vendor Device" from lspci's ID database. lspci reads a dump built from the
    IDs sysfs gave (`lspci -F`), so it never touches the real bus and works on any sysfs root."""
    if not devices or shutil.which("lspci") is None:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".lspci", delete=True) as dump:
        dump.write(_dump(devices))
        dump.flush()
        try:
            proc = subprocess.run(["lspci", "-F", dump.name, "-D", "-mm"], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return {}
    return _parse_mm(proc.stdout) if proc.returncode == 0 else {}


def _dump(devices: list[PciDevice]) -> str:
    """`lspci -x` format: the first 16 bytes are enough for names (vendor, device, class)."""
    blocks = []
    for dev in devices:
        try:
            vendor, device = int(dev.vendor, 16), int(dev.device, 16)
            cls = int(dev.pci_class, 16)
        except ValueError:
            continue
        raw = [vendor & 0xFF, vendor >> 8, device & 0xFF, device >> 8, 0, 0, 0, 0,
               0, cls & 0xFF, (cls >> 8) & 0xFF, (cls >> 16) & 0xFF, 0, 0, 0, 0]
        blocks.append(f"{dev.address} dump\n00: " + " ".join(f"{b:02x}" for b in raw) + "\n")
    return "\n".join(blocks)


def _parse_mm(text: str) -> dict[str, str]:
    import shlex

    names = {}
    for line in text.splitlines():
        try:
            fields = shlex.split(line)
        except ValueError:
            continue
        if len(fields) >= 4:
            names[fields[0]] = f"{fields[2]} {fields[3]}"
    return names


def describe(dev: PciDevice) -> str:
    return f"{dev.address}  {dev.vendor}:{dev.device}  class {dev.pci_class}  driver {dev.driver or '-'}"

