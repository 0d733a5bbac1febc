"""Handlers of `vfalloc fdb sync` and `vfalloc fdb show`: they call fdb.upkeep / fdb.ledger and print
lines for people or JSON for scripts. Must not: decide which entries belong where (fdb does) or
run the bridge command themselves (fdb.bridge does)."""

from __future__ import annotations

import json
import os

from ..errors import FdbError, UsageError
from .host_context import line


def _owners(owners) -> str:
    return ", ".join(f"{o.kind} {o.name}" for o in sorted(owners))


def cmd_sync(args, ctx) -> int:
    from ..fdb.upkeep import sync

    for name in args.pfs:
        link = ctx.sysfs.read_link(name)
        if link is None or not link.numvfs:
            what = "no network interface" if link is None else "no SR-IOV PF with VFs"
            raise UsageError(f"{name} is {what} on this host; name a PF's interface (see `vfalloc pools`)")
    report = sync(ctx, os.environ, dry_run=args.dry_run, only=frozenset(args.pfs) if args.pfs else None)
    for warning in report.warnings:
        ctx.err.write(f"vfalloc: warning: {warning}\n")
    if args.json:
        json.dump({"added": [{"pf": pf, "mac": mac, "owners": [o.to_json() for o in sorted(owners)]}
                             for pf, mac, owners in report.added],
                   "removed": [{"pf": pf, "mac": mac} for pf, mac in report.removed],
                   "not_vfalloc": [{"pf": pf, "mac": mac} for pf, mac in report.foreign],
                   "failed": report.failed, "dry_run": args.dry_run}, ctx.out, indent=1)
        ctx.out.write("\n")
    else:
        would = "would " if args.dry_run else ""
        for pf, mac, owners in report.added:
            line(ctx.out, f"{would}add {mac} to {pf} (for {_owners(owners)})")
        for pf, mac in report.removed:
            line(ctx.out, f"{would}remove {mac} from {pf} (nobody needs it any more)")
        for pf in report.unseen:
            line(ctx.out, f"{pf}: no such interface here; its entries stay recorded (`vfalloc fdb show`)")
        for pf, mac in report.foreign:
            line(ctx.out, f"left {mac} on {pf} as it is (not added by vfalloc)")
        if not (report.added or report.removed):
            line(ctx.out, f"every PF's FDB holds what it should ({len(report.kept)} entries kept by vfalloc)")
    if report.failed:
        raise FdbError("fdb sync", "; ".join(report.failed))
    return 0


def cmd_show(args, ctx) -> int:
    from ..fdb.ledger import LedgerFile

    ledger = LedgerFile(ctx.settings.state, ctx.settings.lock_timeout).read()
    if args.json:
        json.dump([{"pf": pf, "mac": mac, "owners": [o.to_json() for o in sorted(owners)]}
                   for (pf, mac), owners in sorted(ledger.items())], ctx.out, indent=1)
        ctx.out.write("\n")
        return 0
    if not ledger:
        line(ctx.out, "vfalloc keeps no FDB entries (no guest, container or bridge address needs one, "
                      "or `vfalloc fdb sync` has not run)")
        return 0
    width = max(len(pf) for pf, _ in ledger)
    line(ctx.out, f"{'PF':<{width}}  {'MAC':<17}  FOR")
    for (pf, mac), owners in sorted(ledger.items()):
        line(ctx.out, f"{pf:<{width}}  {mac:<17}  {_owners(owners)}")
    return 0
