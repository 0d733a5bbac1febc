"""The one module that knows sysfs.

Everything vfalloc reads from or writes to `/sys` goes through `Sysfs`, rooted at a path (default
`/sys`) so tests build real fake trees of files and symlinks. Reads turn the kernel's layout into
the frozen values of `model`; callers never see paths. An attribute that must be there and cannot
be read is a SysfsError naming the file, never a default. This module makes no decisions about
pools or leases.

Layout relied on (Documentation/ABI/testing/sysfs-bus-pci, Linux 6.x):
  bus/pci/devices/DBDF -> ../../../devices/pci0000:00/.../DBDF
  DBDF/{vendor,device,class,numa_node,sriov_totalvfs,sriov_numvfs,sriov_drivers_autoprobe,config}
  DBDF/virtfnN -> ../VF_DBDF (on a PF), DBDF/physfn -> ../PF_DBDF (on a VF)
  DBDF/driver -> .../bus/pci/drivers/NAME, DBDF/iommu_group -> .../kernel/iommu_groups/N
  DBDF/net/IFNAME/ (a netdev on this function), class/net/IFNAME -> .../DBDF/net/IFNAME
Network interfaces (Documentation/ABI/testing/sysfs-class-net, net/core/net-sysfs.c and
net/core/dev.c netdev_adjacent_sysfs_add, Linux 3.11 to 6.x):
  class/net/IFNAME/{address,uevent} (uevent: DEVTYPE=bridge|vlan|bond for those kinds)
  class/net/IFNAME/master -> ../UPPER (a bridge port's bridge, a bond slave's bond)
  class/net/IFNAME/lower_LOWER -> ../LOWER (a VLAN's real device, a bond's or bridge's ports)
  class/net/BR/bridge/ and class/net/BR/brif/PORT (a Linux bridge and its ports)
"""

from __future__ import annotations

import errno
import os

from .errors import SysfsError, UsageError, shown
from .model import MAX_VFS, PF, VF, Host, PciAddress, whole_number
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # the FDB's records are imported where they are read: a listing needs none
    from .fdb.entries import Link

DEFAULT_ROOT = "/sys"


class PciDevice(Record):
    """Any PCI function, for the host checks (IOMMU groups, ACS)."""

    address: PciAddress
    vendor: str
    device: str
    pci_class: str
    driver: str | None
    iommu_group: int | None
    numa_node: int | None


_KINDS = {"bridge", "vlan", "bond"}


class Sysfs:
    """Paths are plain strings inside this class: a `vfalloc list` on a thousand VFs makes some
    ten thousand of them, and pathlib objects cost more than the system calls."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self._root = os.fspath(root).rstrip("/") or ""
        self._devices = f"{self._root}/bus/pci/devices"

    # -- paths (private to this module's users: they get values, not paths) --
    def _dev(self, address: PciAddress | str) -> str:
        return f"{self._devices}/{address}"

    def describe(self, address: PciAddress | str, attr: str = "") -> str:
        """The path of a device attribute, for messages."""
        path = self._dev(address)
        return f"{path}/{attr}" if attr else path

    # -- low-level reads --
    def _read(self, path: str) -> str:
        text = self._read_optional(path)
        if text is None:
            raise SysfsError(path, f"cannot read ({os.strerror(errno.ENOENT)})")
        return text

    def _read_optional(self, path: str) -> str | None:
        """The attribute's text, None when it does not exist (any other error is an error)."""
        # os.open/os.read: sysfs attributes are one small read; a text file object per
        # attribute costs more than the read itself.
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, 65536)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SysfsError(path, f"cannot read ({exc.strerror})") from exc
        return data.decode("utf-8", "replace").strip()

    def _read_int(self, path: str) -> int:
        return self._number(path, self._read(path))

    @staticmethod
    def _number(path: str, text: str) -> int:
        try:
            return int(text, 0)
        except ValueError as exc:
            raise SysfsError(path, f"holds {text!r}, not a number") from exc

    def _link_name(self, path: str) -> str | None:
        try:
            return os.readlink(path).rpartition("/")[2]  # the link's last component
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SysfsError(path, f"cannot read link ({exc.strerror})") from exc

    def _numa(self, dev: str) -> int | None:
        path = f"{dev}/numa_node"
        text = self._read_optional(path)  # absent without CONFIG_NUMA
        if text is None:
            return None
        node = self._number(path, text)
        return None if node < 0 else node

    def _group(self, dev: str) -> int | None:
        path = f"{dev}/iommu_group"
        name = self._link_name(path)
        if name is None:
            return None
        group = whole_number(name, 1 << 31)  # the kernel names groups by an int id (iommu_group_alloc)
        if group is None:
            raise SysfsError(path, f"links to {shown(repr(name))}, which is not an IOMMU group number",
                             "check the sysfs root: the kernel names IOMMU groups 0, 1, 2, ...")
        return group

    def _netdev(self, dev: str) -> str | None:
        try:
            names = sorted(os.listdir(f"{dev}/net"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SysfsError(f"{dev}/net", f"cannot list ({exc.strerror})") from exc
        return names[0] if names else None

    def _hex_id(self, path: str) -> str:
        text = self._read(path)
        return text[2:] if text.startswith("0x") else text

    # -- inventory --
    def pci_addresses(self) -> list[PciAddress]:
        return sorted(PciAddress.parse(n) for n in self._device_names() if PciAddress.looks_like(n))

    def pf_addresses(self) -> list[PciAddress]:
        """The SR-IOV PFs: the functions with sriov_totalvfs (most entries are VFs, which have none)."""
        return sorted(PciAddress.parse(n) for n in self._device_names()
                      if os.path.exists(f"{self._devices}/{n}/sriov_totalvfs") and PciAddress.looks_like(n))

    def _device_names(self) -> list[str]:
        # Every Linux with PCI has this directory, with or without devices: its absence means a
        # wrong sysfs root, and taking it for "no VFs" would make every lease look stale.
        try:
            return os.listdir(self._devices)
        except FileNotFoundError as exc:
            raise SysfsError(self._devices, "does not exist",
                             "is sysfs mounted there? check --sysfs-root / VFALLOC_SYSFS_ROOT") from exc
        except OSError as exc:
            raise SysfsError(self._devices, f"cannot list ({exc.strerror})") from exc

    def is_pf(self, address: PciAddress) -> bool:
        return os.path.exists(f"{self._dev(address)}/sriov_totalvfs")

    def read_host(self, only: set[PciAddress] | None = None, brief: bool = False,
                  vfs_of: set[PciAddress] | None = None, vf_netdevs: bool = True) -> Host:
        """Every SR-IOV PF (or only those in `only`) with its VFs. `brief` reads of each VF only
        what allocation needs (address, index; the NUMA node is the PF's, as a VF sits on the
        same device) and leaves driver, netdev, IDs and IOMMU group out: the hook's fast path.
        With `vfs_of`, only those PFs' VFs are read and the others are left `unread` in the
        Host; this implies `brief`, whose VFs are on their PF's NUMA node, which the allocator's
        choice among unread PFs relies on. Without `vf_netdevs`, the VFs' network interfaces
        are not looked up (their `netdev` is None): `vfalloc list` shows all else of a VF."""
        brief = brief or vfs_of is not None
        if only is None:
            pfs = self._every_pf(brief, vfs_of, vf_netdevs)
        else:
            pfs = tuple(self._pf(a, brief, vfs_of is None or a in vfs_of, vf_netdevs) for a in sorted(only)
                        if self.is_pf(a))
        unread = frozenset(pf.address for pf in pfs if vfs_of is not None and pf.address not in vfs_of)
        return Host(pfs, unread)

    def _every_pf(self, brief: bool, vfs_of: set[PciAddress] | None, vf_netdevs: bool) -> tuple[PF, ...]:
        """Every SR-IOV PF, in address order, with its VFs if `vfs_of` is None or holds it. A
        function is a PF when it has sriov_totalvfs, and a VF of a PF read already is not asked:
        the kernel shows the sriov_* files on PFs only (drivers/pci/iov.c,
        sriov_pf_attrs_are_visible: dev_is_pf; Linux 5.x and 6.x), and a VF's routing ID is its
        PF's plus the First VF Offset and a stride (pci_iov_virtfn_bus, pci_iov_virtfn_devfn), so
        in address order a PF comes before its VFs. On a host of a thousand VFs this spares a
        thousand stat calls; were a VF ever listed before its PF, it would only be asked."""
        pfs = []
        vfs: set[str] = set()
        for name in sorted(self._device_names()):
            if name in vfs or not os.path.exists(f"{self._devices}/{name}/sriov_totalvfs"):
                continue
            if not PciAddress.looks_like(name):
                continue
            address = PciAddress.parse(name)
            pf = self._pf(address, brief, vfs_of is None or address in vfs_of, vf_netdevs)
            pfs.append(pf)
            vfs.update(str(vf.address) for vf in pf.vfs)
        return tuple(sorted(pfs, key=lambda pf: pf.address))

    def read_pf(self, address: PciAddress, brief: bool = False) -> PF:
        if not self.is_pf(address):
            raise SysfsError(self._dev(address), "is not an SR-IOV physical function (no sriov_totalvfs)")
        return self._pf(address, brief, vfs=True)

    def _pf(self, address: PciAddress, brief: bool, vfs: bool, vf_netdevs: bool = True) -> PF:
        """A function known to be a PF (read_host found it so): its record, VFs if `vfs`."""
        dev = self._dev(address)
        netdev = self._netdev(dev)
        numa = self._numa(dev)
        return PF(
            address=address,
            netdev=netdev,
            vendor=self._hex_id(f"{dev}/vendor"),
            device=self._hex_id(f"{dev}/device"),
            driver=self._link_name(f"{dev}/driver"),
            totalvfs=self._read_int(f"{dev}/sriov_totalvfs"),
            numvfs=self._read_int(f"{dev}/sriov_numvfs"),
            numa_node=numa,
            iommu_group=self._group(dev),
            vfs=self._read_vfs(address, dev, brief, numa, vf_netdevs) if vfs else (),
            link_up=self._link_up(dev, netdev),
        )

    def _read_vfs(self, pf: PciAddress, dev: str, brief: bool, numa: int | None,
                  netdevs: bool) -> tuple[VF, ...]:
        try:
            names = os.listdir(dev)
        except OSError as exc:
            raise SysfsError(dev, f"cannot list ({exc.strerror})") from exc
        ids: tuple[str, str] | None = None
        vfs = []
        for name in names:
            index = whole_number(name[6:], MAX_VFS) if name.startswith("virtfn") else None
            if index is not None:
                address = self._vf_address(f"{dev}/{name}")
                if brief:
                    vfs.append(VF(address, index, pf, "", "", None, None, numa, None))
                    continue
                if ids is None:
                    # Every VF of a PF has the PF's vendor ID and the one VF Device ID of the PF's
                    # SR-IOV capability (drivers/pci/iov.c, pci_iov_add_virtfn, since Linux
                    # 2.6.30): read them from one VF, not from each.
                    vdev = self._dev(address)
                    ids = (self._hex_id(f"{vdev}/vendor"), self._hex_id(f"{vdev}/device"))
                vfs.append(self._read_vf(pf, index, address, ids, netdevs))
        return tuple(sorted(vfs, key=lambda vf: vf.index))

    def _vf_address(self, link: str) -> PciAddress:
        target = self._link_name(link)
        try:
            return PciAddress.parse(target or "")
        except UsageError as exc:
            raise SysfsError(link, "does not point to a PCI function") from exc

    def _read_vf(self, pf: PciAddress, index: int, address: PciAddress, ids: tuple[str, str], netdev: bool) -> VF:
        vdev = self._dev(address)
        return VF(
            address=address,
            index=index,
            pf=pf,
            vendor=ids[0],
            device=ids[1],
            driver=self._link_name(f"{vdev}/driver"),
            netdev=self._netdev(vdev) if netdev else None,
            numa_node=self._numa(vdev),
            iommu_group=self._group(vdev),
        )

    def _link_up(self, dev: str, netdev: str | None) -> bool | None:
        if netdev is None:
            return None
        state = self._read_optional(f"{dev}/net/{netdev}/operstate")
        return None if state is None else state == "up"

    # -- any PCI function, for host checks --
    def device(self, address: PciAddress) -> PciDevice:
        dev = self._dev(address)
        if not os.path.exists(dev):
            raise SysfsError(dev, "no such PCI device", "check the address with `lspci -D`")
        return PciDevice(
            address=address,
            vendor=self._hex_id(f"{dev}/vendor"),
            device=self._hex_id(f"{dev}/device"),
            pci_class=self._hex_id(f"{dev}/class"),
            driver=self._link_name(f"{dev}/driver"),
            iommu_group=self._group(dev),
            numa_node=self._numa(dev),
        )

    def netdev_pci(self, ifname: str) -> PciAddress | None:
        """The PCI function behind a network interface name, if any.

        class/net/IFNAME links to the netdev's own directory, which the kernel makes inside its
        parent device's (net/core/net-sysfs.c, netdev_register_kobject: dev.parent; Linux 2.6.x
        to 6.x): `.../0000:01:00.0/net/IFNAME`. One readlink answers where a realpath of the
        `device` link would cost a stat of every path component."""
        if not ifname or "/" in ifname or ifname in (".", ".."):
            return None
        try:
            target = os.readlink(f"{self._root}/class/net/{ifname}")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SysfsError(f"{self._root}/class/net/{ifname}", f"cannot read link ({exc.strerror})") from exc
        parts = target.split("/")
        if len(parts) >= 3 and parts[-1] == ifname and parts[-2] == "net" and PciAddress.looks_like(parts[-3]):
            return PciAddress.parse(parts[-3])
        return None  # a virtual netdev (devices/virtual/net), or one on a bus that is not PCI

    # -- network interfaces, for the bridge FDB (vfalloc.fdb.entries) --
    def link_names(self) -> list[str]:
        base = f"{self._root}/class/net"
        try:
            return sorted(os.listdir(base))
        except FileNotFoundError as exc:
            raise SysfsError(base, "does not exist", "is sysfs mounted there? check --sysfs-root") from exc
        except OSError as exc:
            raise SysfsError(base, f"cannot list ({exc.strerror})") from exc

    def read_link(self, name: str) -> Link | None:
        """The interface `name`, None when there is none (or the name cannot be one)."""
        from .fdb.entries import Link

        if not name or "/" in name or name in (".", ".."):
            return None
        path = f"{self._root}/class/net/{name}"
        try:
            entries = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise SysfsError(path, f"cannot list ({exc.strerror})") from exc
        kind = ""
        for line in (self._read_optional(f"{path}/uevent") or "").splitlines():
            if line.startswith("DEVTYPE=") and line[8:] in _KINDS:
                kind = line[8:]
        if not kind and "bridge" in entries:
            kind = "bridge"
        pci = self.netdev_pci(name)
        numvfs = None
        if pci is not None:
            text = self._read_optional(f"{self._dev(pci)}/sriov_numvfs")
            numvfs = None if text is None else self._number(f"{self._dev(pci)}/sriov_numvfs", text)
        lowers = tuple(sorted(e[6:] for e in entries if e.startswith("lower_")))
        if kind == "bridge" and "brif" in entries:
            try:
                lowers = tuple(sorted(set(lowers) | set(os.listdir(f"{path}/brif"))))
            except OSError as exc:
                raise SysfsError(f"{path}/brif", f"cannot list ({exc.strerror})") from exc
        return Link(
            name=name,
            mac=(self._read_optional(f"{path}/address") or "").lower(),
            kind=kind,
            master=self._link_name(f"{path}/master") if "master" in entries else None,
            lowers=lowers,
            pci=pci,
            numvfs=numvfs,
        )

    def read_links(self) -> dict[str, Link]:
        """Every network interface of this network namespace, by name."""
        found = {}
        for name in self.link_names():
            link = self.read_link(name)
            if link is not None:
                found[name] = link
        return found

    def physfn(self, address: PciAddress) -> PciAddress | None:
        """The PF of a VF (its `physfn` link), None when it is not a VF or does not exist."""
        name = self._link_name(f"{self._dev(address)}/physfn")
        return PciAddress.parse(name) if name and PciAddress.looks_like(name) else None

    def upstream(self, address: PciAddress) -> list[PciAddress]:
        """The bridges above a device, nearest first (from its place in /sys/devices)."""
        real = os.path.realpath(self._dev(address))
        parts = real.split("/")[:-1]
        return [PciAddress.parse(n) for n in reversed(parts) if PciAddress.looks_like(n)]

    def config_space(self, address: PciAddress) -> bytes:
        """The device's PCI config space; 4096 bytes when extended capabilities are readable
        (root only: unprivileged readers get the first 64 bytes)."""
        path = f"{self._dev(address)}/config"
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise SysfsError(path, f"cannot read ({exc.strerror})", "run as root") from exc

    def iommu_groups(self) -> dict[int, list[PciAddress]]:
        base = f"{self._root}/kernel/iommu_groups"
        try:
            groups = os.listdir(base)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SysfsError(base, f"cannot list ({exc.strerror})") from exc
        result = {}
        for name in groups:
            if whole_number(name, 1 << 31) is not None:
                members = os.listdir(f"{base}/{name}/devices")
                result[int(name)] = sorted(PciAddress.parse(m) for m in members)
        return dict(sorted(result.items()))

    def iommu_units(self) -> list[str]:
        """The IOMMU units the kernel registered (class/iommu): dmarN for Intel VT-d, ivhdN for
        AMD-Vi (drivers/iommu/intel/dmar.c, amd/init.c; Linux 4.x to 6.x). Empty when the
        IOMMU is off."""
        try:
            return sorted(os.listdir(f"{self._root}/class/iommu"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SysfsError(f"{self._root}/class/iommu", f"cannot list ({exc.strerror})") from exc

    def pci_driver_exists(self, name: str) -> bool:
        return os.path.isdir(f"{self._root}/bus/pci/drivers/{name}")

    def module_loaded(self, name: str) -> bool:
        return os.path.isdir(f"{self._root}/module/{name}")

    def node_cpus(self) -> dict[int, frozenset[int]]:
        """CPUs of each NUMA node (devices/system/node/nodeN/cpulist)."""
        base = f"{self._root}/devices/system/node"
        result: dict[int, frozenset[int]] = {}
        if not os.path.isdir(base):
            return result
        for name in os.listdir(base):
            if name.startswith("node") and whole_number(name[4:], 1 << 16) is not None:
                path = f"{base}/{name}/cpulist"
                try:
                    result[int(name[4:])] = parse_cpulist(self._read(path))
                except ValueError as exc:
                    raise SysfsError(path, str(exc), "check the sysfs root") from exc
        return result

    def read_attr(self, address: PciAddress, attr: str) -> str:
        return self._read(f"{self._dev(address)}/{attr}")

    # -- the one seam where vfalloc writes sysfs --
    def write_attr(self, address: PciAddress, attr: str, value: str) -> None:
        """Write one attribute of a PCI function. The kernel's errno is kept on the error
        (`err.errno`) so callers can explain it (e.g. ENOMEM from sriov_numvfs)."""
        path = f"{self._dev(address)}/{attr}"
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "unknown error")
            raise SysfsError(path, f"write of {value!r} failed ({reason})", errno=exc.errno) from exc


MAX_CPUS = 1 << 16  # past the kernel's largest NR_CPUS (CONFIG_NR_CPUS_RANGE_END, 8192)


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse the kernel/libvirt list syntax "0-3,8,10-11" (libvirt also allows "^2")."""
    include: set[int] = set()
    exclude: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        target = exclude if part.startswith("^") else include
        part = part.lstrip("^")
        lo, _, hi = part.partition("-")
        first, last = whole_number(lo, MAX_CPUS), whole_number(hi or lo, MAX_CPUS)
        if first is None or last is None:
            raise ValueError(f"{shown(repr(text))} is not a CPU/node list")
        target.update(range(first, last + 1))
    return frozenset(include - exclude)
