"""The FDB core (vfalloc.fdb.entries) on interfaces read from fake sysfs trees of bridges, VLAN devices
and bonds as Linux 6.x lays them out (sysfs.read_links): which PFs sit below a bridge, which
entries each owner needs, and the plan that never removes what vfalloc did not add."""

from __future__ import annotations

import pytest
from fakehost import i350

from vfalloc import domxml
from vfalloc.fdb.entries import (
    BRIDGE,
    DOMAIN,
    PORT,
    Entry,
    Guest,
    Nic,
    Owner,
    Topology,
    guest_entries,
    host_entries,
    plan,
)
from vfalloc.sysfs import Sysfs

PF_MACS = {"enp1s0f0": "a0:36:9f:00:00:00", "enp1s0f1": "a0:36:9f:00:00:01",
           "enp1s0f2": "a0:36:9f:00:00:02", "enp1s0f3": "a0:36:9f:00:00:03"}
BR0_MAC = "02:00:00:00:b0:00"


@pytest.fixture
def links(scratch):
    """An I350 (four PFs with VFs) and one port without VFs, under every shape of bridge:
    br0 on enp1s0f0 directly (with a guest's tap and a container's veth), br10 on a VLAN device
    over enp1s0f1, brb on a bond of enp1s0f2 and enp1s0f3, virbr0 (libvirt's NAT network) on no
    NIC, brnovf on a NIC port without VFs."""
    fs = scratch.fs
    i350(fs)
    fs.add_pf("0000:02:00.0", netdev="eno1", vendor="8086", device="1521", vf_device="1520", driver="igb",
              vf_driver="igbvf", totalvfs=7, numvfs=0)
    for name, mac in PF_MACS.items():
        fs.set_mac(name, mac)
    fs.set_mac("eno1", "a0:36:9f:00:01:00")
    for name, mac in (("vnet0", "fe:54:00:00:00:01"), ("veth0", "aa:00:00:00:00:05"), ("vnet9", "fe:54:00:00:00:09")):
        fs.virtual_netdev(name, mac)
    fs.linux_bridge("br0", BR0_MAC, ["enp1s0f0", "vnet0", "veth0"])
    fs.vlan("enp1s0f1.10", "enp1s0f1")
    fs.linux_bridge("br10", PF_MACS["enp1s0f1"], ["enp1s0f1.10"])
    fs.bond("bond0", PF_MACS["enp1s0f2"], ["enp1s0f2", "enp1s0f3"])
    fs.set_mac("enp1s0f3", PF_MACS["enp1s0f2"])  # bond_enslave gives every slave the bond's MAC
    fs.linux_bridge("brb", PF_MACS["enp1s0f2"], ["bond0"])
    fs.linux_bridge("virbr0", "52:54:00:aa:aa:aa", ["vnet9"])
    fs.linux_bridge("brnovf", "a0:36:9f:00:01:00", ["eno1"])
    return Sysfs(scratch.sysfs).read_links()


def test_links_read_as_the_kernel_shows_them(links):
    br0, port, vlan, bond = links["br0"], links["enp1s0f0"], links["enp1s0f1.10"], links["bond0"]
    assert (br0.kind, br0.mac, br0.lowers, br0.pci, br0.numvfs) == ("bridge", BR0_MAC, ("enp1s0f0", "veth0", "vnet0"),
                                                                    None, None)
    assert (port.kind, port.master, str(port.pci), port.numvfs, port.mac) == ("", "br0", "0000:01:00.0", 7,
                                                                              PF_MACS["enp1s0f0"])
    assert (vlan.kind, vlan.lowers, vlan.master) == ("vlan", ("enp1s0f1",), "br10")
    assert (bond.kind, bond.lowers, bond.master) == ("bond", ("enp1s0f2", "enp1s0f3"), "brb")
    assert links["enp1s0f2"].master == "bond0"
    assert links["eno1"].numvfs == 0 and links["veth0"].kind == "" and links["veth0"].pci is None


def test_read_link_of_no_interface(scratch, links):
    sysfs = Sysfs(scratch.sysfs)
    assert [sysfs.read_link(n) for n in ("nosuch", "", "..", "a/b")] == [None] * 4


@pytest.mark.parametrize("bridge, pfs", [
    ("br0", ("enp1s0f0",)),
    ("br10", ("enp1s0f1",)),
    ("brb", ("enp1s0f2", "enp1s0f3")),
    ("virbr0", ()),
    ("brnovf", ()),          # a NIC port without VFs: no VF to reach anything
    ("nosuch", ()),
    ("enp1s0f0", ()),        # not a bridge
], ids=["direct", "vlan", "bond", "no-nic", "no-vfs", "missing", "not-a-bridge"])
def test_bridge_pfs(links, bridge, pfs):
    assert Topology(links).bridge_pfs(bridge) == pfs


def test_bridges_and_endpoint_ports(links):
    topo = Topology(links)
    assert topo.bridges() == ("br0", "br10", "brb")
    assert topo.endpoint_ports("br0") == ("veth0", "vnet0")


def test_a_loop_of_lower_links_ends(scratch, links):
    scratch.fs._adjacent("enp1s0f1", "enp1s0f1.10")  # a cycle no kernel makes: still no endless walk
    assert Topology(Sysfs(scratch.sysfs).read_links()).pfs_below("enp1s0f1.10") == ("enp1s0f1",)


GUEST = Guest("web", "00000000-0000-0000-0000-000000000001", (
    Nic("bridge", "52:54:00:00:00:01", bridge="br0", target="vnet0"),
    Nic("network", "52:54:00:00:00:02", bridge="virbr0", network="default", target="vnet9"),
    Nic("network", "52:54:00:00:00:03", bridge="brb", network="lan"),
    Nic("direct", "52:54:00:00:00:04", dev="enp1s0f1.10"),
    Nic("direct", "52:54:00:00:00:05", dev="eno1"),
))


def test_guest_entries(links):
    owner = Owner(DOMAIN, GUEST.uuid, "web")
    assert guest_entries(Topology(links), GUEST, lambda link: True) == sorted([
        Entry("enp1s0f0", "52:54:00:00:00:01", owner),
        Entry("enp1s0f2", "52:54:00:00:00:03", owner),
        Entry("enp1s0f3", "52:54:00:00:00:03", owner),
        Entry("enp1s0f1", "52:54:00:00:00:04", owner),
    ])


def test_guest_entries_leave_out_switched_off_pfs(links):
    entries = guest_entries(Topology(links), GUEST, lambda link: link.name not in ("enp1s0f2", "enp1s0f3"))
    assert {e.pf for e in entries} == {"enp1s0f0", "enp1s0f1"}


def test_host_entries(links):
    learned = {"br0": [("veth0", "aa:00:00:00:00:99"), ("vnet0", "52:54:00:00:00:01"),
                       ("enp1s0f0", "00:11:22:33:44:55"), ("veth0", "33:33:00:00:00:01")],
               "brb": [("bond0", "00:11:22:33:44:66")]}
    entries = host_entries(Topology(links), learned, frozenset({"vnet0"}), lambda link: True)
    assert entries == sorted([
        # br0's own MAC differs from enp1s0f0's; br10 and brb took their PF's MAC: no entry
        Entry("enp1s0f0", BR0_MAC, Owner(BRIDGE, "br0", "br0")),
        # learnt behind a container's veth; not behind a guest's tap (the domain owns that MAC),
        # not behind the PF (the wire), not a multicast address
        Entry("enp1s0f0", "aa:00:00:00:00:99", Owner(PORT, "veth0", "veth0 on br0")),
    ])


ADMINS = ("enp1s0f0", "52:54:00:00:00:77")
WEB = Owner(DOMAIN, "u1", "web")
DB = Owner(DOMAIN, "u2", "db")
VETH = Owner(PORT, "veth0", "veth0 on br0")


@pytest.mark.parametrize("wanted, ledger, present, keep, add, remove, foreign, after", [
    ([Entry("enp1s0f0", "m1", WEB)], {}, {"enp1s0f0": frozenset()}, None,
     [("enp1s0f0", "m1")], [], [], {("enp1s0f0", "m1"): {WEB}}),
    ([], {("enp1s0f0", "m1"): frozenset({WEB})}, {"enp1s0f0": frozenset({"m1"})}, None,
     [], [("enp1s0f0", "m1")], [], {}),
    # an entry someone else put there: wanted or not, never recorded, never removed
    ([Entry(*ADMINS, WEB)], {}, {"enp1s0f0": frozenset({ADMINS[1]})}, None, [], [], [ADMINS], {}),
    ([], {}, {"enp1s0f0": frozenset({ADMINS[1]})}, None, [], [], [], {}),
    # two owners: the entry stays while one of them needs it
    ([Entry("enp1s0f0", "m1", DB)], {("enp1s0f0", "m1"): frozenset({WEB, DB})}, {"enp1s0f0": frozenset({"m1"})}, None,
     [], [], [], {("enp1s0f0", "m1"): {DB}}),
    # lost from the table (a PF reset): added again
    ([Entry("enp1s0f0", "m1", WEB)], {("enp1s0f0", "m1"): frozenset({WEB})}, {"enp1s0f0": frozenset()}, None,
     [("enp1s0f0", "m1")], [], [], {("enp1s0f0", "m1"): {WEB}}),
    # a port whose MAC the bridge forgot is still a port: its entry stays
    ([], {("enp1s0f0", "m2"): frozenset({VETH})}, {"enp1s0f0": frozenset({"m2"})}, lambda key, o: o.kind == PORT,
     [], [], [], {("enp1s0f0", "m2"): {VETH}}),
    # recorded, gone from the table and from the wants: only forgotten
    ([], {("enp1s0f0", "m1"): frozenset({WEB})}, {"enp1s0f0": frozenset()}, None, [], [], [], {}),
    # a PF out of scope keeps its record as it is
    ([], {("enp1s0f1", "m1"): frozenset({WEB})}, {"enp1s0f0": frozenset()}, None,
     [], [], [], {("enp1s0f1", "m1"): {WEB}}),
], ids=["add", "remove", "foreign-wanted", "foreign-unwanted", "shared", "lost", "quiet-port", "gone", "out-of-scope"])
def test_plan(wanted, ledger, present, keep, add, remove, foreign, after):
    p = plan(wanted, ledger, present, **({"keep": keep} if keep else {}))
    assert (list(p.add), list(p.remove), list(p.foreign)) == (add, remove, foreign)
    assert {k: set(v) for k, v in p.ledger().items()} == after


# Interfaces as libvirt 11.3 formats a running domain's live XML (virDomainNetDefFormat):
# type='network' carries the bridge the network gave it, the tap is <target dev>.
LIVE_XML = """<domain type='kvm' id='3'>
  <name>web</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:7B:4A:01'/>
      <source bridge='br0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:7b:4a:02'/>
      <source network='default' portid='8f1ac7cb-9d67-4f4a-a13a-7d4b1d1c4d4e' bridge='virbr0'/>
      <target dev='vnet1'/>
      <model type='virtio'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:7b:4a:03'/>
      <source dev='enp1s0f1' mode='bridge'/>
      <target dev='macvtap0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:7b:4a:04'/>
    </interface>
  </devices>
</domain>
"""


def test_read_guest_from_live_xml():
    guest = domxml.read_guest(LIVE_XML)
    assert (guest.name, guest.uuid) == ("web", "4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    assert guest.nics == (
        Nic("bridge", "52:54:00:7b:4a:01", bridge="br0", target="vnet0"),
        Nic("network", "52:54:00:7b:4a:02", bridge="virbr0", network="default", target="vnet1"),
        Nic("direct", "52:54:00:7b:4a:03", dev="enp1s0f1", target="macvtap0"),
    )


@pytest.mark.parametrize("xml, bridge", [
    ("<network><name>default</name><bridge name='virbr0' stp='on' delay='0'/></network>", "virbr0"),
    ("<networkstatus><class_id bitmap='0-2'/><network><name>lan</name><forward mode='bridge'/>"
     "<bridge name='br0'/></network></networkstatus>", "br0"),
    ("<network><name>pt</name><forward mode='hostdev'><pf dev='enp1s0f0'/></forward></network>", None),
], ids=["nat", "status-bridge", "hostdev"])
def test_network_bridge(xml, bridge):
    assert domxml.network_bridge(xml) == bridge
