"""`vfalloc ...`: the command line. Builds the one parser of every command (when the command
line names a command, only that command's part of it: build_parser), makes a Context,
runs the command's handler (vfalloc.commands.*) and turns every VfallocError into one line on
stderr and an exit code. Errors are caught only here; nothing below prints an error.

Owns: every flag, help text and default. Must not: hold a command's logic (the handlers and the
library do); import a handler's module before its command runs, so that `vfalloc list` loads
neither the host checks nor libvirt.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from collections.abc import Sequence
    from typing import Any, NoReturn, TextIO

from . import HOOKS_DIR, __version__
from .errors import OutputError, UsageError, VfallocError, shown

COMMON = ("config", "sysfs_root", "state", "proc_root")
COMPLETE_COMMAND = "__complete"  # the completion scripts' helper: live pool, PF and domain names


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, given the terminal's width looked up once per process.
    argparse makes a formatter for every argument it adds, only to check the argument's
    metavar, and each asks shutil for the width (Lib/argparse.py: add_argument, HelpFormatter;
    CPython 3.11); what that cost every command is in docs/performance.md,
    "Listings: `vfalloc list` and `vfalloc pools` at 1,024 VFs and more"."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        # argparse itself takes 2 off the width it looks up, and only then
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


_COLUMNS: list[int] = []


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() gives it: $COLUMNS when it is a
    positive number, else the size of the terminal on stdout, else 80."""
    if not _COLUMNS:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        _COLUMNS.append(columns or 80)
    return _COLUMNS[0]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
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
    common = _Parser(add_help=False)
    group = common.add_argument_group("where vfalloc looks (flags beat VFALLOC_* variables beat the config file)")
    group.add_argument("--config", metavar="FILE",
                       help="config file (env VFALLOC_CONFIG; default /etc/vfalloc/vfalloc.toml)")
    group.add_argument("--sysfs-root", metavar="DIR", help="sysfs mount (env VFALLOC_SYSFS_ROOT; default /sys)")
    group.add_argument("--state", metavar="FILE",
                       help="lease table (env VFALLOC_STATE; default /var/lib/vfalloc/state.json)")
    group.add_argument("--proc-root", metavar="DIR", help="procfs mount (env VFALLOC_PROC_ROOT; default /proc)")
    return common


def _connect_parser() -> argparse.ArgumentParser:
    connect = _Parser(add_help=False)
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command. With `command`, a top-level command's name (COMMANDS), only
    that command's parser and those its group adds beside it are built: its arguments, its
    --help and its errors are the same, and a `vfalloc list` does not build the parsers and help
    of the thirty other commands (argparse makes a parser, a formatter and gettext lookups for
    each)."""
    common, connect = _common_parser(), _connect_parser()
    parser = _Parser(prog="vfalloc", description="Hand SR-IOV virtual functions to libvirt/QEMU VMs.")
    parser.add_argument("--version", action="version", version=f"vfalloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for names, add, libvirt in _GROUPS:
        if command is None or command in names:
            add(sub, [common, connect] if libvirt else [common])
    return parser


def _fdb_commands(sub, parents) -> None:
    fdb = sub.add_parser("fdb", help="the SR-IOV PFs' FDB entries that let VFs reach bridged guests",
                         description="A VF reaches a guest, container or the host on a Linux bridge over "
                                     "its own PF only when that MAC is in the PF's own FDB. vfalloc keeps "
                                     "those entries (docs/bridges.md).")
    fsub = fdb.add_subparsers(dest="fdb_command", metavar="SUBCOMMAND", parser_class=_Parser)
    fsub.required = True
    p = fsub.add_parser("sync", parents=parents, help="add missing entries, remove those nobody needs",
                        description="Bring each PF's FDB to what it should hold: the MACs of running "
                                    "libvirt guests on a bridge over it (from libvirt's status directory), "
                                    "the bridge's own MAC when it differs from the PF's, and the MACs the "
                                    "bridge learnt on its other ports. Only entries vfalloc added are ever "
                                    "removed.")
    p.add_argument("pfs", nargs="*", metavar="PF", help="only these PFs (interface names; default: all)")
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=_handler("fdb:cmd_sync"))
    p = fsub.add_parser("show", parents=parents, help="the entries vfalloc keeps, and for whom",
                        description="Every FDB entry vfalloc added and keeps, with the domain, bridge or "
                                    "port that needs it.")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_handler("fdb:cmd_show"))


def _listing_commands(sub, parents) -> None:
    p = sub.add_parser("list", parents=parents, help="show every VF and who holds it",
                       description="One row per VF: its PF, pool, state (free, leased, stale, unusable) and "
                                   "holder. --connect is asked which domains run (libvirt's status directory "
                                   "when it does not answer).")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_handler("leases:cmd_list"), vf_netdevs=False)  # a row shows no VF's netdev

    p = sub.add_parser("pools", parents=parents, help="capacity of each pool and PF",
                       description="Total, free, leased and stale VFs of each pool and of each PF in it.")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_handler("leases:cmd_pools"), vf_details=False)  # it counts VFs, shows none


def _alloc_command(sub, parents) -> None:
    p = sub.add_parser("alloc", parents=parents, help="lease a VF to a domain by hand",
                       description="Reserve a VF from POOL for a domain (for admins and scripts); the "
                                   "domain gets it at its next start. Asking again with the same request "
                                   "returns its reservation. Another pool or other settings for the same "
                                   "--index replace the reservation, with a warning on stderr, if the domain "
                                   "does not run (asked of --connect, else libvirt's status directory; the "
                                   "warning says when neither can tell). A "
                                   "lease that is attached, pending attach or of a running domain is refused "
                                   "and the table left as it was: release it first, or give another --index "
                                   "for a second VF.")
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
    p.set_defaults(func=_handler("leases:cmd_alloc"), refreshes_metrics=True)


def _release_command(sub, parents) -> None:
    p = sub.add_parser("release", parents=parents, help="give back every lease of a domain",
                       description="Give back every lease held by the domain with this UUID.")
    p.add_argument("--uuid", required=True, help="domain UUID")
    p.set_defaults(func=_handler("leases:cmd_release"), refreshes_metrics=True)


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
    p.set_defaults(func=_handler("domains:cmd_gc"), refreshes_metrics=True)


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

    p = add("kernel-args", "put the IOMMU (and ACS/realloc) arguments into the boot config",
            "Find the boot set-up under --root (GRUB with update-grub; GRUB with BLS entries and grubby; "
            "Proxmox VE's proxmox-boot-tool; systemd-boot/kernel-install) and edit its files in place, "
            "idempotently: GRUB_CMDLINE_LINUX in /etc/default/grub or the grub.d/*.cfg it is set in, "
            "/etc/kernel/cmdline. Adds intel_iommu=on iommu=pt on Intel, iommu=pt on AMD (and takes "
            "amd_iommu=off out), plus the flags. Every other line of the files stays as it is.",
            "host_change:cmd_kernel_args", changes=True)
    p.add_argument("--add", action="append", default=[], metavar="ARG", help="another argument (repeatable)")
    p.add_argument("--acs-override", action="append", default=[], metavar="VVVV:DDDD",
                   help="add pcie_acs_override=id:VVVV:DDDD (needs a kernel with the ACS override patch)")
    p.add_argument("--realloc", action="store_true", help="add pci=realloc (BIOS without SR-IOV support)")
    p.add_argument("--assign-busses", action="store_true",
                   help="add pci=assign-busses (VFs need bus numbers; may renumber PCI addresses)")
    p.add_argument("--remove", action="append", default=[], metavar="ARG",
                   help="take an argument out where it is written (repeatable)")
    p.add_argument("--no-defaults", action="store_true", help="do not add the vendor's IOMMU arguments")
    p.add_argument("--update", action="store_true",
                   help="then run the set-up's tool: update-grub, grubby, proxmox-boot-tool refresh or "
                        "kernel-install (only with --root /)")

    p = add("numvfs", "set a PF's number of VFs (0, then N)",
            "Write 0 then N to the PF's sriov_numvfs, wait for the VFs, explain the kernel's refusals.",
            "host_change:cmd_numvfs", changes=True)
    p.set_defaults(refreshes_metrics=True)
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


def _tool_commands(sub, parents) -> None:
    p = sub.add_parser("metrics", parents=parents, help="Prometheus metrics: capacity, PFs, leases, hook refusals",
                       description="The pools' VFs by state (the counts of `vfalloc list --json`), each PF's "
                                   "VFs and sriov_totalvfs, each lease's age and the hook's refusals and errors "
                                   "since boot, in Prometheus' text format 0.0.4. With [settings] "
                                   "metrics_textfile the hook keeps that file current.")
    p.add_argument("--textfile", metavar="PATH",
                   help="write the metrics to PATH, replacing it whole (node_exporter's textfile collector)")
    p.add_argument("--offline", action="store_true",
                   help="judge running domains from libvirt's status files only, never ask libvirt (at boot)")
    p.set_defaults(func=_handler("metrics:cmd_metrics"))

    p = sub.add_parser("completion", help="print the bash or zsh completion script",
                       description="Print a completion script for SHELL. bash: put it in "
                                   "/usr/share/bash-completion/completions/vfalloc (or source it); zsh: put "
                                   "it in a directory of $fpath as _vfalloc.")
    p.add_argument("shell", choices=("bash", "zsh"), help="bash or zsh")
    p.set_defaults(func=_handler("completion:cmd_completion"))

    # Hidden (no help: not listed): the live values the completion scripts ask for.
    p = sub.add_parser(COMPLETE_COMMAND, parents=parents[:1])
    p.add_argument("kind", choices=("pools", "pfs", "domains", "uuids"))
    p.set_defaults(func=_handler("completion:cmd_complete_values"))


# Each function that adds commands: the top-level commands it adds, in the order of `vfalloc
# --help`, and whether they take --connect (tests/test_cli_core.py checks them against the parser).
_GROUPS = (
    (("list", "pools"), _listing_commands, True),
    (("alloc",), _alloc_command, True),
    (("release",), _release_command, False),
    (("request", "start", "gc"), _domain_commands, True),
    (("install-hook",), _hook_commands, False),
    (("host",), _host_commands, False),
    (("fdb",), _fdb_commands, False),
    (("metrics", "completion", COMPLETE_COMMAND), _tool_commands, True),
)
COMMANDS = frozenset(name for names, _, _ in _GROUPS for name in names)


def _command(argv: Sequence[str]) -> str | None:
    """The command `argv` names first, when it names one; else None (then every command's parser
    is built: `vfalloc --help` lists them, a wrong name is told which exist)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def _refresh_metrics(ctx) -> None:
    """A command that may have changed the leases or the VFs has the metrics textfile rendered
    anew, as the hook does after its changes (vfalloc.metrics.textfile)."""
    from .metrics.textfile import request_refresh

    settings = ctx.settings
    environ = {**os.environ, "VFALLOC_STATE": settings.state, "VFALLOC_SYSFS_ROOT": settings.sysfs_root,
               "VFALLOC_PROC_ROOT": settings.proc_root, "VFALLOC_LIBVIRT_RUN": settings.libvirt_run,
               "VFALLOC_METRICS_TEXTFILE": settings.metrics_textfile}  # the flags given, for the refresher
    if settings.config.exists:
        environ["VFALLOC_CONFIG"] = settings.config.path
    trouble = request_refresh(environ)
    if trouble:
        ctx.err.write(f"vfalloc: warning: {trouble}\n")


def make_context(args: argparse.Namespace, out: TextIO, err: TextIO):
    from .config import load_settings
    from .context import Context

    flags = {k: getattr(args, k, None) for k in COMMON}
    return Context(load_settings(flags), out=out, err=err, vf_details=getattr(args, "vf_details", True),
                   vf_netdevs=getattr(args, "vf_netdevs", True))


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    stream = out or sys.stdout
    printer = _Output(stream)
    err = err or sys.stderr
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(_command(argv)).parse_args(argv)
        ctx = make_context(args, printer, err)  # type: ignore[arg-type]  # a TextIO as far as callers see
        code = args.func(args, ctx)
        printer.flush()  # a full disk shows at the flush as often as at a write
        if code == 0 and getattr(args, "refreshes_metrics", False) and ctx.settings.metrics_textfile:
            _refresh_metrics(ctx)
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
    """The `vfalloc` executable, with the cycle collector off, as the hook has it (templates.py).
    A command is a short process, and what cycles it leaves go back at its exit (the passes it
    saves a listing: docs/performance.md,
    "Listings: `vfalloc list` and `vfalloc pools` at 1,024 VFs and more")."""
    gc.disable()
    sys.exit(main())


if __name__ == "__main__":
    run()
