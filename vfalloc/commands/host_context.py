"""Small readers of the Context shared by the `vfalloc host` handlers: facts that may be missing
on a host (CPU vendor, boot id, pools) become None or an error text instead of an exception, and
a PF reference becomes a PF or one clear UsageError. Must not: print or write."""

from __future__ import annotations

from .. import procfs
from ..errors import UsageError, VfallocError
from ..model import PF


def vendor(ctx) -> str | None:
    """Whose IOMMU this host has, as the CPU vendor string the IOMMU rules are keyed by: the
    IOMMU units the kernel registered tell it when it is on (an Intel VT-d unit means Intel's
    rules whatever the CPU, as in a VM with an emulated intel-iommu), else the CPU vendor."""
    try:
        units = ctx.sysfs.iommu_units()
    except VfallocError:
        units = []
    if any(u.startswith("dmar") for u in units):
        return "GenuineIntel"
    if any(u.startswith("ivhd") for u in units):
        return "AuthenticAMD"
    try:
        return procfs.cpu_vendor(ctx.settings.proc_root)
    except VfallocError:
        return None


def boot_id(ctx) -> str | None:
    try:
        return ctx.boot_id
    except VfallocError:
        return None


def pf(ctx, ref: str) -> PF:
    found = ctx.host.pf(ref)
    if found is None:
        names = ", ".join(p.name for p in ctx.host.pfs) or "none"
        raise UsageError(f"{ref} is not an SR-IOV PF on this host (PFs: {names})")
    return found


def wanted(ctx) -> tuple[dict[str, int], str | None]:
    """PF address -> numvfs from the config's pools and [pf.NAME] tables (a PF in no pool too), and
    the config error if the config is bad."""
    from ..config import pf_counts

    try:
        pools = ctx.pools
        counts = pf_counts(ctx.settings.config, ctx.host)
    except VfallocError as exc:
        return {}, str(exc)
    counts.update({str(m.pf): m.numvfs for p in pools for m in p.members if m.numvfs is not None})
    return counts, None


def line(out, text: str) -> None:
    out.write(text + "\n")
