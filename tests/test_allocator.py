"""The allocator on realistic hosts: idempotency, stickiness, policies, NUMA, release isolation,
pinned claims, stale leases."""

import pytest
from fakehost import FakeSys, connectx, i350, x710

from vfalloc.allocator import Claim, allocate, claim, held, release, reserve, set_phase
from vfalloc.config import read_config, resolve_pools
from vfalloc.errors import AllocationError, PoolExhausted, UnknownPool, VfConflict
from vfalloc.model import LeaseTable, PciAddress, Pool, PoolMember, Request, derive_mac
from vfalloc.stale import find_stale
from vfalloc.sysfs import Sysfs

BOOT = "boot-1"
NOW = "2026-11-26T09:00:00+00:00"


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


@pytest.fixture
def host(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    i350(fs)
    x710(fs, numvfs=4)
    connectx(fs, numvfs=4)
    return Sysfs(fs.root).read_host()


def pools_of(tmp_path, host, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return resolve_pools(read_config(path, True), host)


def alloc(host, pools, table, n, *requests, numa=frozenset(), boot=BOOT):
    reqs = [Request(pool=p, index=i) for i, p in enumerate(requests)]
    return allocate(host, pools, table, domain=f"vm{n}", uuid=uuid(n), requests=reqs, boot_id=boot,
                    now=NOW, phase="pending-attach", numa_nodes=numa)


def test_lease_records_everything(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan0]\npfs = ["enp1s0f0"]\nvlan = 20\ntrust = "on"\n')
    grant = alloc(host, pools, LeaseTable(), 1, "lan0")
    (lease,) = grant.leases
    assert (lease.vf, lease.pf, lease.pool, lease.domain, lease.uuid, lease.index) == (
        "0000:01:10.0", "0000:01:00.0", "lan0", "vm1", uuid(1), 0)
    assert (lease.mac, lease.vlan, lease.trust, lease.since, lease.boot_id, lease.phase) == (
        derive_mac(uuid(1), 0), 20, "on", NOW, BOOT, "pending-attach")
    assert grant.table.leases == (lease,)


def test_idempotent(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan0]\npfs = ["enp1s0f0"]\n')
    first = alloc(host, pools, LeaseTable(), 1, "lan0", "lan0")
    again = alloc(host, pools, first.table, 1, "lan0", "lan0")
    assert [x.vf for x in again.leases] == [x.vf for x in first.leases]
    assert len(again.table.leases) == 2


def test_pack_fills_first_pf_in_pool_order(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f2", "enp1s0f0"]\npolicy = "pack"\n')
    table = LeaseTable()
    got = []
    for n in range(9):
        grant = alloc(host, pools, table, n, "lan")
        table = grant.table
        got.append(grant.leases[0].pf)
    assert got == ["0000:01:00.2"] * 7 + ["0000:01:00.0"] * 2


def test_spread_balances_pfs(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0", "enp1s0f1", "enp1s0f2"]\npolicy = "spread"\n')
    table = LeaseTable()
    got = []
    for n in range(6):
        grant = alloc(host, pools, table, n, "lan")
        table = grant.table
        got.append(grant.leases[0].pf[-1])
    assert got == ["0", "1", "2", "0", "1", "2"]


def test_ranges_limit_the_vfs(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0#5-6"]\n')
    table = LeaseTable()
    indexes = []
    for n in range(2):
        grant = alloc(host, pools, table, n, "lan")
        table = grant.table
        indexes.append(host.vf_map()[grant.leases[0].vf].index)
    assert indexes == [5, 6]
    with pytest.raises(PoolExhausted) as info:
        alloc(host, pools, table, 9, "lan")
    assert str(info.value) == ("no free VF in pool lan for vm9 (2 of 2 leased: vm0, vm1); "
                               "free one or add VFs to the pool")


def test_sticky_returns_the_last_vf(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    table = alloc(host, pools, LeaseTable(), 1, "lan").table
    table = alloc(host, pools, table, 2, "lan").table
    vm2_vf = table.of_domain(uuid(2))[0].vf
    table, _ = release(table, uuid(2))
    table = alloc(host, pools, table, 3, "lan").table  # takes vm2's old VF? no: pack picks lowest free
    assert table.of_domain(uuid(3))[0].vf == vm2_vf
    table, _ = release(table, uuid(3))
    table, _ = release(table, uuid(1))
    # vm2 comes back: its last VF is free again and it gets it, although a lower one is free too
    table = alloc(host, pools, table, 2, "lan").table
    assert table.of_domain(uuid(2))[0].vf == vm2_vf


def test_numa_preference(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.cx]\npfs = ["ens5f0np0", "ens6f0np0"]\n')
    vfs = host.vf_map()
    grant = alloc(host, pools, LeaseTable(), 1, "cx", numa=frozenset({1}))
    assert vfs[grant.leases[0].vf].numa_node == 1
    table = LeaseTable()
    nodes = []
    for n in range(6):  # node 1 has 4 VFs; then it falls back to node 0
        grant = alloc(host, pools, table, n, "cx", numa=frozenset({1}))
        table = grant.table
        nodes.append(vfs[grant.leases[0].vf].numa_node)
    assert nodes == [1, 1, 1, 1, 0, 0]


def test_release_only_touches_one_domain(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    table = LeaseTable()
    for n in range(4):
        table = alloc(host, pools, table, n, *(["lan", "lan"] if n == 2 else ["lan"])).table
    before = {x for x in table.leases if x.uuid != uuid(2)}
    table, gone = release(table, uuid(2))
    assert [x.uuid for x in gone] == [uuid(2)] * 2 and set(table.leases) == before
    table2, gone2 = release(table, uuid(2))
    assert gone2 == () and table2 == table


def test_unknown_pool(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    with pytest.raises(UnknownPool, match="no pool named wan for vm1 \\(pools: lan\\)"):
        alloc(host, pools, LeaseTable(), 1, "wan")


def test_empty_pool_says_how_to_fix(host):
    pf = PciAddress.parse("0000:09:00.0")
    with pytest.raises(PoolExhausted, match=r"\(the pool has no VFs\); create VFs with `vfalloc host numvfs`"):
        alloc(host, [Pool("none", (PoolMember(pf),))], LeaseTable(), 1, "none")


def test_earlier_boot_lease_is_stale_and_reclaimed_only_when_needed(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0#0-1"]\n')
    table = alloc(host, pools, LeaseTable(), 1, "lan", boot="old-boot").table
    assert [(x.domain, r) for x, r in find_stale(table, host.vf_map(), BOOT, None, None)] == [("vm1", "taken in an earlier boot")]
    grant = alloc(host, pools, table, 2, "lan")
    assert grant.reclaimed == () and grant.leases[0].vf == "0000:01:10.4"
    grant = alloc(host, pools, grant.table, 3, "lan")
    assert [x.domain for x in grant.reclaimed] == ["vm1"] and grant.leases[0].vf == "0000:01:10.0"
    assert {x.domain for x in grant.table.leases} == {"vm2", "vm3"}


def test_lease_of_vanished_vf_is_stale(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    table = alloc(host, pools, LeaseTable(), 1, "lan").table
    table = table.with_leases([table.leases[0].__class__(**{**table.leases[0].to_json(), "vf": "0000:01:1f.0"})])
    assert [r for _, r in find_stale(table, host.vf_map(), BOOT, None, None)] == ["its VF no longer exists"]


def test_claim_pinned_devices(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    addr = host.pf("enp1s0f0").vfs[3].address
    grant = claim(host, pools, LeaseTable(), domain="vm1", uuid=uuid(1), boot_id=BOOT, now=NOW,
                  claims=[Claim(Request(pool="lan"), addr)])
    assert [(x.vf, x.phase, x.pool) for x in grant.leases] == [(str(addr), "attached", "lan")]
    running = claim(host, pools, grant.table, domain="vm1", uuid=uuid(1), boot_id=BOOT, now="later",
                    claims=[Claim(Request(pool="lan"), addr)], running=True)
    assert running.table.leases == grant.table.leases  # reconciled while it runs: unchanged
    again = claim(host, pools, grant.table, domain="vm1", uuid=uuid(1), boot_id=BOOT, now="later",
                  claims=[Claim(Request(pool="lan"), addr)])
    assert [(x.vf, x.since) for x in again.table.leases] == [(str(addr), "later")]  # a new start takes it anew
    with pytest.raises(VfConflict, match=f"VF {addr} wanted by vm2 is leased to vm1"):
        claim(host, pools, grant.table, domain="vm2", uuid=uuid(2), boot_id=BOOT, now=NOW,
              claims=[Claim(Request(pool="lan"), addr)])
    with pytest.raises(AllocationError, match="is not a VF on this host"):
        claim(host, pools, grant.table, domain="vm2", uuid=uuid(2), boot_id=BOOT, now=NOW,
              claims=[Claim(Request(pool="lan"), PciAddress.parse("0000:77:00.0"))])


def test_set_phase(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    grant = alloc(host, pools, LeaseTable(), 1, "lan", "lan")
    table = set_phase(grant.table, grant.leases[:1], "attached")
    assert [x.phase for x in table.leases] == ["attached", "pending-attach"]


def test_derived_mac_is_stable_local_unicast():
    macs = {derive_mac(uuid(n), i) for n in range(200) for i in range(3)}
    assert len(macs) == 600
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01 and mac != "00:00:00:00:00:00"
    assert derive_mac(uuid(1), 0) == derive_mac(uuid(1).upper(), 0)


def test_own_lease_of_an_earlier_boot_starts_afresh(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    old = allocate(host, pools, LeaseTable(), domain="vm1", uuid=uuid(1), requests=[Request(pool="lan")],
                   boot_id="old-boot", now="2026-01-01T00:00:00+00:00", phase="attached")
    new = allocate(host, pools, old.table, domain="vm1", uuid=uuid(1), requests=[Request(pool="lan")],
                   boot_id=BOOT, now=NOW, phase="pending-attach")
    (lease,) = new.leases
    assert lease.vf == old.leases[0].vf  # the same VF: sticky
    assert (lease.boot_id, lease.since, lease.phase) == (BOOT, NOW, "pending-attach")
    later = "2026-11-26T10:00:00+00:00"
    same = allocate(host, pools, new.table, domain="vm1", uuid=uuid(1), requests=[Request(pool="lan")],
                    boot_id=BOOT, now=later, phase="pending-attach")
    assert [x.vf for x in same.leases] == [x.vf for x in new.leases]  # asking again: the same VF
    assert same.leases[0].since == later  # taken anew: gc must not mistake it for the one it read


def test_lease_reserved_by_hand_is_hot_plugged_when_the_domain_starts(tmp_path, host):
    pools = pools_of(tmp_path, host, '[pools.lan]\npfs = ["enp1s0f0"]\n')
    reserved = allocate(host, pools, LeaseTable(), domain="vm1", uuid=uuid(1), requests=[Request(pool="lan")],
                        boot_id=BOOT, now=NOW, phase="reserved")
    start = allocate(host, pools, reserved.table, domain="vm1", uuid=uuid(1), requests=[Request(pool="lan")],
                     boot_id=BOOT, now=NOW, phase="pending-attach")
    assert [(x.vf, x.phase) for x in start.leases] == [(reserved.leases[0].vf, "pending-attach")]


@pytest.mark.parametrize("holders,shown", [
    (7, "vm0, vm1, vm2, vm3, vm4, vm5, vm6"),
    (8, "vm0, vm1, vm2, vm3, vm4, vm5, vm6, vm7"),
    (12, "vm0, vm1, vm10, vm11, vm2, vm3, vm4, vm5, ... (4 more)"),
], ids=["seven", "eight", "twelve"])
def test_exhaustion_names_the_holders(holders, shown):
    err = PoolExhausted("lan0", "vmX", holders, tuple(f"vm{n}" for n in range(holders)))
    assert str(err) == f"no free VF in pool lan0 for vmX ({holders} of {holders} leased: {shown}); " \
                       "free one or add VFs to the pool"


def _reserved(host, pools, table, pool, index=0, judged=None, runs=None, **settings):
    return reserve(host, pools, table, domain="vm1", uuid=uuid(1), request=Request(pool=pool, index=index, **settings),
                   boot_id=BOOT, now=NOW, judged=judged, runs=runs)


@pytest.mark.parametrize("phase, judged, runs, refusal", [
    ("attached", "as-read", None, r"vm1 holds VF 0000:01:10\.0 for request 0 \(attached\); .* --index 2 for a second VF"),
    ("pending-attach", "as-read", None, r"\(pending-attach\)"),
    ("reserved", "as-read", "libvirt at test", r"\(reserved, and vm1 runs: libvirt at test\)"),
    ("reserved", None, None, r"the lease of vm1 for request 0 changed while vfalloc alloc ran; run it again"),
], ids=["attached", "pending-attach", "domain-runs", "changed-since-judged"])
def test_reserve_refuses_a_lease_that_may_be_in_use(tmp_path, host, phase, judged, runs, refusal):
    pools = pools_of(tmp_path, host, '[pools.a]\npfs = ["enp1s0f0"]\n[pools.b]\npfs = ["enp1s0f1"]\n')
    table = _reserved(host, pools, LeaseTable(), "a").grant.table
    table = _reserved(host, pools, table, "a", index=1).grant.table  # so the free position is 2
    first = next(x for x in table.leases if x.index == 0)
    table = set_phase(table, [first], phase)
    with pytest.raises(AllocationError, match=refusal):
        _reserved(host, pools, table, "b", judged=held(table, uuid(1), 0) if judged else None, runs=runs)


@pytest.mark.parametrize("pool, settings, replaced", [
    ("a", {}, False), ("b", {}, True), ("a", {"vlan": 7}, True), ("a", {"mac": "52:54:00:00:00:01"}, True),
], ids=["same-request", "other-pool", "other-vlan", "other-mac"])
def test_reserve_replaces_a_reservation_only_when_it_changes(tmp_path, host, pool, settings, replaced):
    pools = pools_of(tmp_path, host, '[pools.a]\npfs = ["enp1s0f0"]\n[pools.b]\npfs = ["enp1s0f1"]\n')
    table = _reserved(host, pools, LeaseTable(), "a").grant.table
    old = held(table, uuid(1), 0)
    done = _reserved(host, pools, table, pool, judged=old, **settings)
    assert done.replaced == (old if replaced else None)
    assert [x.pool for x in done.grant.table.leases] == [pool]
