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

A VF reserved by hand (`vfalloc alloc`, `reserve`) replaces the domain's lease for the same request
position only when that lease is a reservation of a domain that does not run (the caller says who
runs); a lease that may be in use is refused, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import AllocationError, LeaseInUse, PoolExhausted, UnknownPool, VfConflict, VfsNotRead, shown
from .model import PF, VF, Host, Lease, LeaseTable, PciAddress, Phase, Pool, Request, derive_mac
from .record import Record, replace


class Grant(Record):
    table: LeaseTable
    leases: tuple[Lease, ...]          # the domain's leases: claims first, then requests, in order
    reclaimed: tuple[Lease, ...] = ()  # leases of an earlier boot that were taken over
    dropped: tuple[Lease, ...] = ()    # a running domain's attached leases whose device is gone


class Claim(Record):
    """A device already in a domain's XML: request `request` on the VF at `address`."""

    request: Request
    address: PciAddress


class Demand(Record):
    """Everything one domain asks for at once: the VFs its XML names (claims, taken in phase
    attached) and the requests without a device (leased in `phase`). `running`: the domain runs
    already (reconciled after a daemon restart): a claim keeps the time of its lease, and an
    attached lease whose device is gone is dropped."""

    domain: str
    uuid: str
    claims: tuple[Claim, ...] = ()
    requests: tuple[Request, ...] = ()
    phase: str = Phase.PENDING
    numa_nodes: frozenset[int] = frozenset()
    running: bool = False


def grant(host: Host, pools: Sequence[Pool], table: LeaseTable, demand: Demand, *, boot_id: str,
          now: str) -> Grant:
    """The leases `demand` gets on `host`, and the table with them. Linear in the table and the
    demand: the table is indexed once, not copied per claim."""
    draft = _TableDraft(table)
    dropped: list[Lease] = []
    if demand.running:
        present = {c.request.index for c in demand.claims}
        dropped = [lease for lease in draft.of_domain(demand.uuid) if lease.phase == Phase.ATTACHED and lease.index not in present]
        for lease in dropped:
            draft.drop(lease)
    granted = [_claim(host, pools, draft, demand, item, boot_id, now) for item in demand.claims]
    by_name = {p.name: p for p in pools}
    for request in demand.requests:
        pool = by_name.get(request.pool)
        if pool is None:
            raise UnknownPool(request.pool, demand.domain, tuple(by_name))
        granted.append(_allocate(host, pool, draft, demand, request.with_defaults(pool), boot_id, now))
    return Grant(draft.table(), tuple(granted), tuple(draft.reclaimed), tuple(dropped))


def allocate(host: Host, pools: Sequence[Pool], table: LeaseTable, *, domain: str, uuid: str,
             requests: Sequence[Request], boot_id: str, now: str, phase: str,
             numa_nodes: frozenset[int] = frozenset()) -> Grant:
    """`grant` for requests alone."""
    demand = Demand(domain, uuid, requests=tuple(requests), phase=phase, numa_nodes=numa_nodes)
    return grant(host, pools, table, demand, boot_id=boot_id, now=now)


def claim(host: Host, pools: Sequence[Pool], table: LeaseTable, *, domain: str, uuid: str,
          claims: Sequence[Claim], boot_id: str, now: str, running: bool = False) -> Grant:
    """`grant` for claims alone: take exactly the VFs a domain's XML already names (free, of an
    earlier boot, or already this domain's); refuse when another domain holds one."""
    demand = Demand(domain, uuid, claims=tuple(claims), running=running)
    return grant(host, pools, table, demand, boot_id=boot_id, now=now)


class Reservation(Record):
    """What `vfalloc alloc` did: the grant, and the reservation it replaced (the domain's lease
    for the same request position on another VF or with other settings), if any."""

    grant: Grant
    replaced: Lease | None = None


def held(table: LeaseTable, uuid: str, index: int) -> Lease | None:
    """The lease domain `uuid` holds for request position `index`."""
    return next((lease for lease in table.leases if lease.uuid == uuid and lease.index == index), None)


def free_index(table: LeaseTable, uuid: str) -> int:
    """The domain's first request position without a lease."""
    used = {lease.index for lease in table.leases if lease.uuid == uuid}
    index = 0
    while index in used:
        index += 1
    return index


def reserve(host: Host, pools: Sequence[Pool], table: LeaseTable, *, domain: str, uuid: str, request: Request,
            boot_id: str, now: str, judged: Lease | None, runs: str | None) -> Reservation:
    """`vfalloc alloc`: a VF for `request`, reserved by hand (phase reserved). The lease the domain
    holds for the same position is replaced only when it is a reservation of a domain that does
    not run: `judged` is that lease as the caller read it before the lock, `runs` who saw its
    domain run (None: nobody). An attached or pending lease, a reservation of a running domain
    and a lease that changed since it was judged are refused, and nothing is granted."""
    old = held(table, uuid, request.index)
    if old is not None:
        state = None
        if old.phase != Phase.RESERVED:
            state = old.phase
        elif old != judged:
            raise AllocationError(f"the lease of {shown(old.domain)} for request {old.index} changed while vfalloc "
                                  "alloc ran; run it again")
        elif runs is not None:
            state = f"reserved, and {shown(old.domain)} runs: {runs}"
        if state is not None:
            raise LeaseInUse(old.domain, old.uuid, old.vf, old.index, state, free_index(table, uuid))
    done = allocate(host, pools, table, domain=domain, uuid=uuid, requests=[request], boot_id=boot_id, now=now,
                    phase=Phase.RESERVED)
    new = done.leases[0]
    same = old is not None and (old.vf, old.domain, old.request()) == (new.vf, new.domain, new.request())
    return Reservation(done, None if old is None or same else old)


class _TableDraft:
    """The lease table while one demand is granted: leases by VF (in table order, a VF holds one
    lease) and by (domain, request index), changed in place, turned into a table once."""

    def __init__(self, table: LeaseTable) -> None:
        self.by_vf = {lease.vf: lease for lease in table.leases}
        self.mine = {(lease.uuid, lease.index): lease for lease in table.leases}
        self.last = table.last
        self.added: list[Lease] = []
        self.reclaimed: list[Lease] = []

    def of_domain(self, uuid: str) -> list[Lease]:
        return [lease for lease in self.by_vf.values() if lease.uuid == uuid]

    def held(self, uuid: str, index: int) -> Lease | None:
        return self.mine.get((uuid, index))

    def drop(self, lease: Lease) -> None:
        if self.by_vf.get(lease.vf) == lease:
            del self.by_vf[lease.vf]
        if self.mine.get((lease.uuid, lease.index)) == lease:
            del self.mine[(lease.uuid, lease.index)]

    def put(self, lease: Lease) -> None:
        """Add `lease`; a VF's lease keeps its place in the table when it is renewed."""
        self.by_vf[lease.vf] = lease
        self.mine[(lease.uuid, lease.index)] = lease
        self.added.append(lease)

    def table(self) -> LeaseTable:
        last = {uuid: dict(m) for uuid, m in self.last.items()}
        for lease in self.added:
            last.setdefault(lease.uuid, {})[str(lease.index)] = lease.vf
        return LeaseTable(tuple(self.by_vf.values()), last)


def _claim(host: Host, pools: Sequence[Pool], draft: _TableDraft, demand: Demand, item: Claim, boot_id: str,
           now: str) -> Lease:
    """A device in the XML: its VF, taken anew with this start's time, so that gc tells it from a
    lease it read before; a running domain keeps the time of its lease on the same VF."""
    address = str(item.address)
    vf = host.find_vf(address)
    if vf is None:
        raise AllocationError(f"VF {address} in the XML of {demand.domain} is not a VF on this host; "
                              "create it with `vfalloc host numvfs` or remove the device")
    holder = draft.by_vf.get(address)
    if holder is not None and holder.uuid != demand.uuid:
        if holder.boot_id == boot_id:
            raise VfConflict(address, demand.domain, holder.domain)
        draft.reclaimed.append(holder)
    mine = draft.held(demand.uuid, item.request.index)
    for old in (holder, mine):
        if old is not None:
            draft.drop(old)
    pool = next((p for p in pools if p.admits(vf)), None)
    request = item.request.with_defaults(pool) if pool and pool.name == item.request.pool else item.request
    lease = _lease(vf, pool, request, demand.domain, demand.uuid, boot_id, now, Phase.ATTACHED)
    if demand.running and mine is not None and mine.vf == address and mine.boot_id == boot_id:
        lease = replace(lease, since=mine.since)
    draft.put(lease)
    return lease


def _allocate(host: Host, pool: Pool, draft: _TableDraft, demand: Demand, request: Request, boot_id: str,
              now: str) -> Lease:
    """A VF of `pool` for `request`. The domain's own lease for it keeps its VF, taken anew with
    what the request asks now (MAC, VLAN, trust, ...), this start's phase and time."""
    held = draft.held(demand.uuid, request.index)
    if held is not None:
        vf = host.find_vf(held.vf) if held.pool == pool.name else None
        if vf is not None:
            lease = _lease(vf, pool, request, demand.domain, demand.uuid, boot_id, now, demand.phase)
            draft.put(lease)  # the same VF: the lease keeps its place in the table
            return lease
        draft.drop(held)
    vf, old = _choose(host, pool, draft, demand.uuid, request.index, boot_id, demand.numa_nodes, demand.domain)
    if old is not None:
        draft.drop(old)
        draft.reclaimed.append(old)
    lease = _lease(vf, pool, request, demand.domain, demand.uuid, boot_id, now, demand.phase)
    draft.put(lease)
    return lease


def release(table: LeaseTable, uuid: str) -> tuple[LeaseTable, tuple[Lease, ...]]:
    """Give back every lease of one domain; other domains' leases are untouched."""
    mine = table.of_domain(uuid)
    return table.without(mine), mine


def set_phase(table: LeaseTable, leases: Iterable[Lease], phase: str) -> LeaseTable:
    for lease in leases:
        current = next((held for held in table.leases if held.vf == lease.vf and held.uuid == lease.uuid), None)
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


def _choose(host: Host, pool: Pool, draft: _TableDraft, uuid: str, index: int, boot_id: str,
            numa_nodes: frozenset[int], domain: str) -> tuple[VF, Lease | None]:
    holders = draft.by_vf
    sticky = draft.last.get(uuid, {}).get(str(index))
    sticky_vf = None
    if sticky is not None and (sticky not in holders or holders[sticky].boot_id != boot_id):
        sticky_vf = host.find_vf(sticky)
    load: dict[PciAddress, int] = {}
    if pool.policy == "spread":
        for lease in holders.values():
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
