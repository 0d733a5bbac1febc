"""The host prerequisites of SR-IOV passthrough behind `vfalloc host ...`, one module per step
of the admin's manual process: kernel arguments (cmdline: their meaning; grub and kernelcmdline:
the files that set them; bootsetup: which boot set-up a host has and its tool; boot_config: the
edit plan and running the tool), IOMMU groups (iommu), ACS (acs,
pciconfig), numvfs, its persistence (persist), VF drivers (vfdriver), other owners of numvfs
(owners), and the doctor that checks them all (check).

Rules for every module in this package: sysfs is read and written through `vfalloc.sysfs.Sysfs`
only; every file written goes through `rootfs.RootFS` (under `--root`, with `--dry-run`); nothing
here talks to libvirt or touches the lease table except to read it; nothing here prints (the
handlers in vfalloc.commands.host_show and host_change do).
"""
