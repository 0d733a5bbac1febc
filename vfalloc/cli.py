"""`vfalloc ...`: the command line. Builds the one parser of every command, makes a Context,
runs the command's handler (vfalloc.commands.*) and turns every VfallocError into one line on
stderr and an exit code. Errors are caught only here; nothing below prints an error.

Owns: every flag, help text and default. Must not: hold a command's logic (the handlers and the
library do); import a handler's module before its command runs, so that `vfalloc list` loads
neither the host checks nor libvirt.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Any, Sequence, TextIO, cast

from . import __version__
from .errors import OutputError, UsageError, VfallocError, shown

COMMON = ("config", "sysfs_root", "state", "proc_root")
HOOKS_DIR = "/etc/libvirt/hooks"  # = hookfile.DEFAULT_HOOKS_DIR, without importing it for every command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        # argparse quotes the value it refused: a value of thousands of characters is cut
        message = re.sub(r"'([^']{80,})'", lambda m: "'" + shown(m[1]) + "'", message)
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def _print_message(self, message: str, file: Any = None) -> None:  # --help, --version
        if message:
            _Output(file or sys.stdout).write(message)


class _Output:
    """The stream a command prints on: a write that fails (ENOSPC on a full disk, EIO) raises
    OutputError, which main() reports in one line. A closed pipe (`vfalloc list | head`) stays
    BrokenPipeError: the reader has all it wanted."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _index(text: str) -> int:
    """A request position: ASCII digits, at most 6 (device aliases ua-vfalloc-N)."""
    from .model import whole_number

    value = whole_number(text, 999_999)
    if value is None:
        raise argparse.ArgumentTypeError(f"{shown(repr(text))} is not a request position from 0 to 999999")
    return value


def _vf_count(text: str) -> int:
    """A number of VFs: ASCII digits, at most the 16-bit TotalVFs of PCIe SR-IOV."""
    from .model import MAX_VFS, whole_number

    value = whole_number(text, MAX_VFS)
    if value is None and text.startswith("-") and whole_number(text[1:], MAX_VFS) is not None:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a number of VFs from 0 to {MAX_VFS}")
    if value is None:
        raise argparse.ArgumentTypeError(f"{shown(repr(text))} is not a number of VFs from 0 to {MAX_VFS}")
    return value


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("where vfalloc looks (flags beat VFALLOC_* variables beat the config file)")
    group.add_argument("--config", metavar="FILE",
                       help="config file (env VFALLOC_CONFIG; default /etc/vfalloc/vfalloc.toml)")
    group.add_argument("--sysfs-root", metavar="DIR", help="sysfs mount (env VFALLOC_SYSFS_ROOT; default /sys)")
    group.add_argument("--state", metavar="FILE",
                       help="lease table (env VFALLOC_STATE; default /var/lib/vfalloc/state.json)")
    group.add_argument("--proc-root", metavar="DIR", help="procfs mount (env VFALLOC_PROC_ROOT; default /proc)")
    return common


def _connect_parser() -> argparse.ArgumentParser:
    connect = argparse.ArgumentParser(add_help=False)
    connect.add_argument("-c", "--connect", metavar="URI",
                         help="libvirt URI (default: LIBVIRT_DEFAULT_URI, else qemu:///system)")
    return connect


def _handler(spec: str):
    """The handler `module:function` of vfalloc.commands, imported only when its command runs."""
    module, name = spec.split(":")

    def run(args, ctx) -> int:
        return getattr(importlib.import_module(f"vfalloc.commands.{module}"), name)(args, ctx)

    run.spec = spec  # type: ignore[attr-defined]
    return run


def build_parser() -> argparse.ArgumentParser:
    common, connect = _common_parser(), _connect_parser()
    parser = _Parser(prog="vfalloc", description="Hand SR-IOV virtual functions to libvirt/QEMU VMs.")
    parser.add_argument("--version", action="version", version=f"vfalloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _lease_commands(sub, [common, connect])
    _domain_commands(sub, [common, connect])
    _hook_commands(sub, [common])
    _host_commands(sub, [common])
    return parser


def _lease_commands(sub, parents) -> None:
    p = sub.add_parser("list", parents=parents, help="show every VF and who holds it",
                       description="One row per VF: its PF, pool, state (free, leased, stale, unusable) and "
                                   "holder. --connect is asked which domains run (libvirt's status directory "
                                   "when it does not answer).")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_handler("leases:cmd_list"))

    p = sub.add_parser("pools", parents=parents, help="capacity of each pool and PF",
                       description="Total, free, leased and stale VFs of each pool and of each PF in it.")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_handler("leases:cmd_pools"))

    p = sub.add_parser("alloc", parents=parents[:1], help="lease a VF to a domain by hand",
                       description="Lease a VF from POOL to a domain (for admins and scripts). "
                                   "Asking again for the same domain returns its lease.")
    p.add_argument("--domain", required=True, help="domain name")
    p.add_argument("--uuid", required=True, help="domain UUID")
    p.add_argument("--pool", required=True, help="pool to take the VF from")
    p.add_argument("--mac", help="MAC for the VF (default: derived from the UUID)")
    p.add_argument("--vlan", help="VLAN id 1-4094")
    p.add_argument("--trust", choices=("on", "off"))
    p.add_argument("--spoofchk", choices=("on", "off"))
    p.add_argument("--type", choices=("interface", "hostdev"), default="interface")
    p.add_argument("--index", type=_index, default=0, help="request position (default 0)")
    p.add_argument("--json", action="store_true", help="print the lease as JSON")
    p.set_defaults(func=_handler("leases:cmd_alloc"))

    p = sub.add_parser("release", parents=parents[:1], help="give back every lease of a domain",
                       description="Give back every lease held by the domain with this UUID.")
    p.add_argument("--uuid", required=True, help="domain UUID")
    p.set_defaults(func=_handler("leases:cmd_release"))


def _domain_commands(sub, parents) -> None:
    p = sub.add_parser("request", parents=parents, help="show or change the VFs a domain asks for",
                       description="Without options: show the VF requests in DOMAIN's saved config. "
                                   "With --pool: append one request (position N = device alias ua-vfalloc-N). "
                                   "--clear removes them all (with --pool: replaces them all by one). "
                                   "Written through libvirt's metadata API into the saved config only; "
                                   "a running domain sees the change at its next start.")
    p.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
    p.add_argument("--pool", help="pool to take the VF from")
    p.add_argument("--mac", help="MAC for the VF (default: derived from the domain UUID and position)")
    p.add_argument("--vlan", help="VLAN id 1-4094 (interface only)")
    p.add_argument("--trust", choices=("on", "off"), help="VF trust, set through the PF")
    p.add_argument("--spoofchk", choices=("on", "off"), help="VF spoof checking, set through the PF")
    p.add_argument("--type", choices=("interface", "hostdev"), default=None,
                   help="interface (NIC, MAC/VLAN handled by libvirt; default) or hostdev (any PCI VF)")
    p.add_argument("--required", choices=("yes", "no"), default=None,
                   help="yes: if the VF cannot be hot-plugged after a plain start, stop the domain")
    p.add_argument("--clear", action="store_true", help="remove every request first")
    p.add_argument("--json", action="store_true", help="print the requests as JSON")
    p.set_defaults(func=_handler("domains:cmd_request"))

    p = sub.add_parser("start", parents=parents, help="start a domain with its VFs in place",
                       description="Lease the VFs DOMAIN asks for, add them to its XML and start it with "
                                   "that live XML: the guest sees the VFs from its first instruction and "
                                   "the saved config keeps only the request. If the start fails, the VFs "
                                   "are given back.")
    p.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
    p.add_argument("--paused", action="store_true", help="start with the CPUs paused")
    p.set_defaults(func=_handler("domains:cmd_start"))

    p = sub.add_parser("gc", parents=parents, help="free leases that cannot be live",
                       description="Free every stale lease: taken in an earlier boot, on a VF that is gone, "
                                   "or held for a domain that is not running (leases reserved by hand or by "
                                   "`vfalloc start` excepted). Running domains come from libvirt, or from "
                                   "libvirt's status directory when libvirt does not answer. "
                                   "`vfalloc list` shows the same verdicts without changing anything.")
    p.add_argument("--dry-run", action="store_true", help="only report what would be freed")
    p.set_defaults(func=_handler("domains:cmd_gc"))


def _hook_commands(sub, parents) -> None:
    p = sub.add_parser("install-hook", parents=parents, help="install the libvirt qemu hook",
                       description="Install vfalloc's hook as HOOKS_DIR/qemu.d/vfalloc (libvirt >= 6.5), "
                                   "running the Python vfalloc is installed in. A --config other than the "
                                   "default is written into the hook (libvirt gives hooks no environment).")
    p.add_argument("--hooks-dir", default=HOOKS_DIR, help=f"libvirt's hook directory (default {HOOKS_DIR})")
    p.add_argument("--remove", action="store_true", help="remove the hook vfalloc installed")
    p.add_argument("--dry-run", action="store_true", help="print what would be written, change nothing")
    p.set_defaults(func=_handler("install_hook:cmd_install_hook"))


def _host_commands(sub, parents) -> None:
    host = sub.add_parser("host", help="host prerequisites: IOMMU, ACS, kernel args, VFs, persistence",
                          description="Check and set up what SR-IOV passthrough needs on this host. "
                                      "Files are written under --root; --dry-run shows the change.")
    hsub = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND", parser_class=_Parser)
    hsub.required = True

    def add(name: str, helptext: str, description: str, handler: str, changes: bool = False):
        p = hsub.add_parser(name, parents=parents, help=helptext, description=description)
        p.add_argument("--root", default="/", metavar="DIR",
                       help="treat DIR as / for every file read or written under /etc (default /)")
        if changes:
            p.add_argument("--dry-run", action="store_true", help="print the diff or the writes, change nothing")
        p.set_defaults(func=_handler(handler))
        return p

    p = add("check", "check every prerequisite (ok/warn/fail with the fix)",
            "The doctor: IOMMU, kernel args, vfio-pci, each PF's VFs, link, IOMMU isolation, VF driver "
            "policy, persistence, the libvirt hook and other owners of numvfs. Exit 1 when a check fails.",
            "host_show:cmd_check")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--hooks-dir", default=HOOKS_DIR, help="libvirt's hook directory, under --root")

    p = add("iommu-groups", "list IOMMU groups and their devices",
            "Every IOMMU group with its devices (address, vendor:device, class, driver) from sysfs; "
            "names from lspci's ID database when lspci is installed.", "host_show:cmd_iommu_groups")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("acs", "explain shared IOMMU groups: bridges without ACS",
            "Walk from DEVICE (default: every SR-IOV PF) up to its root port, read each hop's PCIe "
            "config space, report which lack Access Control Services and propose pcie_acs_override.",
            "host_show:cmd_acs")
    p.add_argument("device", nargs="?", help="PF/interface name or PCI address")

    p = add("kernel-args", "put IOMMU (and ACS/realloc) args into GRUB_CMDLINE_LINUX",
            "Edit GRUB_CMDLINE_LINUX in /etc/default/grub (or the /etc/default/grub.d/*.cfg that sets "
            "it) idempotently: intel_iommu=on iommu=pt on Intel, iommu=pt on AMD, plus the flags.",
            "host_change:cmd_kernel_args", changes=True)
    p.add_argument("--add", action="append", default=[], metavar="ARG", help="another argument (repeatable)")
    p.add_argument("--acs-override", action="append", default=[], metavar="VVVV:DDDD",
                   help="add pcie_acs_override=id:VVVV:DDDD (needs a kernel with the ACS override patch)")
    p.add_argument("--realloc", action="store_true", help="add pci=realloc (BIOS without SR-IOV support)")
    p.add_argument("--assign-busses", action="store_true",
                   help="add pci=assign-busses (VFs need bus numbers; may renumber PCI addresses)")
    p.add_argument("--no-defaults", action="store_true", help="do not add the vendor's IOMMU arguments")
    p.add_argument("--update", action="store_true",
                   help="run update-grub / grubby / grub2-mkconfig afterwards (only with --root /)")

    p = add("numvfs", "set a PF's number of VFs (0, then N)",
            "Write 0 then N to the PF's sriov_numvfs, wait for the VFs, explain the kernel's refusals.",
            "host_change:cmd_numvfs", changes=True)
    p.add_argument("pf", help="PF interface name or PCI address")
    p.add_argument("count", type=_vf_count, help="number of VFs (0 removes them)")
    p.add_argument("--force", action="store_true", help="change even when VFs of the PF are leased")
    p.add_argument("--autoprobe", choices=("on", "off"), help="set sriov_drivers_autoprobe first")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the VFs (default 10)")

    p = add("persist", "create the pools' VFs at every boot (systemd unit or udev rule)",
            "Write a oneshot unit (default) or udev rules that create each PF's VFs at boot, from "
            "numvfs in the config or PF=N arguments.", "host_change:cmd_persist", changes=True)
    p.add_argument("specs", nargs="*", metavar="PF=N", help="VF count for a PF (overrides the config)")
    p.add_argument("--method", choices=("systemd", "udev"), default="systemd", help="systemd (default) or udev")
    p.add_argument("--autoprobe", choices=("on", "off"), help="also set sriov_drivers_autoprobe at boot")
    p.add_argument("--enable", action="store_true", help="run `systemctl enable` for the unit")
    p.add_argument("--exec", dest="exe", help="vfalloc's absolute path in the unit (default: from PATH)")
    p.add_argument("--remove", action="store_true", help="remove the unit and rules vfalloc wrote")

    p = add("vf-driver", "keep host drivers off VFs: blacklist or sriov_drivers_autoprobe",
            "--blacklist DRIVER writes a modprobe.d blacklist; --autoprobe off sets the PFs' "
            "sriov_drivers_autoprobe so new VFs stay unbound without banning the driver.",
            "host_change:cmd_vf_driver", changes=True)
    p.add_argument("pfs", nargs="*", metavar="PF", help="PFs for --autoprobe (default: the pools' PFs)")
    p.add_argument("--blacklist", metavar="DRIVER", help="VF driver to blacklist (igbvf, iavf, ixgbevf, ...)")
    p.add_argument("--autoprobe", choices=("on", "off"), help="set the PFs' sriov_drivers_autoprobe")
    p.add_argument("--remove", action="store_true", help="with --blacklist: remove that blacklist line")


def make_context(args: argparse.Namespace, out: TextIO, err: TextIO):
    from .config import load_settings
    from .context import Context

    flags = {k: getattr(args, k, None) for k in COMMON}
    return Context(load_settings(flags), out=out, err=err)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    stream = out or sys.stdout
    printer = _Output(stream)
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        ctx = make_context(args, cast(TextIO, printer), err)
        code = args.func(args, ctx)
        printer.flush()  # a full disk shows at the flush as often as at a write
        return code
    except VfallocError as exc:
        if isinstance(exc, OutputError):
            _discard(stream)
        err.write(f"vfalloc: {exc}\n")
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        err.write("vfalloc: interrupted\n")
        return 130
    except BrokenPipeError:
        _discard(stream)
        return 0
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("VFALLOC_DEBUG"):
            raise
        err.write(f"vfalloc: internal error: {type(exc).__name__}: {exc} "
                  "(set VFALLOC_DEBUG=1 for the traceback and report it)\n")
        return 70


def _discard(stream: TextIO) -> None:
    """Point the process's stdout at /dev/null when `stream` is it, so that the interpreter's
    own flush at exit does not fail on the same output again (and print a second message)."""
    if stream is not sys.stdout:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def run() -> None:
    sys.exit(main())
