"""Handlers of the `vfalloc host` commands that only read: check, iommu-groups, acs. They gather
facts from the Context, call check / iommu / acs, and render lines or JSON to ctx.out.
Must not: write anything, or decide verdicts (the modules do)."""

from __future__ import annotations

import json
import sys

from ..errors import HostError, UsageError
from ..hookfile import render
from ..host import acs, boot_config, check, iommu
from ..host.rootfs import RootFS
from ..model import PciAddress
from . import host_context as facts
from .host_context import line, vendor


def cmd_check(args, ctx) -> int:
    rootfs = RootFS(args.root)
    counts_wanted, config_error = facts.wanted(ctx)
    gathered = check.Facts(ctx.sysfs, ctx.host, rootfs, boot_config.running_tokens(ctx.settings.proc_root, ctx.err),
                            vendor(ctx), counts_wanted, config_error, args.hooks_dir, boot_config.configured(rootfs))
    _fdb_facts(ctx, gathered)
    gathered.hook_text = render(ctx.settings, sys.executable)
    checks = check.run(gathered)
    counts = check.summary(checks)
    if args.json:
        json.dump({"checks": [c.to_json() for c in checks], "summary": counts}, ctx.out, indent=1)
        ctx.out.write("\n")
    else:
        for c in checks:
            fix = f"; fix: {c.fix}" if c.fix and c.status != check.OK else ""
            line(ctx.out, f"{c.status:<4}  {c.check:<11} {c.subject}: {c.message}{fix}")
        line(ctx.out, f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    return 1 if counts[check.FAIL] else 0


def _fdb_facts(ctx, gathered: check.Facts) -> None:
    import os

    from ..errors import VfallocError
    from ..fdb.upkeep import missing

    try:
        gathered.fdb_missing = missing(ctx, os.environ)
    except VfallocError as exc:
        gathered.fdb_error = str(exc)
        return
    gathered.fdb_kept_by_vfalloc = frozenset(
        pf for pf in gathered.fdb_missing
        if ctx.settings.config.fdb_for((pf, str(ctx.sysfs.netdev_pci(pf) or pf))))


# -- iommu-groups --

def cmd_iommu_groups(args, ctx) -> int:
    groups = iommu.groups(ctx.sysfs)
    if not groups:
        raise HostError("no IOMMU groups in sysfs: the IOMMU is off (enable VT-d/AMD-Vi in the firmware, "
                        "then `vfalloc host kernel-args` and reboot)")
    names = iommu.lspci_names([d for g in groups for d in g.devices])
    roles = _roles(ctx)
    if args.json:
        data = [{"group": g.number, "devices": [
            {"address": str(d.address), "id": f"{d.vendor}:{d.device}", "class": d.pci_class,
             "driver": d.driver, "name": names.get(str(d.address)), "role": roles.get(str(d.address))}
            for d in g.devices]} for g in groups]
        json.dump(data, ctx.out, indent=1)
        ctx.out.write("\n")
        return 0
    for g in groups:
        line(ctx.out, f"group {g.number} ({len(g.devices)} device{'s' if len(g.devices) != 1 else ''})")
        for d in g.devices:
            extra = "  ".join(x for x in (roles.get(str(d.address)), names.get(str(d.address))) if x)
            line(ctx.out, f"  {iommu.describe(d)}{'  ' + extra if extra else ''}")
    return 0


def _roles(ctx) -> dict[str, str]:
    roles = {}
    for pf in ctx.host.pfs:
        roles[str(pf.address)] = f"[PF {pf.name}]"
        for vf in pf.vfs:
            roles[str(vf.address)] = f"[VF {vf.index} of {pf.name}]"
    return roles


# -- acs --

def cmd_acs(args, ctx) -> int:
    targets = [_device(ctx, args.device)] if args.device else [pf.address for pf in ctx.host.pfs]
    if not targets:
        raise HostError("no SR-IOV PF found; name a device: `vfalloc host acs 0000:01:00.0`")
    groups = ctx.sysfs.iommu_groups()
    reports = [acs.report(ctx.sysfs, a, groups) for a in targets]
    for rep in reports:
        _print_acs(ctx.out, rep)
    arg = acs.override_arg(acs.override_ids(reports))
    if arg:
        line(ctx.out, f"proposed kernel argument: {arg}")
        line(ctx.out, f"warning: {acs.OVERRIDE_WARNING}")
        ids = " ".join(f"--acs-override {i}" for i in acs.override_ids(reports))
        line(ctx.out, f"to configure it: vfalloc host kernel-args {ids}")
    return 0


def _device(ctx, ref: str) -> PciAddress:
    pf = ctx.host.pf(ref)
    if pf is not None:
        return pf.address
    if PciAddress.looks_like(ref):
        return PciAddress.parse(ref)
    address = ctx.sysfs.netdev_pci(ref)
    if address is None:
        raise UsageError(f"{ref} is neither a PCI address nor a network interface with a PCI device")
    return address


def _print_acs(out, rep: acs.AcsReport) -> None:
    d = rep.device
    if rep.group is None:
        where = "in no IOMMU group (the IOMMU is off)"
    elif rep.isolated:
        where = f"alone in IOMMU group {rep.group}"
    else:
        where = f"in IOMMU group {rep.group} with {len(rep.peers)} other device(s)"
    line(out, f"{d.address} ({d.vendor}:{d.device}) is {where}")
    for hop in rep.hops:
        mark = "  <- blocks isolation" if hop.blocks else ""
        line(out, f"  {hop.role:<6} {hop.device.address}  {hop.ident}  {hop.port}: {hop.verdict} ({hop.detail}){mark}")
    if rep.isolated and rep.blockers:
        line(out, "  isolated anyway: the kernel has a quirk for a hop above (no override needed)")
    elif not rep.isolated and rep.group is not None and not rep.blockers:
        line(out, "  no hop without ACS found: the group is shared for another reason "
                   "(a conventional PCI bridge, an unreadable config space, or DMA aliasing)")
