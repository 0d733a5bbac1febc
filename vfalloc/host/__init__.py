"""`vfalloc host ...`: the host prerequisites of SR-IOV passthrough, one module per step of the
admin's manual process (kernel args, IOMMU groups, ACS, numvfs, its persistence, VF drivers) and
a doctor that checks them all.

Rules for every module in this package: sysfs is read and written through `vfalloc.sysfs.Sysfs`
only;
every file written goes through `rootfs.RootFS` (under `--root`, with `--dry-run`); nothing here
talks to libvirt or touches the lease table except to read it. `commands` wires argparse, `show`
and `change` hold the handlers; the other modules never print.
"""
