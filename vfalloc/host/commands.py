"""The `vfalloc host ...` command line: argparse wiring only. cli.py calls `register`; each
subcommand's handler (`handler(args, ctx) -> exit code`) lives in `show` (commands that only read)
or `change` (commands that write, all with --dry-run).

Owns: flags and help texts. Must not: hold logic or output formats (show, change and the modules
below them do).
"""

from __future__ import annotations

from ..hookcmd import DEFAULT_HOOKS_DIR
from .persist import METHODS


def _lazy(module: str, name: str):
    """The handler `name` of `module`, imported only when its command runs: building the parser
    for `vfalloc list` must not load the host checks."""

    def handler(args, ctx) -> int:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(args, ctx)

    return handler


cmd_check, cmd_iommu_groups, cmd_acs = (_lazy("show", n) for n in ("cmd_check", "cmd_iommu_groups", "cmd_acs"))
cmd_kernel_args, cmd_numvfs, cmd_persist, cmd_vf_driver = (
    _lazy("change", n) for n in ("cmd_kernel_args", "cmd_numvfs", "cmd_persist", "cmd_vf_driver"))

SUBCOMMANDS = ("check", "iommu-groups", "acs", "kernel-args", "numvfs", "persist", "vf-driver")


def register(sub, common=None) -> None:
    parents = [common] if common is not None else []
    host = sub.add_parser("host", help="host prerequisites: IOMMU, ACS, kernel args, VFs, persistence",
                          description="Check and set up what SR-IOV passthrough needs on this host. "
                                      "Files are written under --root; --dry-run shows the change.")
    hsub = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND", parser_class=type(host))
    hsub.required = True

    def add(name: str, helptext: str, description: str, changes: bool = False):
        p = hsub.add_parser(name, parents=parents, help=helptext, description=description)
        p.add_argument("--root", default="/", metavar="DIR",
                       help="treat DIR as / for every file read or written under /etc (default /)")
        if changes:
            p.add_argument("--dry-run", action="store_true", help="print the diff or the writes, change nothing")
        return p

    p = add("check", "check every prerequisite (ok/warn/fail with the fix)",
            "The doctor: IOMMU, kernel args, vfio-pci, each PF's VFs, link, IOMMU isolation, VF driver "
            "policy, persistence, the libvirt hook and other owners of numvfs. Exit 1 when a check fails.")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--hooks-dir", default=DEFAULT_HOOKS_DIR, help="libvirt's hook directory, under --root")
    p.set_defaults(func=cmd_check)

    p = add("iommu-groups", "list IOMMU groups and their devices",
            "Every IOMMU group with its devices (address, vendor:device, class, driver) from sysfs; "
            "names from lspci's ID database when lspci is installed.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_iommu_groups)

    p = add("acs", "explain shared IOMMU groups: bridges without ACS",
            "Walk from DEVICE (default: every SR-IOV PF) up to its root port, read each hop's PCIe "
            "config space, report which lack Access Control Services and propose pcie_acs_override.")
    p.add_argument("device", nargs="?", help="PF/interface name or PCI address")
    p.set_defaults(func=cmd_acs)

    p = add("kernel-args", "put IOMMU (and ACS/realloc) args into GRUB_CMDLINE_LINUX",
            "Edit GRUB_CMDLINE_LINUX in /etc/default/grub (or the /etc/default/grub.d/*.cfg that sets "
            "it) idempotently: intel_iommu=on iommu=pt on Intel, iommu=pt on AMD, plus the flags.",
            changes=True)
    p.add_argument("--add", action="append", default=[], metavar="ARG", help="another argument (repeatable)")
    p.add_argument("--acs-override", action="append", default=[], metavar="VVVV:DDDD",
                   help="add pcie_acs_override=id:VVVV:DDDD (needs a kernel with the ACS override patch)")
    p.add_argument("--realloc", action="store_true", help="add pci=realloc (BIOS without SR-IOV support)")
    p.add_argument("--assign-busses", action="store_true",
                   help="add pci=assign-busses (VFs need bus numbers; may renumber PCI addresses)")
    p.add_argument("--no-defaults", action="store_true", help="do not add the vendor's IOMMU arguments")
    p.add_argument("--update", action="store_true",
                   help="run update-grub / grubby / grub2-mkconfig afterwards (only with --root /)")
    p.set_defaults(func=cmd_kernel_args)

    p = add("numvfs", "set a PF's number of VFs (0, then N)",
            "Write 0 then N to the PF's sriov_numvfs, wait for the VFs, explain the kernel's refusals.",
            changes=True)
    p.add_argument("pf", help="PF interface name or PCI address")
    p.add_argument("count", type=int, help="number of VFs (0 removes them)")
    p.add_argument("--force", action="store_true", help="change even when VFs of the PF are leased")
    p.add_argument("--autoprobe", choices=("on", "off"), help="set sriov_drivers_autoprobe first")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the VFs (default 10)")
    p.set_defaults(func=cmd_numvfs)

    p = add("persist", "create the pools' VFs at every boot (systemd unit or udev rule)",
            "Write a oneshot unit (default) or udev rules that create each PF's VFs at boot, from "
            "numvfs in the config or PF=N arguments.", changes=True)
    p.add_argument("specs", nargs="*", metavar="PF=N", help="VF count for a PF (overrides the config)")
    p.add_argument("--method", choices=METHODS, default="systemd", help="systemd (default) or udev")
    p.add_argument("--autoprobe", choices=("on", "off"), help="also set sriov_drivers_autoprobe at boot")
    p.add_argument("--enable", action="store_true", help="run `systemctl enable` for the unit")
    p.add_argument("--exec", dest="exe", help="vfalloc's absolute path in the unit (default: from PATH)")
    p.add_argument("--remove", action="store_true", help="remove the unit and rules vfalloc wrote")
    p.set_defaults(func=cmd_persist)

    p = add("vf-driver", "keep host drivers off VFs: blacklist or sriov_drivers_autoprobe",
            "--blacklist DRIVER writes a modprobe.d blacklist; --autoprobe off sets the PFs' "
            "sriov_drivers_autoprobe so new VFs stay unbound without banning the driver.", changes=True)
    p.add_argument("pfs", nargs="*", metavar="PF", help="PFs for --autoprobe (default: the pools' PFs)")
    p.add_argument("--blacklist", metavar="DRIVER", help="VF driver to blacklist (igbvf, iavf, ixgbevf, ...)")
    p.add_argument("--autoprobe", choices=("on", "off"), help="set the PFs' sriov_drivers_autoprobe")
    p.add_argument("--remove", action="store_true", help="with --blacklist: remove that blacklist line")
    p.set_defaults(func=cmd_vf_driver)
