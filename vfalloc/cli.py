"""`vfalloc ...`: the command line. Thin: parses arguments, builds a Context, calls the library,
formats for people or JSON, and turns every VfallocError into one line on stderr and an exit
code. Errors are caught only here; the library below never prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence, TextIO

from . import __version__
from .errors import UsageError, VfallocError

COMMON = ("config", "sysfs_root", "state", "proc_root")


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = _Parser(prog="vfalloc", description="Hand SR-IOV virtual functions to libvirt/QEMU VMs.")
    parser.add_argument("--version", action="version", version=f"vfalloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _register_core(sub, common)
    for module in _command_modules():
        module.register(sub, common)
    return parser


def _command_modules() -> list:
    """Command groups beyond the core ones; each has register(subparsers, common) and imports
    what its commands need only when they run."""
    from . import hookcmd, virtcmd
    from .host import commands as host_commands

    return [hookcmd, host_commands, virtcmd]


def _register_core(sub, common) -> None:
    p = sub.add_parser("list", parents=[common], help="show every VF and who holds it",
                       description="One row per VF: its PF, pool, state (free, leased, stale, unusable) and holder.")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _connect_flag(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("pools", parents=[common], help="capacity of each pool and PF",
                       description="Total, free, leased and stale VFs of each pool and of each PF in it.")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _connect_flag(p)
    p.set_defaults(func=cmd_pools)

    p = sub.add_parser("alloc", parents=[common], help="lease a VF to a domain by hand",
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
    p.add_argument("--index", type=int, default=0, help="request position (default 0)")
    p.add_argument("--json", action="store_true", help="print the lease as JSON")
    p.set_defaults(func=cmd_alloc)

    p = sub.add_parser("release", parents=[common], help="give back every lease of a domain",
                       description="Give back every lease held by the domain with this UUID.")
    p.add_argument("--uuid", required=True, help="domain UUID")
    p.set_defaults(func=cmd_release)


def _connect_flag(p) -> None:
    p.add_argument("-c", "--connect", metavar="URI",
                   help="libvirt URI to ask which domains run (default: LIBVIRT_DEFAULT_URI, else "
                        "qemu:///system; libvirt's status directory when it does not answer)")


def make_context(args: argparse.Namespace, out: TextIO, err: TextIO):
    from .config import load_settings
    from .context import Context

    flags = {k: getattr(args, k, None) for k in COMMON}
    return Context(load_settings(flags), out=out, err=err)


# -- commands --

def cmd_list(args, ctx) -> int:
    from .usage import vf_rows

    table = ctx.store.read()
    rows = vf_rows(ctx.host, ctx.pools, table, ctx.boot_id, _running(args, ctx, table))
    _warn(ctx)
    if args.json:
        json.dump(rows, ctx.out, indent=1)
        ctx.out.write("\n")
        return 0
    cols = [("VF", "vf"), ("PF", "pf_netdev"), ("#", "vf_index"), ("POOL", "pool"), ("STATE", "state"),
            ("DOMAIN", "domain"), ("MAC", "mac"), ("VLAN", "vlan"), ("NUMA", "numa_node"),
            ("GROUP", "iommu_group"), ("DRIVER", "driver")]
    table = [[_cell(r, key) for _, key in cols] for r in rows]
    _print_table(ctx.out, [c for c, _ in cols], table)
    if not rows:
        ctx.out.write("no SR-IOV VFs found; create some with `vfalloc host numvfs PF N`\n")
    for r in rows:
        if r["state"] == "stale":
            ctx.out.write(f"stale: {r['vf']} leased to {r['domain']}: {r['reason']} (free it with `vfalloc gc`)\n")
    return 0


def _running(args, ctx, table):
    """UUIDs to take as running, so list/pools show what `vfalloc gc` would free (gc.py)."""
    if all(x.phase == "reserved" for x in table.leases):  # no lease to judge by "not running"
        return None
    from .gc import names_of, now_utc, observe, treated_as_running

    seen = observe(ctx.settings.libvirt_run, getattr(args, "connect", None), names_of(table))
    return treated_as_running(table, seen.running, now_utc())


def _cell(row, key) -> str:
    value = row.get(key)
    if key == "pf_netdev" and value is None:
        value = row.get("pf")
    return "-" if value is None else str(value)


def cmd_pools(args, ctx) -> int:
    from .usage import pool_rows, vf_rows

    table = ctx.store.read()
    rows = pool_rows(ctx.host, ctx.pools, vf_rows(ctx.host, ctx.pools, table, ctx.boot_id, _running(args, ctx, table)))
    _warn(ctx)
    if args.json:
        json.dump(rows, ctx.out, indent=1)
        ctx.out.write("\n")
        return 0
    table = []
    for pool in rows:
        table.append([pool["pool"], f"({pool['policy']})", *(str(pool[k]) for k in ("total", "free", "leased", "stale"))])
        for pf in pool["pfs"]:
            table.append(["", pf["pf_netdev"] or pf["pf"], *(str(pf[k]) for k in ("total", "free", "leased", "stale"))])
    _print_table(ctx.out, ["POOL", "PF", "TOTAL", "FREE", "LEASED", "STALE"], table)
    if not rows:
        ctx.out.write("no pools: no SR-IOV PF found and none configured\n")
    return 0


def cmd_alloc(args, ctx) -> int:
    from .allocator import allocate
    from .lease_ops import now as lease_now
    from .model import Request, check_uuid

    uuid = check_uuid(args.uuid)
    request = Request(pool=args.pool, index=args.index, mac=args.mac, vlan=args.vlan, trust=args.trust,
                      spoofchk=args.spoofchk, type=args.type)
    with ctx.store.transaction() as txn:
        grant = allocate(ctx.host, ctx.pools, txn.table, domain=args.domain, uuid=uuid, requests=[request],
                         boot_id=ctx.boot_id, now=lease_now(), phase="reserved")
        txn.table = grant.table
    lease = grant.leases[0]
    if args.json:
        json.dump(lease.to_json(), ctx.out, indent=1)
        ctx.out.write("\n")
    else:
        ctx.out.write(f"{lease.vf} (VF {lease.index} of {lease.pf}, pool {lease.pool}) leased to {lease.domain}"
                      f"{' mac ' + lease.mac if lease.mac else ''}\n")
    return 0


def cmd_release(args, ctx) -> int:
    from .allocator import release
    from .model import check_uuid

    uuid = check_uuid(args.uuid)
    with ctx.store.transaction() as txn:
        txn.table, gone = release(txn.table, uuid)
    for lease in gone:
        ctx.out.write(f"released {lease.vf} from {lease.domain}\n")
    if not gone:
        ctx.out.write(f"no leases held by {uuid}\n")
    return 0


def _warn(ctx) -> None:
    for warning in ctx.store.warnings:
        ctx.err.write(f"vfalloc: warning: {warning}\n")


def _print_table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for line in [header, *rows]:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        ctx = make_context(args, out, err)
        return args.func(args, ctx)
    except VfallocError as exc:
        err.write(f"vfalloc: {exc}\n")
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        err.write("vfalloc: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("VFALLOC_DEBUG"):
            raise
        err.write(f"vfalloc: internal error: {type(exc).__name__}: {exc} "
                  "(set VFALLOC_DEBUG=1 for the traceback and report it)\n")
        return 70


def run() -> None:
    sys.exit(main())
