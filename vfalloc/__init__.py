"""vfalloc: hands SR-IOV virtual functions to libvirt/QEMU virtual machines."""

__version__ = "0.1.0"
# libvirt's hook directory (hookfile.py installs the hook below it, host/check.py looks there, cli.py
# shows it as the default): here because every command's parser names it and must not import
# hookfile, with pathlib and typing, to do so.
HOOKS_DIR = "/etc/libvirt/hooks"
