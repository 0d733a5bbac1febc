"""The allocator on snapshots that leave PFs' VFs unread (the hook's fast path): it asks for the
PFs it needs, and its answer is always the one the whole host gives."""

from __future__ import annotations

import pytest
from fakehost import FakeSys
from fakehost import big_host as build_big_host
from hypothesis import given
from hypothesis import strategies as st

from vfalloc.allocator import Claim, allocate, claim
from vfalloc.config import load_settings
from vfalloc.context import Context
from vfalloc.domxml import read_domain
from vfalloc.errors import VfallocError, VfsNotRead
from vfalloc.hostview import HostView
from vfalloc.leasing import lease_for_start
from vfalloc.model import PF, VF, Host, Lease, LeaseTable, PciAddress, Pool, PoolMember, Request
from vfalloc.record import replace

BOOT, EARLIER = "boot-now", "boot-before"
UUID = "00000000-0000-0000-0000-000000000001"


def _pf(n: int, numa: int | None, numvfs: int) -> PF:
    address = PciAddress(0, 1 + n, 0, 0)
    vfs = tuple(VF(PciAddress(0, 1 + n, 16 + i // 8, i % 8), i, address, "", "", None, None, numa, None)
                for i in range(numvfs))
    return PF(address, f"eth{n}", "8086", "1521", "igb", 8, numvfs, numa, None, vfs)


def unread(host: Host, read=frozenset()) -> Host:
    """The same host as a brief read with `vfs_of=read` gives it."""
    pfs = tuple(pf if pf.address in read else replace(pf, vfs=()) for pf in host.pfs)
    return Host(pfs, frozenset(pf.address for pf in host.pfs if pf.address not in read))


def decide_reading(full: Host, partial: Host, decide):
    """What HostView.decide does, with the whole host standing in for sysfs: returns the
    answer (or the error) and the PFs read."""
    host, reads = partial, []
    while True:
        try:
            return decide(host), reads
        except VfsNotRead as need:
            pfs = need.pfs & host.unread
            assert pfs, "asked for PFs that were read already"
            if need.vf is not None:
                owner = next((pf.address for pf in full.pfs if any(str(v.address) == need.vf for v in pf.vfs)), None)
                pfs = frozenset((owner,)) if owner in pfs else pfs
            reads += sorted(pfs)
            host = host.with_vfs(pf for pf in full.pfs if pf.address in pfs)
        except VfallocError as exc:
            return (type(exc), str(exc)), reads


def outcome(decide, host):
    try:
        return decide(host)
    except VfallocError as exc:
        return type(exc), str(exc)


@st.composite
def scenarios(draw):
    pfs = [_pf(n, draw(st.sampled_from([0, 1, None])), draw(st.integers(0, 6))) for n in range(draw(st.integers(1, 5)))]
    full = Host(tuple(pfs))
    addresses = [pf.address for pf in pfs]
    pools = []
    for name in ("a", "b"):
        members = tuple(PoolMember(pf, draw(st.none() | st.frozensets(st.integers(0, 6), max_size=4)))
                        for pf in draw(st.lists(st.sampled_from(addresses), min_size=1, max_size=4)))
        pools.append(Pool(name, members, draw(st.sampled_from(["pack", "spread"]))))
    vf_addresses = [str(vf.address) for vf in full.vfs()] + ["0000:7f:10.0"]  # and one VF that is gone
    leases, seen = [], set()
    for n, vf in enumerate(draw(st.lists(st.sampled_from(vf_addresses), max_size=12))):
        if vf in seen:
            continue
        seen.add(vf)
        mine = draw(st.booleans()) and n < 3
        pf = next((str(p.address) for p in pfs if any(str(v.address) == vf for v in p.vfs)), "0000:7f:00.0")
        leases.append(Lease(vf=vf, pf=pf, pool=draw(st.sampled_from(["a", "b"])),
                            domain="vm1" if mine else f"vm{10 + n}",
                            uuid=UUID if mine else f"00000000-0000-0000-0000-{10 + n:012d}",
                            index=n if mine else 0, mac=None, vlan=None, since="t",
                            boot_id=draw(st.sampled_from([BOOT, EARLIER])), phase="attached"))
    last = {UUID: {str(i): draw(st.sampled_from(vf_addresses)) for i in range(draw(st.integers(0, 3)))}}
    table = LeaseTable(tuple(leases), last)
    requests = [Request(pool=draw(st.sampled_from(["a", "b", "a", "nope"])), index=i)
                for i in range(draw(st.integers(1, 3)))]
    numa = draw(st.frozensets(st.integers(0, 1), max_size=2))
    read = draw(st.frozensets(st.sampled_from(addresses)))
    return full, tuple(pools), table, requests, numa, read


@given(scenarios())
def test_a_partly_read_host_gets_the_whole_hosts_answer(scenario):
    full, pools, table, requests, numa, read = scenario

    def decide(host):
        return allocate(host, pools, table, domain="vm1", uuid=UUID, requests=requests, boot_id=BOOT,
                        now="now", phase="pending-attach", numa_nodes=numa)

    answer, _ = decide_reading(full, unread(full, read), decide)
    assert answer == outcome(decide, full)


def test_pack_on_a_thousand_vfs_reads_one_pf_and_sticky_its_own():
    """16 PFs of 64 VFs in one pool: a first start reads the first PF; a domain whose last VF was
    on the 10th PF reads that PF (found through its physfn link) and no other."""
    pfs = [_pf(n, 0, 6) for n in range(16)]
    full = Host(tuple(pfs))
    pool = Pool("all", tuple(PoolMember(pf.address) for pf in pfs))

    def decide(table):
        return lambda host: allocate(host, [pool], table, domain="vm1", uuid=UUID, requests=[Request(pool="all")],
                                     boot_id=BOOT, now="now", phase="pending-attach")

    grant, reads = decide_reading(full, unread(full), decide(LeaseTable()))
    assert (grant.leases[0].vf, reads) == ("0000:01:10.0", [pfs[0].address])
    sticky = str(pfs[9].vfs[3].address)
    grant, reads = decide_reading(full, unread(full), decide(LeaseTable((), {UUID: {"0": sticky}})))
    assert (grant.leases[0].vf, reads) == (sticky, [pfs[9].address])


def test_a_full_pool_reads_every_pf_before_it_refuses():
    pfs = [_pf(n, 0, 1) for n in range(3)]
    full = Host(tuple(pfs))
    pool = Pool("all", tuple(PoolMember(pf.address) for pf in pfs))
    taken = tuple(Lease(vf=str(pf.vfs[0].address), pf=str(pf.address), pool="all", domain=f"vm{n + 2}",
                        uuid=f"00000000-0000-0000-0000-{n + 2:012d}", index=0, mac=None, vlan=None, since="t",
                        boot_id=BOOT, phase="attached") for n, pf in enumerate(pfs))
    answer, reads = decide_reading(full, unread(full), lambda host: allocate(
        host, [pool], LeaseTable(taken), domain="vm1", uuid=UUID, requests=[Request(pool="all")], boot_id=BOOT,
        now="now", phase="pending-attach"))
    assert answer[1].startswith("no free VF in pool all for vm1 (3 of 3 leased: vm2, vm3, vm4)")
    assert sorted(reads) == [pf.address for pf in pfs]


def test_claim_of_an_address_that_is_no_vf_reads_all_before_it_refuses():
    pfs = [_pf(n, 0, 2) for n in range(2)]
    full = Host(tuple(pfs))
    claims = [Claim(Request(pool="pinned"), PciAddress(0, 0x7f, 16, 0))]
    answer, reads = decide_reading(full, unread(full), lambda host: claim(
        host, [], LeaseTable(), domain="vm1", uuid=UUID, claims=claims, boot_id=BOOT, now="now"))
    assert "0000:7f:10.0 in the XML of vm1 is not a VF on this host" in answer[1]
    assert sorted(reads) == [pf.address for pf in pfs]


@pytest.mark.parametrize("lookup", [
    pytest.param(lambda host: list(host.vfs()), id="vfs"),
    pytest.param(lambda host: host.vf_map(), id="vf_map"),
    pytest.param(lambda host: host.vfs_of(PciAddress(0, 1, 0, 0)), id="vfs_of"),
    pytest.param(lambda host: host.find_vf("0000:7f:10.0"), id="find_vf"),
])
def test_a_partial_snapshot_never_answers_from_half_the_host(lookup):
    host = unread(Host((_pf(0, 0, 2), _pf(1, 0, 2))), read=frozenset({PciAddress(0, 2, 0, 0)}))
    with pytest.raises(VfsNotRead) as caught:
        lookup(host)
    assert PciAddress(0, 1, 0, 0) in caught.value.pfs and "report this as a vfalloc bug" in str(caught.value)


def test_the_hook_path_reads_one_pf_of_sixteen_on_sysfs(tmp_path):
    """Through real sysfs (a fake tree): lease_for_start on the bench's 1,024-VF host leaves 15
    of its 16 PFs' VFs unread, and the view answers lookups on them by reading."""
    fs = FakeSys(tmp_path / "sys")
    names = build_big_host(fs, 1024)
    config = tmp_path / "vfalloc.toml"
    config.write_text("[pools.all]\npfs = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("b\n")
    env = {"VFALLOC_CONFIG": str(config), "VFALLOC_SYSFS_ROOT": str(fs.root),
           "VFALLOC_STATE": str(tmp_path / "state.json"), "VFALLOC_PROC_ROOT": str(tmp_path / "proc"),
           "VFALLOC_RUN_DIR": str(tmp_path / "run")}
    ctx = Context(load_settings({}, env))
    info = read_domain(f"<domain><name>vm1</name><uuid>{UUID}</uuid><metadata><v:vfs xmlns:v='urn:vfalloc:1'>"
                       "<v:vf pool='all'/></v:vfs></metadata></domain>".encode())
    (lease,), view = lease_for_start(ctx, info, "now")
    assert len(view.host.pfs) == 16 and len(view.host.unread) == 15
    assert lease.pf == str(view.host.pfs[0].address) and lease.vf == str(view.host.pfs[0].vfs[0].address)
    last = view.host.pfs[-1]
    vf = view.find_vf(lease.vf)
    assert vf is not None and len(view.host.unread) == 15
    assert len(view.decide(lambda host: host.vfs_of(last.address))) == 64 and len(view.host.unread) == 14
    fresh = HostView.for_domain(ctx.sysfs, ctx.settings.config, "vm1", ["all"])
    assert len(fresh.host.unread) == 16 and [p.name for p in fresh.pools] == ["all"]
