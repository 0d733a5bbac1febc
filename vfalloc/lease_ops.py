"""Lease operations as the hook and the commands run them: read just the PFs a domain's pools
need, take the lock, let the allocator decide, write the table back.

This is where the pure allocator meets the host and the state file; it holds no policy of its
own (that is the allocator's) and never talks to libvirt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from .allocator import Claim, allocate, claim, release
from .context import Context
from .errors import UnknownPool, VfsNotRead
from .model import Host, Lease, PciAddress, Request

if TYPE_CHECKING:  # only in annotations: `vfalloc alloc` takes its clock from here without lxml
    from .domxml import DomainInfo

T = TypeVar("T")


def now() -> str:
    """The time a lease is taken: UTC, ISO 8601, to the microsecond. gc frees a lease only when it
    is still exactly as gc read it; a domain stopped and started again in the same second must
    not leave an equal lease behind, so whole seconds are not enough. (time, not datetime: the
    hook would pay for the import.)"""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}+00:00"


def focus(ctx: Context, domain: str, pool_names: Iterable[str], extra_vfs: Iterable[PciAddress] = ()) -> None:
    """Narrow the context's host snapshot to the PFs of these pools, and of the pools holding
    these VFs, so a start on a host with a thousand VFs reads only what it needs. A pool name
    that does not exist is refused here, naming the pools that do."""
    from .config import pf_refs, resolve_pools

    config = ctx.settings.config
    asked = set(pool_names)
    pinned = {pf for pf in (ctx.sysfs.physfn(vf) for vf in extra_vfs) if pf is not None}
    names = asked | _pools_holding(ctx, pinned)
    wanted = pinned | {a for a in (_address_of(ctx, ref) for ref in pf_refs(config, names)) if a is not None}
    # The pools' PFs without their VFs, but for the PFs of VFs named in the XML: the allocator
    # asks for the VFs it needs (on_host), which at a thousand VFs is seldom more than one PF.
    host = ctx.sysfs.read_host(only=wanted, brief=True, vfs_of=pinned)
    pools = resolve_pools(config, host, names)
    unknown = sorted(asked - {p.name for p in pools})
    if unknown:
        raise UnknownPool(unknown[0], domain, _all_pool_names(ctx))
    ctx.__dict__["host"] = host
    ctx.__dict__["pools"] = pools


def on_host(ctx: Context, decide: Callable[[Host], T]) -> T:
    """`decide(ctx.host)`, reading the VFs of a PF each time the snapshot lacks ones it needs.
    Each round reads at least one PF more, so this ends; a full snapshot takes one round."""
    while True:
        try:
            return decide(ctx.host)
        except VfsNotRead as need:
            pfs = need.pfs & ctx.host.unread
            if not pfs:
                raise  # asked for PFs that were read: a bug, shown as one line by the entry point
            if need.vf is not None:  # one VF wanted: its physfn link names the one PF to read
                pf = ctx.sysfs.physfn(PciAddress.parse(need.vf))
                pfs = frozenset((pf,)) if pf in pfs else pfs
            read = [ctx.sysfs.read_pf(pf, brief=True) for pf in sorted(pfs)]
            ctx.__dict__["host"] = ctx.host.with_vfs(read)


def _address_of(ctx: Context, ref: str) -> PciAddress | None:
    return PciAddress.parse(ref) if PciAddress.looks_like(ref) else ctx.sysfs.netdev_pci(ref)


def _pools_holding(ctx: Context, pfs: set[PciAddress]) -> set[str]:
    """Names of the pools that include any of these PFs."""
    if not pfs:
        return set()
    config = ctx.settings.config
    if not config.pools:  # one pool per PF, named after it
        return {pf.name for pf in ctx.sysfs.read_host(only=pfs, brief=True, vfs_of=set()).pfs}
    return {spec.name for spec in config.pools if any(_address_of(ctx, ref) in pfs for ref, _ in spec.members)}


def _all_pool_names(ctx: Context) -> tuple[str, ...]:
    config = ctx.settings.config
    if config.pools:
        return tuple(spec.name for spec in config.pools)
    return tuple(pf.name for pf in ctx.sysfs.read_host(brief=True, vfs_of=set()).pfs)


def numa_nodes(ctx: Context, info: DomainInfo) -> frozenset[int]:
    """NUMA nodes a domain is pinned to: its <numatune> nodeset, plus the nodes whose CPUs its
    vCPUs are pinned to."""
    nodes = set(info.nodeset)
    if info.cpuset:
        for node, cpus in ctx.sysfs.node_cpus().items():
            if cpus & info.cpuset:
                nodes.add(node)
    return frozenset(nodes)


def _claims(ctx: Context, info: DomainInfo, devices=None) -> list[Claim]:
    by_index = {r.index: r for r in info.requests}
    claims = []
    for dev in info.devices if devices is None else devices:
        request = by_index.get(dev.index)
        if request is None:
            vf = on_host(ctx, lambda host: host.find_vf(str(dev.address)))
            pool = next((p.name for p in ctx.pools if vf is not None and p.admits(vf)), "pinned")
            request = Request(pool=pool, index=dev.index, mac=dev.mac, type=dev.type)
        claims.append(Claim(request, dev.address))
    return claims


def lease_for_start(ctx: Context, info: DomainInfo, now: str, phase: str = "pending-attach") -> tuple[Lease, ...]:
    """Claim the VFs a domain's XML already names; lease VFs for requests without a device, in
    `phase` ("pending-attach" from the hook, "reserved" from `vfalloc start`)."""
    present = {d.index for d in info.devices}
    missing = [r for r in info.requests if r.index not in present]
    focus(ctx, info.name, {r.pool for r in info.requests}, [d.address for d in info.devices])
    nodes = numa_nodes(ctx, info) if missing else frozenset()
    with ctx.store.transaction() as txn:
        table = txn.table
        leases: list[Lease] = []
        if info.devices:
            claims = _claims(ctx, info)
            grant = on_host(ctx, lambda host: claim(host, ctx.pools, table, domain=info.name, uuid=info.uuid,
                                                    claims=claims, boot_id=ctx.boot_id, now=now, phase="attached"))
            table = grant.table
            leases += grant.leases
        if missing:
            grant = on_host(ctx, lambda host: allocate(host, ctx.pools, table, domain=info.name, uuid=info.uuid,
                                                       requests=missing, boot_id=ctx.boot_id, now=now,
                                                       phase=phase, numa_nodes=nodes))
            table = grant.table
            leases += grant.leases
        txn.table = table
    return tuple(leases)


def release_domain(ctx: Context, uuid: str) -> tuple[Lease, ...]:
    with ctx.store.transaction() as txn:
        txn.table, gone = release(txn.table, uuid)
    return gone


def lease_for_incoming(ctx: Context, info: DomainInfo, now: str) -> tuple[Lease, ...]:
    """A VF here for each vfalloc device of a domain arriving by migration or restore: a VF of
    its request's pool, or, for a device pinned without a request, the VF it names."""
    by_index = {r.index: r for r in info.requests}
    requests = [by_index[d.index] for d in info.devices if d.index in by_index]
    pinned = [d for d in info.devices if d.index not in by_index]
    focus(ctx, info.name, {r.pool for r in requests}, [d.address for d in pinned])
    with ctx.store.transaction() as txn:
        table, leases = txn.table, []
        if pinned:
            claims = _claims(ctx, info, pinned)
            grant = on_host(ctx, lambda host: claim(host, ctx.pools, table, domain=info.name, uuid=info.uuid,
                                                    claims=claims, boot_id=ctx.boot_id, now=now, phase="attached"))
            table, leases = grant.table, list(grant.leases)
        if requests:
            nodes = numa_nodes(ctx, info)
            grant = on_host(ctx, lambda host: allocate(host, ctx.pools, table, domain=info.name, uuid=info.uuid,
                                                       requests=requests, boot_id=ctx.boot_id, now=now,
                                                       phase="attached", numa_nodes=nodes))
            table, leases = grant.table, leases + list(grant.leases)
        txn.table = table
    return tuple(sorted(leases, key=lambda x: x.index))


def reconcile_running(ctx: Context, info: DomainInfo, now: str) -> tuple[tuple[Lease, ...], tuple[Lease, ...]]:
    """Make a running domain's leases match the vfalloc devices in its XML: claim those
    devices, drop attached leases whose device is gone; pending hot-plugs are kept."""
    focus(ctx, info.name, {r.pool for r in info.requests}, [d.address for d in info.devices])
    present = {d.index for d in info.devices}
    with ctx.store.transaction() as txn:
        table = txn.table
        dropped = tuple(x for x in table.of_domain(info.uuid) if x.phase == "attached" and x.index not in present)
        table = table.without(dropped)
        kept: tuple[Lease, ...] = ()
        if info.devices:
            claims = _claims(ctx, info)
            grant = on_host(ctx, lambda host: claim(host, ctx.pools, table, domain=info.name, uuid=info.uuid,
                                                    claims=claims, boot_id=ctx.boot_id, now=now, phase="attached",
                                                    running=True))
            table = grant.table
            kept = grant.leases
        kept += tuple(x for x in table.of_domain(info.uuid) if x.phase == "pending-attach")
        txn.table = table
    return kept, dropped
