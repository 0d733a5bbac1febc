"""Builds real fake sysfs trees (files and symlinks laid out as Linux 6.x lays them out) for
realistic SR-IOV hosts, so the code under test reads them through its normal paths.

`FakeSys(root)` writes into `root`; `add_pf(...)` creates a PF with its VFs, their iommu groups,
drivers and netdevs. The ready-made hosts at the bottom are the ones the tests speak of: a
four-port I350, an X710, a ConnectX on two NUMA nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _bdf(domain: int, bus: int, slot: int, fn: int) -> str:
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{fn}"


@dataclass
class FakeSys:
    root: Path
    next_group: int = 1
    bridges: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for sub in ("bus/pci/devices", "bus/pci/drivers", "class/net", "kernel/iommu_groups",
                    "module", "devices/system/node"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- primitives --
    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def _link(self, link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))

    def group(self, number: int | None = None) -> int:
        if number is None:
            number = self.next_group
        self.next_group = max(self.next_group, number + 1)
        (self.root / "kernel" / "iommu_groups" / str(number) / "devices").mkdir(parents=True, exist_ok=True)
        return number

    def driver(self, name: str) -> Path:
        path = self.root / "bus" / "pci" / "drivers" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bridge(self, bdf: str, parent: str | None = None, vendor: str = "8086", device: str = "a110",
               config: bytes | None = None, group: int | None = None) -> Path:
        """A PCIe root port or switch port; devices added under it sit below it in /sys/devices."""
        if parent is None:
            base = self.root / "devices" / f"pci{bdf[:4]}:00"
        else:
            base = self.bridges[parent]
        path = base / bdf
        self._device(path, bdf, vendor, device, "0x060400", driver="pcieport", numa=-1, group=group)
        if config is not None:
            (path / "config").write_bytes(config)
        self.bridges[bdf] = path
        return path

    def _device(self, path: Path, bdf: str, vendor: str, device: str, pci_class: str,
                driver: str | None, numa: int, group: int | None) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self._write(path / "vendor", f"0x{vendor}")
        self._write(path / "device", f"0x{device}")
        self._write(path / "class", pci_class)
        self._write(path / "numa_node", str(numa))
        self._link(self.root / "bus" / "pci" / "devices" / bdf, path)
        if driver:
            drv = self.driver(driver)
            self._link(path / "driver", drv)
            self._link(drv / bdf, path)
        if group is not None:
            gdir = self.root / "kernel" / "iommu_groups" / str(self.group(group))
            self._link(path / "iommu_group", gdir)
            self._link(gdir / "devices" / bdf, path)
        return path

    def netdev(self, path: Path, ifname: str, up: bool = True) -> None:
        ndir = path / "net" / ifname
        ndir.mkdir(parents=True, exist_ok=True)
        self._write(ndir / "operstate", "up" if up else "down")
        self._link(ndir / "device", path)
        self._link(self.root / "class" / "net" / ifname, ndir)

    def add_pf(self, bdf: str, *, netdev: str | None, vendor: str, device: str, vf_device: str,
               driver: str, vf_driver: str | None, totalvfs: int, numvfs: int,
               vf_bus: int | None = None, vf_offset: int = 0x80, vf_stride: int = 4, numa: int = -1,
               bridge: str | None = None, vf_netdevs: bool = True, own_groups: bool = True,
               shared_group: int | None = None, up: bool = True) -> Path:
        if bridge is None:
            bridge = "0000:00:01.0"
            if bridge not in self.bridges:
                self.bridge(bridge, group=self.group())
        base = self.bridges[bridge]
        pf_group = shared_group if shared_group is not None else self.group()
        path = self._device(base / bdf, bdf, vendor, device, "0x020000", driver, numa, pf_group)
        self._write(path / "sriov_totalvfs", str(totalvfs))
        self._write(path / "sriov_numvfs", str(numvfs))
        self._write(path / "sriov_drivers_autoprobe", "1")
        self._write(path / "sriov_offset", str(vf_offset))
        self._write(path / "sriov_stride", str(vf_stride))
        if netdev:
            self.netdev(path, netdev, up)
        domain, bus, slot, fn = int(bdf[:4], 16), int(bdf[5:7], 16), int(bdf[8:10], 16), int(bdf[11])
        routing = (bus << 8) | (slot << 3) | fn
        for index in range(numvfs):
            rid = routing + vf_offset + vf_stride * index
            vbdf = _bdf(domain, rid >> 8 if vf_bus is None else vf_bus, (rid >> 3) & 0x1F, rid & 0x7)
            group = shared_group if not own_groups else self.group()
            vpath = self._device(base / vbdf, vbdf, vendor, vf_device, "0x020000", vf_driver, numa, group)
            self._link(vpath / "physfn", path)
            self._link(path / f"virtfn{index}", vpath)
            if vf_driver and vf_driver != "vfio-pci" and vf_netdevs:
                self.netdev(vpath, f"{netdev or 'vf'}v{index}")
        return path

    def numa_nodes(self, cpus: dict[int, str]) -> None:
        for node, cpulist in cpus.items():
            self._write(self.root / "devices" / "system" / "node" / f"node{node}" / "cpulist", cpulist)


    # -- added for tests/host/test_host_*.py: config bytes on any device, and what the kernel does on
    # a write to sriov_numvfs (remove every VF, then create the new count) --
    def config(self, bdf: str, data: bytes) -> None:
        """Put config-space bytes on a device (its sysfs `config` file)."""
        (self.root / "bus" / "pci" / "devices" / bdf / "config").write_bytes(data)

    def set_vfs(self, bdf: str, count: int, *, vf_device: str, vf_driver: str | None = None) -> None:
        pf = (self.root / "bus" / "pci" / "devices" / bdf).resolve()
        for link in sorted(pf.glob("virtfn*")):
            self._drop_vf(link.resolve())
            link.unlink()
        vendor = (pf / "vendor").read_text().strip()[2:]
        offset, stride = int((pf / "sriov_offset").read_text()), int((pf / "sriov_stride").read_text())
        domain, bus, slot, fn = int(bdf[:4], 16), int(bdf[5:7], 16), int(bdf[8:10], 16), int(bdf[11])
        routing = (bus << 8) | (slot << 3) | fn
        for index in range(count):
            rid = routing + offset + stride * index
            vbdf = _bdf(domain, rid >> 8, (rid >> 3) & 0x1F, rid & 0x7)
            vpath = self._device(pf.parent / vbdf, vbdf, vendor, vf_device, "0x020000", vf_driver, -1, self.group())
            self._link(vpath / "physfn", pf)
            self._link(pf / f"virtfn{index}", vpath)
        self._write(pf / "sriov_numvfs", str(count))

    def _drop_vf(self, vpath: Path) -> None:
        import shutil

        bdf = vpath.name
        for link in (self.root / "bus" / "pci" / "devices" / bdf, *self.root.glob(f"kernel/iommu_groups/*/devices/{bdf}"),
                     *self.root.glob(f"bus/pci/drivers/*/{bdf}")):
            if link.is_symlink():
                link.unlink()
        for net in vpath.glob("net/*"):
            (self.root / "class" / "net" / net.name).unlink(missing_ok=True)
        shutil.rmtree(vpath)

    # -- network interfaces above the NICs: bridges, VLAN devices, bonds, veths and taps, laid out
    # as net/core/net-sysfs.c and netdev_adjacent_sysfs_add (Linux 6.x) lay them out --
    def netdir(self, ifname: str) -> Path:
        return (self.root / "class" / "net" / ifname).resolve()

    def virtual_netdev(self, ifname: str, mac: str, devtype: str | None = None) -> Path:
        """A netdev with no device below it: devices/virtual/net/IFNAME (bridge, vlan, bond,
        veth, tap). uevent carries DEVTYPE for the kinds that set one (SET_NETDEV_DEVTYPE)."""
        ndir = self.root / "devices" / "virtual" / "net" / ifname
        ndir.mkdir(parents=True, exist_ok=True)
        self._write(ndir / "address", mac)
        self._write(ndir / "operstate", "up")
        self._write(ndir / "uevent", (f"DEVTYPE={devtype}\n" if devtype else "") + f"INTERFACE={ifname}\nIFINDEX=9")
        self._link(self.root / "class" / "net" / ifname, ndir)
        return ndir

    def set_mac(self, ifname: str, mac: str) -> None:
        self._write(self.netdir(ifname) / "address", mac)

    def _adjacent(self, upper: str, lower: str) -> None:
        up, low = self.netdir(upper), self.netdir(lower)
        self._link(up / f"lower_{lower}", low)
        self._link(low / f"upper_{upper}", up)

    def linux_bridge(self, name: str, mac: str, ports: list[str]) -> None:
        """A Linux bridge: bridge/ attributes, brif/PORT -> the port's brport/, and each port's
        master and brport/bridge links."""
        ndir = self.virtual_netdev(name, mac, "bridge")
        self._write(ndir / "bridge" / "forward_delay", "1500")
        (ndir / "brif").mkdir(exist_ok=True)
        for port in ports:
            self.enslave(name, port)

    def enslave(self, master: str, port: str) -> None:
        up, low = self.netdir(master), self.netdir(port)
        self._link(low / "master", up)
        self._adjacent(master, port)
        if (up / "bridge").is_dir():
            self._write(low / "brport" / "state", "3")
            self._link(low / "brport" / "bridge", up)
            self._link(up / "brif" / port, low / "brport")
        elif (up / "bonding").is_dir():
            self._write(low / "bonding_slave" / "state", "active")

    def vlan(self, name: str, lower: str, mac: str | None = None) -> None:
        low = self.netdir(lower)
        self.virtual_netdev(name, mac or (low / "address").read_text().strip(), "vlan")
        self._adjacent(name, lower)

    def bond(self, name: str, mac: str, slaves: list[str]) -> None:
        ndir = self.virtual_netdev(name, mac, "bond")
        self._write(ndir / "bonding" / "mode", "active-backup 1")
        for slave in slaves:
            self.enslave(name, slave)

    def unplug(self, master: str, port: str) -> None:
        up, low = self.netdir(master), self.netdir(port)
        for link in (low / "master", up / f"lower_{port}", low / f"upper_{master}", up / "brif" / port):
            if link.is_symlink():
                link.unlink()

# -- realistic hosts --

def i350(fs: FakeSys, numvfs: int = 7, ports: int = 4, bus: int = 1, prefix: str = "enp1s0f") -> list[str]:
    """An Intel I350-T4: four igb ports 8086:1521, up to 7 igbvf VFs each (8086:1520)."""
    names = []
    for port in range(ports):
        bdf = _bdf(0, bus, 0, port)
        fs.add_pf(bdf, netdev=f"{prefix}{port}", vendor="8086", device="1521", vf_device="1520",
                  driver="igb", vf_driver="igbvf", totalvfs=7, numvfs=numvfs, vf_offset=0x80, vf_stride=4)
        names.append(f"{prefix}{port}")
    return names


def x710(fs: FakeSys, numvfs: int = 16, bus: int = 0x3B) -> list[str]:
    """An Intel X710 two-port: i40e PFs 8086:1572, iavf VFs 8086:154c, 64 VFs a port."""
    fs.bridge("0000:3a:00.0", group=fs.group())
    names = []
    for port in range(2):
        bdf = _bdf(0, bus, 0, port)
        fs.add_pf(bdf, netdev=f"ens2f{port}", vendor="8086", device="1572", vf_device="154c",
                  driver="i40e", vf_driver="iavf", totalvfs=64, numvfs=numvfs, vf_offset=0x10 + port * 0x40,
                  vf_stride=1, bridge="0000:3a:00.0", numa=0)
        names.append(f"ens2f{port}")
    return names


def connectx(fs: FakeSys, numvfs: int = 8) -> list[str]:
    """A Mellanox ConnectX-5 pair of cards, one on each NUMA node (mlx5_core PF and VF)."""
    fs.numa_nodes({0: "0-15", 1: "16-31"})
    names = []
    for node, (bus, bridge) in enumerate(((0x5E, "0000:5d:00.0"), (0xAF, "0000:ae:00.0"))):
        fs.bridge(bridge, group=fs.group())
        bdf = _bdf(0, bus, 0, 0)
        fs.add_pf(bdf, netdev=f"ens{node + 5}f0np0", vendor="15b3", device="1017", vf_device="1018",
                  driver="mlx5_core", vf_driver="mlx5_core", totalvfs=16, numvfs=numvfs,
                  vf_offset=2, vf_stride=1, bridge=bridge, numa=node)
        names.append(f"ens{node + 5}f0np0")
    return names


def big_host(fs: FakeSys, total_vfs: int) -> list[str]:
    """A host with `total_vfs` VFs spread over PFs of 64 VFs each (for benchmarks)."""
    names = []
    pfs = max(1, (total_vfs + 63) // 64)
    for n in range(pfs):
        count = min(64, total_vfs - 64 * n)
        bus = 0x10 + n
        bridge = _bdf(0, 0, 2 + n // 8, n % 8)
        fs.bridge(bridge, group=fs.group())
        fs.add_pf(_bdf(0, bus, 0, 0), netdev=f"ens{n}f0", vendor="8086", device="1572", vf_device="154c",
                  driver="i40e", vf_driver="iavf", totalvfs=64, numvfs=count, vf_offset=1, vf_stride=1,
                  bridge=bridge, numa=n % 2)
        names.append(f"ens{n}f0")
    return names
