"""Who holds what: the rows behind `vfalloc list` and `vfalloc pools`, computed from a Host
snapshot, the pools and the lease table. Pure: no I/O, no formatting for people (cli does that).

A VF's state is one of:
  free      in a pool, no lease
  leased    held by a domain
  stale     held by a lease that cannot be live (earlier boot, VF gone, domain not running)
  unusable  in no pool, so vfalloc never hands it out
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from .allocator import stale_reason
from .model import PF, VF, Host, LeaseTable, Phase, Pool

STATES = ("free", "leased", "stale", "unusable")
VF_KEYS = ("vf", "pf", "pf_netdev", "vf_index", "pool", "state", "domain", "domain_uuid", "mac",
           "vlan", "numa_node", "iommu_group", "driver", "phase", "since", "reason")


def vf_rows(host: Host, pools: Sequence[Pool], table: LeaseTable, boot_id: str,
            running: Iterable[str] | None = None) -> list[dict]:
    """One row per VF on the host, plus one per lease whose VF is gone.
    `running`: UUIDs of running domains when known; leases of others are stale."""
    running_set = None if running is None else set(running)
    vfs = host.vf_map()
    leases = table.by_vf()
    rows = []
    for pf in host.pfs:
        pool_of = _pools_of_pf(pf, pools)
        pf_address = str(pf.address)
        for vf in pf.vfs:
            pool = pool_of(vf)
            address = str(vf.address)
            row = {
                "vf": address, "pf": pf_address, "pf_netdev": pf.netdev,
                "vf_index": vf.index, "pool": pool, "state": "free" if pool else "unusable",
                "domain": None, "domain_uuid": None, "mac": None, "vlan": None,
                "numa_node": vf.numa_node, "iommu_group": vf.iommu_group, "driver": vf.driver,
                "phase": None, "since": None, "reason": None,
            }
            lease = leases.get(address)
            if lease is not None:
                _apply_lease(row, lease, vfs, boot_id, running_set)
            rows.append(row)
    for lease in table.leases:
        if lease.vf not in vfs:
            row = dict.fromkeys(VF_KEYS)
            row.update(vf=lease.vf, pf=lease.pf, pool=lease.pool)
            _apply_lease(row, lease, vfs, boot_id, running_set)
            rows.append(row)
    return rows


def _pools_of_pf(pf: PF, pools: Sequence[Pool]) -> Callable[[VF], str | None]:
    """Which pool each VF of `pf` is in, worked out once for the PF: only the pools with a
    member on it are asked about its VFs, and a pool that takes the whole PF answers for all of
    them. A thousand VFs checked against every pool one by one cost more than reading them."""
    candidates = [p for p in pools if p.has_pf(pf.address)]
    if not candidates:
        return lambda vf: None
    first = candidates[0]
    if first.takes_whole_pf(pf.address):
        return lambda vf: first.name
    return lambda vf: next((p.name for p in candidates if p.admits(vf)), None)


def _apply_lease(row: dict, lease, vfs, boot_id: str, running: set[str] | None) -> None:
    reason = stale_reason(lease, vfs, boot_id)
    if reason is None and running is not None and lease.uuid not in running and lease.phase != Phase.RESERVED:
        reason = "its domain is not running"
    row.update(state="stale" if reason else "leased", domain=lease.domain, domain_uuid=lease.uuid,
               mac=lease.mac, vlan=lease.vlan, phase=lease.phase, since=lease.since, reason=reason)


def pool_rows(host: Host, pools: Sequence[Pool], rows: Sequence[Mapping]) -> list[dict]:
    """Capacity per pool and, inside it, per PF: total, free, leased, stale. Every pool and
    every PF of it is listed, also when it has no VFs (numvfs 0)."""
    netdevs = {str(pf.address): pf.netdev for pf in host.pfs}
    result: dict[str, dict] = {}
    for pool in pools:
        entry = {"pool": pool.name, "policy": pool.policy, **_zero(), "pfs": {}}
        for member in pool.members:
            pf = str(member.pf)
            entry["pfs"][pf] = {"pf": pf, "pf_netdev": netdevs.get(pf), **_zero()}
        result[pool.name] = entry
    for row in rows:
        if row["pool"] not in result:
            continue
        counts = result[row["pool"]]
        pf = counts["pfs"].setdefault(row["pf"], {"pf": row["pf"], "pf_netdev": row["pf_netdev"], **_zero()})
        for counter in (counts, pf):
            counter["total"] += 1
            counter[row["state"]] += 1
    for entry in result.values():
        entry["pfs"] = list(entry["pfs"].values())
    return list(result.values())


def _zero() -> dict:
    return {"total": 0, "free": 0, "leased": 0, "stale": 0}
