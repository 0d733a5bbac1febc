"""The least `vfalloc list` can cost on the bench's hosts: reading sysfs, and nothing else.

This is not vfalloc and shares none of its code: it is a yardstick. It reads what every listing
of a host's VFs must read, with the fewest system calls Python makes for it: the PCI device
directory (whose VFs are not asked whether they are PFs), and for each SR-IOV PF its netdev,
IDs, driver, sriov_totalvfs and sriov_numvfs, NUMA node, IOMMU group and link state; for each
of its VFs the virtfn link, driver, NUMA node and IOMMU group (a VF's netdev is in no
listing). It has no config, no lease table, no model and prints one count. `bench/run.py` times it next to the floor and `vfalloc list`, as the
limit that the listing's own I/O sets.
"""

import os
import sys


def read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)


def link(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except FileNotFoundError:
        return None


def netdev(dev: str) -> str | None:
    try:
        names = os.listdir(f"{dev}/net")
    except FileNotFoundError:
        return None
    return min(names) if names else None


def main() -> int:
    devices = f"{os.environ.get('VFALLOC_SYSFS_ROOT', '/sys')}/bus/pci/devices"
    seen = []
    vfs = set()  # a VF is no PF: it is not asked (its PF, earlier in address order, named it)
    for name in sorted(os.listdir(devices)):
        if name in vfs:
            continue
        dev = f"{devices}/{name}"
        total = read(f"{dev}/sriov_totalvfs")
        if total is None:
            continue
        net = netdev(dev)
        pf = (name, net, read(f"{dev}/vendor"), read(f"{dev}/device"), link(f"{dev}/driver"), total,
              read(f"{dev}/sriov_numvfs"), read(f"{dev}/numa_node"), link(f"{dev}/iommu_group"),
              read(f"{dev}/net/{net}/operstate") if net else None)
        seen.append(pf)
        for entry in os.listdir(dev):
            if entry.startswith("virtfn"):
                vf = link(f"{dev}/{entry}")
                vfs.add(vf)
                vdev = f"{devices}/{vf}"
                seen.append((vf, entry, link(f"{vdev}/driver"), read(f"{vdev}/numa_node"), link(f"{vdev}/iommu_group")))
    print(len(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
