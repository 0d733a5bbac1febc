"""`vfalloc list` and `vfalloc pools`, for people and as JSON, byte for byte: their text on a
host with every kind of row is kept in tests/data/listing/, so a change to how the listings are
read, computed or written cannot change a byte that people or scripts see.

The host: an I350 (four ports of 7 igbvf VFs, their netdevs) and a ConnectX-5 pair (one card
per NUMA node), one ConnectX port's VFs bound to vfio-pci (no netdevs), pools over whole PFs
and VF ranges, VFs in no pool, a PF with numvfs 0; leases reserved by hand, attached to a
running domain (libvirt's test driver runs one, "test"), attached to a domain that does not
run, taken in an earlier boot, on a VF that is gone; domain names with non-ASCII letters and
one longer than a row shows (cut at 200 characters). Regenerate the files (after a change
that is meant to change the output) with REGENERATE_LISTINGS=1.
"""

import json
import os
from pathlib import Path

import pytest
from fakehost import connectx, i350

DATA = Path(__file__).parent / "data" / "listing"
BOOT = "11111111-2222-3333-4444-555555555555"
EARLIER_BOOT = "99999999-2222-3333-4444-555555555555"
TEST_DOMAIN = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # the UUID of libvirt's test driver's "test" domain
CONFIG = """\
[pools.lan0]
pfs = ["enp1s0f0#0-3", "enp1s0f1"]
policy = "spread"

[pools.san]
pfs = ["enp1s0f0#5-6", "ens5f0np0"]

[pools.cx1]
pfs = ["ens6f0np0"]

[pools.spare]
pfs = ["enp3s0f0"]
"""
LONG_NAME = "db-" + "x" * 250


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


@pytest.fixture
def listed_host(scratch):
    """The host above, with its lease table written as the commands and the hook leave it."""
    s = scratch
    i350(s.fs)
    connectx(s.fs)
    s.fs.set_vfs("0000:af:00.0", 8, vf_device="1018", vf_driver="vfio-pci")
    s.fs.add_pf("0000:03:00.0", netdev="enp3s0f0", vendor="8086", device="1521", vf_device="1520",
                driver="igb", vf_driver="igbvf", totalvfs=7, numvfs=0)
    s.write_config(CONFIG)
    allocs = [("web1", 1, "lan0", ["--vlan", "30"]), ("wëb-ünïcode", 2, "lan0", ["--mac", "52:54:00:aa:bb:cc"]),
              (LONG_NAME, 3, "san", []), ("test", 4, "cx1", ["--type", "hostdev"]), ("gone", 5, "cx1", []),
              ("old", 6, "san", []), ("vanished", 7, "lan0", ["--index", "2"]), ("idle", 8, "lan0", [])]
    s.set_boot_id(EARLIER_BOOT)
    for name, n, pool, extra in allocs[5:6]:
        assert s.run("alloc", "--domain", name, "--uuid", uuid(n), "--pool", pool, *extra).code == 0
    s.set_boot_id(BOOT)
    for name, n, pool, extra in allocs[:5] + allocs[6:]:
        r = s.run("alloc", "--domain", name, "--uuid", uuid(n), "--pool", pool, *extra)
        assert r.code == 0, r.err
    table = json.loads(s.state.read_text())
    for number, lease in enumerate(table["leases"]):
        lease["since"] = f"2026-11-30T10:{number:02d}:00+00:00"
        if lease["domain"] in ("test", "gone", "vanished"):
            lease["phase"] = "attached"
        if lease["domain"] == "test":
            lease["uuid"] = TEST_DOMAIN
    s.state.write_text(json.dumps(table, indent=1))
    vanished = next(x["vf"] for x in table["leases"] if x["domain"] == "vanished")
    pf = next(x["pf"] for x in table["leases"] if x["domain"] == "vanished")
    link = next(p for p in (s.sysfs / "bus/pci/devices" / pf).glob("virtfn*") if os.readlink(p).endswith(vanished))
    link.unlink()  # the kernel removed that VF behind vfalloc's back
    return s


LISTINGS = {"list.txt": ["list"], "list.json": ["list", "--json"], "pools.txt": ["pools"],
            "pools.json": ["pools", "--json"]}


@pytest.mark.parametrize("name", list(LISTINGS), ids=list(LISTINGS))
def test_listing_is_byte_for_byte_the_kept_text(listed_host, name):
    r = listed_host.run(*LISTINGS[name], "--connect", "test:///default")
    assert (r.code, r.err) == (0, "")
    kept = DATA / name
    if os.environ.get("REGENERATE_LISTINGS"):
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(r.out)
    assert r.out == kept.read_text()


def test_the_kept_listings_show_every_kind_of_row():
    """The kept text is worth comparing with: it holds each state, each reason and each cut."""
    rows = json.loads((DATA / "list.json").read_text())
    states = {(r["state"], r["reason"]) for r in rows}
    assert states == {("free", None), ("unusable", None), ("leased", None), ("stale", "taken in an earlier boot"),
                      ("stale", "its domain is not running"), ("stale", "its VF no longer exists")}
    assert {r["phase"] for r in rows} == {None, "reserved", "attached"}
    assert any(r["driver"] == "vfio-pci" and r["pf_netdev"] == "ens6f0np0" for r in rows)
    assert any(r["vf_index"] is None for r in rows)
    text = (DATA / "list.txt").read_text()
    assert "wëb-ünïcode" in text and f"{LONG_NAME[:100]}... (253 characters)" in text
    assert "reserved: " in text and "stale: " in text
    pools = json.loads((DATA / "pools.json").read_text())
    assert [p["pool"] for p in pools] == ["lan0", "san", "cx1", "spare"] and pools[3]["total"] == 0


def test_pools_reads_of_each_vf_only_what_it_counts(listed_host):
    """`vfalloc pools` reads each VF's address and index, nothing else: a VF whose IOMMU group
    link is damaged stops `vfalloc list`, which shows the group, with one line naming the file,
    and leaves the counts as they were."""
    s = listed_host
    group = s.sysfs / "bus/pci/devices/0000:5e:00.2/iommu_group"
    group.unlink()
    group.symlink_to("../../../kernel/iommu_groups/not-a-number")
    r = s.run("list", "--connect", "test:///default")
    assert r.code != 0 and r.err.count("\n") == 1 and "0000:5e:00.2/iommu_group" in r.err, r.err
    r = s.run("pools", "--connect", "test:///default")
    assert (r.code, r.err, r.out) == (0, "", (DATA / "pools.txt").read_text())
