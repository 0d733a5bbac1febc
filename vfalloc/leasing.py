"""The leases of one domain's start, arrival or reconnect, from its parsed XML to the written
lease table.

Each operation goes the same way: read the part of the host the domain needs (HostView), turn
the XML into one Demand (the VFs it already names as claims, the requests without a device),
checked before the lock is taken, then, under the lock, let the allocator grant the demand on
the view and write the table. Holds no policy of its own (that is the allocator's) and never
talks to libvirt.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .allocator import Claim, Demand, Grant, grant, release
from .context import Context
from .errors import AllocationError
from .hostview import HostView
from .model import Host, Lease, Phase, Request

if TYPE_CHECKING:  # only in annotations: `vfalloc alloc` takes its clock from here without lxml
    from .domxml import DomainInfo, VfDevice


def now() -> str:
    """The time a lease is taken: UTC, ISO 8601, to the microsecond. gc frees a lease only when it
    is still exactly as gc read it; a domain stopped and started again in the same second must
    not leave an equal lease behind, so whole seconds are not enough. (time, not datetime: the
    hook would pay for the import.)"""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}+00:00"


def lease_for_start(ctx: Context, info: DomainInfo, when: str,
                    phase: str = Phase.PENDING) -> tuple[tuple[Lease, ...], HostView]:
    """Claim the VFs a domain's XML already names; lease VFs for its requests without a device,
    in `phase` (Phase.PENDING from the hook, Phase.RESERVED from `vfalloc start`). A lease
    reserved by hand for a request the XML does not make is a request too: the domain gets that
    VF. Returns the leases (claims first) and the view they were chosen on."""
    present = {d.index for d in info.devices}
    missing = [r for r in info.requests if r.index not in present]
    missing += _reserved_by_hand(ctx, info, present | {r.index for r in info.requests})
    if not missing and not info.devices:
        return (), HostView(ctx.sysfs, Host(()), ())
    view = HostView.for_domain(ctx.sysfs, ctx.settings.config, info.name, {r.pool for r in missing},
                               [d.address for d in info.devices])
    demand = Demand(info.name, info.uuid, claims=_claims(view, info, info.devices), requests=tuple(missing),
                    phase=phase, numa_nodes=numa_nodes(ctx, info) if missing else frozenset())
    return _grant(ctx, view, demand, when).leases, view


def lease_for_incoming(ctx: Context, info: DomainInfo, when: str) -> tuple[Lease, ...]:
    """A VF here for each vfalloc device of a domain arriving by migration or restore: a VF of
    its request's pool, or, for a device pinned without a request, the VF it names."""
    by_index = {r.index: r for r in info.requests}
    requests = tuple(by_index[d.index] for d in info.devices if d.index in by_index)
    pinned = [d for d in info.devices if d.index not in by_index]
    view = HostView.for_domain(ctx.sysfs, ctx.settings.config, info.name, {r.pool for r in requests},
                               [d.address for d in pinned])
    demand = Demand(info.name, info.uuid, claims=_claims(view, info, pinned), requests=requests,
                    phase=Phase.ATTACHED, numa_nodes=numa_nodes(ctx, info) if requests else frozenset())
    return tuple(sorted(_grant(ctx, view, demand, when).leases, key=lambda lease: lease.index))


def reconcile_running(ctx: Context, info: DomainInfo, when: str) -> tuple[tuple[Lease, ...], tuple[Lease, ...]]:
    """Make a running domain's leases match the vfalloc devices in its XML: claim those devices
    (keeping their leases' times), drop attached leases whose device is gone; pending hot-plugs
    are kept. Returns (kept, dropped)."""
    view = HostView.for_domain(ctx.sysfs, ctx.settings.config, info.name, {r.pool for r in info.requests},
                               [d.address for d in info.devices])
    demand = Demand(info.name, info.uuid, claims=_claims(view, info, info.devices), running=True)
    done = _grant(ctx, view, demand, when)
    pending = tuple(lease for lease in done.table.of_domain(info.uuid) if lease.phase == Phase.PENDING)
    return done.leases + pending, done.dropped


def release_domain(ctx: Context, uuid: str) -> tuple[Lease, ...]:
    with ctx.store.transaction() as txn:
        txn.table, gone = release(txn.table, uuid)
    return gone


def numa_nodes(ctx: Context, info: DomainInfo) -> frozenset[int]:
    """NUMA nodes a domain is pinned to: its <numatune> nodeset, plus the nodes whose CPUs its
    vCPUs are pinned to."""
    nodes = set(info.nodeset)
    if info.cpuset:
        for node, cpus in ctx.sysfs.node_cpus().items():
            if cpus & info.cpuset:
                nodes.add(node)
    return frozenset(nodes)


def _grant(ctx: Context, view: HostView, demand: Demand, when: str) -> Grant:
    """The one step under the lock: grant `demand` on the current table and write it."""
    boot_id = ctx.boot_id
    with ctx.store.transaction() as txn:
        table = txn.table
        done = view.decide(lambda host: grant(host, view.pools, table, demand, boot_id=boot_id, now=when))
        txn.table = done.table
    return done


def _claims(view: HostView, info: DomainInfo, devices) -> tuple[Claim, ...]:
    """A claim per device, with the request of the same index; a device pinned without a request
    claims its VF for the pool that holds it. Two devices naming one VF, or more devices than
    the host has VFs, are refused here, before the lock."""
    _check_devices(view, info.name, devices)
    by_index = {r.index: r for r in info.requests}
    claims = []
    for dev in devices:
        request = by_index.get(dev.index)
        if request is None:
            vf = view.find_vf(dev.address)
            pool = view.pool_of(vf) if vf is not None else None
            request = Request(pool=pool.name if pool else "pinned", index=dev.index, mac=dev.mac, type=dev.type)
        claims.append(Claim(request, dev.address))
    return tuple(claims)


def _check_devices(view: HostView, domain: str, devices: tuple[VfDevice, ...] | list[VfDevice]) -> None:
    seen: dict[str, int] = {}
    for dev in devices:
        first = seen.setdefault(str(dev.address), dev.index)
        if first != dev.index:
            raise AllocationError(f"the XML of {domain} names VF {dev.address} in two devices (ua-vfalloc-{first} "
                                  f"and ua-vfalloc-{dev.index}); a VF can be given once: remove one of them")
    total = sum(pf.numvfs for pf in view.host.pfs)
    if len(devices) > total:
        raise AllocationError(f"the XML of {domain} names {len(devices)} VF devices, more than the {total} VFs "
                              "vfalloc can see on this host; remove the devices that name no VF")


def _reserved_by_hand(ctx: Context, info: DomainInfo, asked: set[int]) -> list[Request]:
    """Requests for the leases reserved with `vfalloc alloc` for this domain whose index its XML
    does not ask for (read without the lock: the grant takes the held lease under it)."""
    return [lease.request() for lease in ctx.store.read().of_domain(info.uuid)
            if lease.phase == Phase.RESERVED and lease.index not in asked]
