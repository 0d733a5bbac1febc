"""Handlers of the lease table's commands: `vfalloc list`, `pools`, `alloc` and `release`.
Each reads the table (or changes it under its lock) through the library and prints a table for
people or JSON for scripts. Must not: decide anything about VFs (allocator, holdings, stale do).
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from collections.abc import Sequence
    from typing import TextIO

from .. import jsontext
from ..errors import shown
from ..model import Phase


def cmd_list(args, ctx) -> int:
    from ..holdings import vf_rows

    table = ctx.store.read()
    rows = vf_rows(ctx.host, ctx.pools, table, ctx.boot_id, _running(ctx, table, args.connect))
    _warn(ctx)
    if args.json:
        ctx.out.write(jsontext.dumps(rows) + "\n")
        return 0
    cols = [("VF", "vf"), ("PF", "pf_netdev"), ("#", "vf_index"), ("POOL", "pool"), ("STATE", "state"),
            ("DOMAIN", "domain"), ("MAC", "mac"), ("VLAN", "vlan"), ("NUMA", "numa_node"),
            ("GROUP", "iommu_group"), ("DRIVER", "driver")]
    cells = list(zip(*(_column(rows, key) for _, key in cols), strict=True))  # the columns, row by row
    _print_table(ctx.out, [c for c, _ in cols], cells)
    if not rows:
        ctx.out.write("no SR-IOV VFs found; create some with `vfalloc host numvfs PF N`\n")
    for r in rows:
        if r["state"] == "stale":
            ctx.out.write(f"stale: {r['vf']} leased to {shown(r['domain'], limit=200)}: {r['reason']} "
                          "(free it with `vfalloc gc`)\n")
        elif r["phase"] == Phase.RESERVED:
            ctx.out.write(f"reserved: {r['vf']} for {shown(r['domain'], limit=200)}, given to it at its next start "
                          f"(`vfalloc release --uuid {r['domain_uuid']}` frees it)\n")
    return 0


def _running(ctx, table, uri):
    """UUIDs to take as running, so list/pools show what `vfalloc gc` would free (stale.py)."""
    if all(x.phase == Phase.RESERVED for x in table.leases):  # no lease to judge by "not running"
        return None
    from ..stale import names_of, now_utc, observe, treated_as_running

    seen = observe(ctx.settings.libvirt_run, uri, names_of(table))
    return treated_as_running(table, seen.running, now_utc())


def _column(rows, key) -> list[str]:
    """The cells of one column: "-" for no value (for a PF without a netdev, its address), a
    number as it is, a name from outside quoted when it holds what is not printable (one row
    stays one line) and cut past 200 characters. A column at a time, so that numbers and empty
    cells, most of a thousand rows, take no call."""
    cells = []
    for row in rows:
        value = row.get(key)
        if key == "pf_netdev" and value is None:
            value = row.get("pf")
        if value is None:
            cells.append("-")
        elif type(value) is int:
            cells.append(str(value))  # digits: nothing to quote or cut
        else:
            cells.append(shown(str(value), limit=200))
    return cells


def cmd_pools(args, ctx) -> int:
    from ..holdings import pool_rows, vf_rows

    table = ctx.store.read()
    rows = pool_rows(ctx.host, ctx.pools, vf_rows(ctx.host, ctx.pools, table, ctx.boot_id, _running(ctx, table, args.connect)))
    _warn(ctx)
    if args.json:
        ctx.out.write(jsontext.dumps(rows) + "\n")
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
    """Reserve a VF by hand. The domain's lease for the same request position is replaced only
    when it is a reservation of a domain that does not run (said on stderr and logged); who runs
    is asked (stale.domain_runs) before the lock is taken, never under it."""
    from ..allocator import held, reserve
    from ..leasing import now as lease_now
    from ..model import Request, check_name, check_uuid, refuse_hostdev_settings
    from .audit import record

    uuid = check_uuid(args.uuid)
    check_name(args.domain)
    refuse_hostdev_settings(args.type, args.mac, args.vlan)
    request = Request(pool=args.pool, index=args.index, mac=args.mac, vlan=args.vlan, trust=args.trust,
                      spoofchk=args.spoofchk, type=args.type)
    def reserved(table, judged, runs):
        return reserve(ctx.host, ctx.pools, table, domain=args.domain, uuid=uuid, request=request,
                       boot_id=ctx.boot_id, now=lease_now(), judged=judged, runs=runs)

    before = ctx.store.read()
    judged = held(before, uuid, args.index)
    runs: bool | None = False
    basis = ""
    # Only a reservation that would be replaced needs its domain judged (the same request again
    # is not asked about): tried on the table as read, refused there when the lease is in use.
    if judged is not None and reserved(before, judged, None).replaced is not None:
        from ..stale import domain_runs

        runs, basis = domain_runs(ctx.settings.libvirt_run, args.connect, judged.uuid, judged.domain)
    with ctx.store.transaction() as txn:
        done = reserved(txn.table, judged, basis if runs else None)
        txn.table = done.grant.table
    lease = done.grant.leases[0]
    notes = []
    if done.replaced is not None:
        gone = done.replaced
        unknown = f"; whether {shown(gone.domain, limit=200)} runs is unknown ({basis})" if runs is None else ""
        notes.append(f"replaced the reservation of {shown(gone.domain, limit=200)} ({gone.uuid}) for request "
                     f"{gone.index}: {_vf_of(gone)} given back, {_vf_of(lease)} instead{unknown}")
    notes += [f"took over {x.vf} ({x.pool}) from {shown(x.domain, limit=200)} ({x.uuid}): its lease was taken in an "
              "earlier boot" for x in done.grant.reclaimed]
    for note in notes:
        ctx.err.write(f"vfalloc: warning: {note}\n")
        record(ctx, f"alloc: {note}")
    vf = ctx.host.find_vf(lease.vf)
    vf_index = vf.index if vf is not None else "?"
    said = (f"{lease.vf} (VF {vf_index} of {lease.pf}, pool {lease.pool}) leased to {lease.domain}"
            f"{' as request ' + str(lease.index) if lease.index else ''}{' mac ' + lease.mac if lease.mac else ''}")
    record(ctx, f"alloc: {said} ({uuid}, reserved by hand)")
    if args.json:
        json.dump(lease.to_json(), ctx.out, indent=1)
        ctx.out.write("\n")
    else:
        ctx.out.write(said + "\n")
    return 0


def _vf_of(lease) -> str:
    """A lease's VF for a notice, with its pool and the settings it was taken with."""
    settings = "".join(f", {key} {getattr(lease, key)}" for key in ("mac", "vlan", "trust", "spoofchk")
                       if getattr(lease, key) is not None)
    kind = ", hostdev" if lease.type == "hostdev" else ""
    return f"{lease.vf} (pool {lease.pool}{settings}{kind})"


def cmd_release(args, ctx) -> int:
    from ..allocator import release
    from ..model import check_uuid
    from .audit import record

    uuid = check_uuid(args.uuid)
    with ctx.store.transaction() as txn:
        txn.table, gone = release(txn.table, uuid)
    for lease in gone:
        ctx.out.write(f"released {lease.vf} from {lease.domain}\n")
        record(ctx, f"release: {lease.vf} ({lease.pool}) from {lease.domain} ({uuid})")
    if not gone:
        ctx.out.write(f"no leases held by {uuid}\n")
    return 0


def _warn(ctx) -> None:
    for warning in ctx.store.warnings:
        ctx.err.write(f"vfalloc: warning: {warning}\n")


def _print_table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks. One format
    string for every line and one write: `vfalloc list` prints a line for each of a thousand VFs."""
    lines = [header, *rows]
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write("".join(fmt.format(*line).rstrip() + "\n" for line in lines))
