"""vfalloc: hands SR-IOV virtual functions to libvirt/QEMU virtual machines."""

__version__ = "0.1.0"
