"""Pure choice of VFs: which VF a domain gets, which lease a stop gives back, which leases are
stale. Takes a Host snapshot, the pools and a LeaseTable and returns a new LeaseTable; it does no
I/O, takes no lock and never reads a clock (callers pass `now` and the boot id).

Choice order for a request: the lease the domain already holds for it (idempotent), then the VF
it held last if free (sticky), then VFs on the domain's NUMA nodes when it is pinned (preferred,
not required), then the pool's policy: `pack` fills PFs in the order the pool lists them,
`spread` takes the PF of the pool with the fewest leases. A VF whose lease comes from an earlier
boot (a different boot_id) cannot be in use: it is taken over when no truly free VF is left.

A snapshot may leave some PFs' VFs unread. The choice then looks at the PFs in the order their
VFs could win, and raises VfsNotRead for the first PF it cannot do without; the caller reads it
and asks again. The answer is the one the whole host would give.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import AllocationError, PoolExhausted, UnknownPool, VfConflict, VfsNotRead
from .model import PF, VF, Host, Lease, LeaseTable, PciAddress, Pool, Request, derive_mac
from .record import Record, replace


class Grant(Record):
    table: LeaseTable
    leases: tuple[Lease, ...]          # the domain's leases for the requests, in request order
    reclaimed: tuple[Lease, ...] = ()  # leases of an earlier boot that were taken over


class Claim(Record):
    """A device already in a domain's XML: request `request` on the VF at `address`."""

    request: Request
    address: PciAddress


def allocate(host: Host, pools: Sequence[Pool], table: LeaseTable, *, domain: str, uuid: str,
             requests: Sequence[Request], boot_id: str, now: str, phase: str,
             numa_nodes: frozenset[int] = frozenset()) -> Grant:
    by_name = {p.name: p for p in pools}
    granted: list[Lease] = []
    reclaimed: list[Lease] = []
    for request in requests:
        pool = by_name.get(request.pool)
        if pool is None:
            raise UnknownPool(request.pool, domain, tuple(by_name))
        request = request.with_defaults(pool)
        held = _held(table, uuid, request.index)
        if held is not None and held.pool == pool.name and host.find_vf(held.vf) is not None:
            # The same VF again, taken anew: this start's phase (a lease reserved by hand must
            # now be hot-plugged) and time (gc tells a lease taken again from the one it read).
            fresh = replace(held, domain=domain, boot_id=boot_id, since=now, phase=phase)
            table = table.replaced(held, fresh)
            granted.append(fresh)
            continue
        if held is not None:
            table = table.without([held])
        vf, old = _choose(host, pool, table, uuid, request.index, boot_id, numa_nodes, domain)
        if old is not None:
            table = table.without([old])
            reclaimed.append(old)
        lease = _lease(vf, pool, request, domain, uuid, boot_id, now, phase)
        table = table.with_leases([lease])
        granted.append(lease)
    return Grant(table, tuple(granted), tuple(reclaimed))


def claim(host: Host, pools: Sequence[Pool], table: LeaseTable, *, domain: str, uuid: str,
          claims: Sequence[Claim], boot_id: str, now: str, phase: str = "attached",
          running: bool = False) -> Grant:
    """Take exactly the VFs a domain's XML already names (free, of an earlier boot, or already
    this domain's); refuse when another domain holds one. A domain that starts takes its lease
    anew, with this start's time, so that gc tells it from a lease it read before; a `running`
    one (reconciled after a daemon restart) keeps the time of its lease."""
    granted: list[Lease] = []
    reclaimed: list[Lease] = []
    for item in claims:
        address = str(item.address)
        vf = host.find_vf(address)
        if vf is None:
            raise AllocationError(f"VF {address} in the XML of {domain} is not a VF on this host; "
                                  "create it with `vfalloc host numvfs` or remove the device")
        holder = table.by_vf().get(address)
        if holder is not None and holder.uuid != uuid and holder.boot_id == boot_id:
            raise VfConflict(address, domain, holder.domain)
        if holder is not None and holder.uuid != uuid:
            reclaimed.append(holder)
        mine = _held(table, uuid, item.request.index)
        table = table.without([x for x in (holder, mine) if x is not None])
        pool = next((p for p in pools if p.admits(vf)), None)
        request = item.request.with_defaults(pool) if pool and pool.name == item.request.pool else item.request
        lease = _lease(vf, pool, request, domain, uuid, boot_id, now, phase)
        if running and mine is not None and mine.vf == address and mine.boot_id == boot_id:
            lease = replace(lease, since=mine.since)
        table = table.with_leases([lease])
        granted.append(lease)
    return Grant(table, tuple(granted), tuple(reclaimed))


def release(table: LeaseTable, uuid: str) -> tuple[LeaseTable, tuple[Lease, ...]]:
    """Give back every lease of one domain; other domains' leases are untouched."""
    mine = table.of_domain(uuid)
    return table.without(mine), mine


def set_phase(table: LeaseTable, leases: Iterable[Lease], phase: str) -> LeaseTable:
    for lease in leases:
        current = next((x for x in table.leases if x.vf == lease.vf and x.uuid == lease.uuid), None)
        if current is not None:
            table = table.replaced(current, replace(current, phase=phase))
    return table


def stale_reason(lease: Lease, vfs: dict[str, VF], boot_id: str) -> str | None:
    """Why a lease cannot be live, judged from the host alone (not from libvirt)."""
    if lease.boot_id != boot_id:
        return "taken in an earlier boot"
    if lease.vf not in vfs:
        return "its VF no longer exists"
    return None


def _held(table: LeaseTable, uuid: str, index: int) -> Lease | None:
    return next((x for x in table.leases if x.uuid == uuid and x.index == index), None)


def _choose(host: Host, pool: Pool, table: LeaseTable, uuid: str, index: int, boot_id: str,
            numa_nodes: frozenset[int], domain: str) -> tuple[VF, Lease | None]:
    holders = table.by_vf()
    sticky = table.last.get(uuid, {}).get(str(index))
    sticky_vf = None
    if sticky is not None and (sticky not in holders or holders[sticky].boot_id != boot_id):
        sticky_vf = host.find_vf(sticky)
    load: dict[PciAddress, int] = {}
    if pool.policy == "spread":
        for lease in table.leases:
            if lease.pool == pool.name:
                pf = PciAddress.parse(lease.pf)
                load[pf] = load.get(pf, 0) + 1

    def key(vf: VF) -> tuple:
        # The sticky VF, then the domain's NUMA nodes, then the policy: `spread` the PF with the
        # fewest leases of the pool, both the pool's member order, then PF and VF index.
        return (vf is not sticky_vf, vf.numa_node not in numa_nodes, load.get(vf.pf, 0),
                pool.member_rank(vf), vf.pf, vf.index)

    def bound(pf: PF) -> tuple:
        # No VF of `pf` can come before this: every VF of a PF is on the PF's NUMA node (the
        # hook's brief read takes the PF's node for its VFs), the sticky VF was found already.
        return (True, pf.numa_node not in numa_nodes, load.get(pf.address, 0), pool.pf_rank(pf.address),
                pf.address, -1)

    chosen = _first_free(host, pool, key, bound, lambda vf: str(vf.address) not in holders)
    if chosen is None:
        # No truly free VF: one whose lease is from an earlier boot cannot be in use.
        members = [vf for pf in host.pfs if pool.has_pf(pf.address)
                   for vf in host.vfs_of(pf.address) if pool.admits(vf)]
        earlier = [vf for vf in members if holders[str(vf.address)].boot_id != boot_id]
        if not earlier:
            names = tuple(holders[str(vf.address)].domain for vf in members)
            raise PoolExhausted(pool.name, domain, len(members), names)
        chosen = min(earlier, key=key)
    return chosen, holders.get(str(chosen.address))


def _first_free(host: Host, pool: Pool, key, bound, free) -> VF | None:
    """The free VF of the pool with the least key, from the PFs read so far; when a PF not read
    yet could hold a lesser one (its bound is less), ask for that PF's VFs instead."""
    best: tuple | None = None
    chosen = None
    unread = []
    for pf in host.pfs:
        if not pool.has_pf(pf.address):
            continue
        if pf.address in host.unread:
            unread.append(pf)
            continue
        for vf in pf.vfs:
            if pool.admits(vf) and free(vf):
                k = key(vf)
                if best is None or k < best:
                    best, chosen = k, vf
    if unread:
        nearest = min(unread, key=bound)
        if best is None or bound(nearest) < best:
            raise VfsNotRead(frozenset((nearest.address,)))
    return chosen


def _lease(vf: VF, pool: Pool | None, request: Request, domain: str, uuid: str, boot_id: str,
           now: str, phase: str) -> Lease:
    mac = None
    if request.type == "interface":
        mac = request.mac or derive_mac(uuid, request.index)
    return Lease(vf=str(vf.address), pf=str(vf.pf), pool=pool.name if pool else request.pool,
                 domain=domain, uuid=uuid, index=request.index, mac=mac, vlan=request.vlan,
                 since=now, boot_id=boot_id, phase=phase, type=request.type, trust=request.trust,
                 spoofchk=request.spoofchk, required=request.required)
