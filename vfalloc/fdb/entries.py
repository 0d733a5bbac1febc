"""Which MAC addresses each SR-IOV PF's own forwarding table (FDB) must hold, and what to change.

The problem: a NIC's embedded switch hands a VF's frame to the PF only when the destination MAC
is in the NIC's own address table (QEMU 10's igb model, hw/net/igb_core.c igb_tx_pkt_switch and
igb_receive_assign; field reports on I350, X710 and E810 alike). MACs behind a Linux bridge that
has the PF as a port are not in it, so a VF's frames to guests, containers or the host on that
bridge leave on the wire and never come back. `bridge fdb add MAC dev PF self` puts a MAC into
the table (ndo_fdb_add; ndo_dflt_fdb_add adds it to the PF's unicast list, which igb writes into
a receive address register of the PF's pool).

Owns: the topology questions (which PFs with VFs sit below a bridge, through VLAN devices and
bonds), the entries each owner needs (a libvirt guest's interface on such a bridge or a macvtap
on such a PF; the bridge's own MAC when it differs from the PF's; MACs learnt behind the
bridge's other ports), the ledger of what vfalloc added (who needs each entry), and the plan of
additions and removals that brings a PF's table to what it should hold. An entry vfalloc did not
add is never in a removal.

Must not: read files or sysfs, run commands, parse XML (fdb.upkeep, sysfs, fdb.bridge, domxml do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..model import PciAddress
from ..record import Record

DOMAIN, BRIDGE, PORT = "domain", "bridge", "port"


class Link(Record):
    """One network interface as the kernel shows it in class/net: enough to follow a bridge's
    ports down through VLAN devices and bonds to the PCI function that carries them."""

    name: str
    mac: str                   # lower-case, as the kernel prints it
    kind: str                  # "bridge", "vlan", "bond", or "" for anything else (veth, tap, NIC)
    master: str | None         # the bridge or bond this interface is enslaved to
    lowers: tuple[str, ...]    # the interfaces below it (a bridge's and a bond's ports, a VLAN's device)
    pci: PciAddress | None     # the PCI function of a NIC's interface
    numvfs: int | None         # that function's sriov_numvfs, None when it is no SR-IOV PF


class Owner(Record, order=True):
    """Who needs an entry: a domain (id = UUID), a bridge's own MAC (id = bridge), or a port that
    is not a libvirt guest, such as a container's veth (id = port)."""

    kind: str
    id: str
    name: str  # shown to people: the domain's name, the bridge, "PORT on BRIDGE"

    def to_json(self) -> dict:
        return {"kind": self.kind, "id": self.id, "name": self.name}

    @classmethod
    def from_json(cls, data: Mapping) -> Owner:
        return cls(str(data["kind"]), str(data["id"]), str(data["name"]))


class Entry(Record, order=True):
    pf: str   # the PF's interface name
    mac: str
    owner: Owner


class Nic(Record):
    """A guest's interface as far as the FDB cares (from domxml.read_nics)."""

    type: str                 # "bridge", "network" or "direct"
    mac: str
    bridge: str | None = None  # the Linux bridge it is plugged into (bridge, network)
    dev: str | None = None     # the host interface a macvtap sits on (direct)
    network: str | None = None  # the libvirt network (network)
    target: str | None = None  # the tap or macvtap libvirt made for it (live XML)


class Guest(Record):
    name: str
    uuid: str
    nics: tuple[Nic, ...]


class Topology:
    """The interfaces of the host (sysfs.read_links), asked about bridges and PFs."""

    def __init__(self, links: Mapping[str, Link]) -> None:
        self.links = links

    def pfs_below(self, name: str, seen: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The SR-IOV PFs that have VFs and carry `name`'s frames: itself, or what lies below a
        VLAN device or a bond, at any depth."""
        link = self.links.get(name)
        if link is None or name in seen:
            return ()
        if link.numvfs:
            return (name,)
        if link.kind not in ("vlan", "bond"):
            return ()
        found: list[str] = []
        for lower in link.lowers:
            found += [p for p in self.pfs_below(lower, seen | {name}) if p not in found]
        return tuple(found)

    def ports(self, bridge: str) -> tuple[str, ...]:
        link = self.links.get(bridge)
        return link.lowers if link is not None and link.kind == "bridge" else ()

    def bridge_pfs(self, bridge: str) -> tuple[str, ...]:
        """The PFs with VFs that are ports of `bridge`, directly or through a VLAN device or bond."""
        found: list[str] = []
        for port in self.ports(bridge):
            found += [p for p in self.pfs_below(port) if p not in found]
        return tuple(found)

    def bridges(self) -> tuple[str, ...]:
        """Every bridge with such a PF below one of its ports."""
        return tuple(n for n, link in sorted(self.links.items()) if link.kind == "bridge" and self.bridge_pfs(n))

    def endpoint_ports(self, bridge: str) -> tuple[str, ...]:
        """The bridge's ports that lead to no PF with VFs: where guests, containers and other
        hosts' frames come from."""
        return tuple(p for p in self.ports(bridge) if not self.pfs_below(p))


Allowed = Callable[[Link], bool]


def guest_entries(topo: Topology, guest: Guest, allowed: Allowed) -> list[Entry]:
    """The entries a running guest needs: its MAC on each PF below the bridge each interface is
    plugged into; for a macvtap, on the PF it sits on."""
    owner = Owner(DOMAIN, guest.uuid, guest.name)
    found: list[Entry] = []
    for nic in guest.nics:
        if nic.type in ("bridge", "network") and nic.bridge:
            pfs = topo.bridge_pfs(nic.bridge)
        elif nic.type == "direct" and nic.dev:
            pfs = topo.pfs_below(nic.dev)
        else:
            pfs = ()
        found += [Entry(pf, nic.mac, owner) for pf in pfs if allowed(topo.links[pf])]
    return _unique(found)


def host_entries(topo: Topology, learned: Mapping[str, Iterable[tuple[str, str]]],
                 guest_ports: frozenset[str], allowed: Allowed) -> list[Entry]:
    """The entries of what is not a libvirt guest: each bridge's own MAC (when it differs from
    the PF's), and the unicast MACs the bridge learnt on its ports that are not a running
    guest's tap (`learned`: bridge -> (port, MAC))."""
    found: list[Entry] = []
    for bridge in topo.bridges():
        pfs = [p for p in topo.bridge_pfs(bridge) if allowed(topo.links[p])]
        own = topo.links[bridge].mac
        found += [Entry(pf, own, Owner(BRIDGE, bridge, bridge)) for pf in pfs
                  if unicast(own) and own != topo.links[pf].mac]
        endpoints = set(topo.endpoint_ports(bridge)) - guest_ports
        for port, mac in learned.get(bridge, ()):
            if port in endpoints and unicast(mac) and mac not in (own, *(topo.links[p].mac for p in pfs)):
                found += [Entry(pf, mac, Owner(PORT, port, f"{port} on {bridge}")) for pf in pfs]
    return _unique(found)


def unicast(mac: str) -> bool:
    try:
        return len(mac) == 17 and not int(mac[:2], 16) & 1 and mac != "00:00:00:00:00:00"
    except ValueError:
        return False


def _unique(entries: list[Entry]) -> list[Entry]:
    return sorted(set(entries))


# -- the ledger: what vfalloc added, (PF, MAC) -> the owners that need it --

Ledger = Mapping[tuple[str, str], frozenset[Owner]]


class Plan(Record):
    add: tuple[tuple[str, str], ...]         # (pf, mac) to add to the PF's table
    remove: tuple[tuple[str, str], ...]      # (pf, mac) vfalloc added and nobody needs any more
    foreign: tuple[tuple[str, str], ...]     # wanted but there already, put there by someone else
    after: tuple[tuple[tuple[str, str], frozenset[Owner]], ...]  # the ledger after the plan

    def ledger(self) -> dict[tuple[str, str], frozenset[Owner]]:
        return dict(self.after)


def plan(wanted: Iterable[Entry], ledger: Ledger, present: Mapping[str, frozenset[str]],
         keep: Callable[[tuple[str, str], Owner], bool] = lambda key, owner: False) -> Plan:
    """Bring every PF in `present` (PF -> the MACs its own table holds now) to `wanted`.

    An entry in the ledger (vfalloc added it) stays while some owner needs it: an owner among
    `wanted`, or one `keep(key, owner)` says is still there (a port whose MAC the bridge forgot when it went
    quiet is still a port). An entry that is wanted and in the table but not in the ledger was
    put there by someone else: it is left alone and never entered, so never removed. Entries
    of PFs not in `present` are left as they are."""
    want: dict[tuple[str, str], set[Owner]] = {}
    for e in wanted:
        if e.pf in present:
            want.setdefault((e.pf, e.mac), set()).add(e.owner)
    for key, owners in ledger.items():
        if key[0] in present:
            kept = {o for o in owners if keep(key, o)}
            if kept:
                want.setdefault(key, set()).update(kept)
    add, remove, foreign = [], [], []
    after: dict[tuple[str, str], frozenset[Owner]] = {k: v for k, v in ledger.items() if k[0] not in present}
    for key, wanting in sorted(want.items()):
        there = key[1] in present[key[0]]
        if key in ledger or not there:
            if not there:
                add.append(key)
            after[key] = frozenset(wanting)
        else:
            foreign.append(key)
    for key in sorted(ledger):
        if key[0] in present and key not in want:
            if key[1] in present[key[0]]:
                remove.append(key)
    return Plan(tuple(add), tuple(remove), tuple(foreign), tuple(sorted(after.items())))


def entries_of(ledger: Ledger) -> list[Entry]:
    return sorted(Entry(pf, mac, o) for (pf, mac), owners in ledger.items() for o in owners)
