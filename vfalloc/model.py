"""The things vfalloc reasons about, as frozen values (vfalloc.record): PCI addresses, PFs and
VFs read from the host, pools, requests and leases.

This module is the bottom of the dependency graph: it does no I/O and imports nothing of
vfalloc but the error tree and the record base. Values are validated when they are built, so
code above can trust them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .errors import UsageError, VfsNotRead, shown
from .record import Record, field, replace

_PCI_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"
)
# Compiled at first use (re's cache): a hook call that sets no MAC never needs the first, a
# listing neither. Both are used with fullmatch: `$` also matches before a final newline, so
# "...:56\n" would pass a match.
_MAC_RE = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
_UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# PCIe SR-IOV: TotalVFs and NumVFs are 16-bit fields of the capability (PCIe Base Spec 9.3.3.5),
# so no PF has more VFs and no VF index reaches this.
MAX_VFS = 65535

ON_OFF = ("on", "off")
REQUEST_TYPES = ("interface", "hostdev")
POLICIES = ("pack", "spread")


class Phase:
    """Where a lease stands; the values are the state file's."""

    RESERVED = "reserved"        # taken by hand (`vfalloc alloc`) or by `vfalloc start` before the domain runs
    PENDING = "pending-attach"   # taken by the hook at prepare: the device is hot-plugged after the start
    ATTACHED = "attached"        # the device is in the running domain


PHASES = (Phase.RESERVED, Phase.PENDING, Phase.ATTACHED)


class PciAddress(Record, order=True):
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        m = _PCI_RE.match(text.strip())
        if not m:
            raise UsageError(f"{shown(repr(text))} is not a PCI address; write it as 0000:01:00.0")
        return cls(
            int(m["domain"] or "0", 16), int(m["bus"], 16), int(m["slot"], 16), int(m["function"])
        )

    @staticmethod
    def looks_like(text: str) -> bool:
        return bool(_PCI_RE.match(text.strip()))

    def __init__(self, domain: int, bus: int, slot: int, function: int) -> None:
        # The most built record (one per VF read): its fields set in one step, with the text
        # form, which the lease table's keys make it look up often.
        object.__setattr__(self, "__dict__", {"domain": domain, "bus": bus, "slot": slot, "function": function,
                                             "_text": f"{domain:04x}:{bus:02x}:{slot:02x}.{function}"})

    def __str__(self) -> str:
        return self._text  # type: ignore[attr-defined]


class VF(Record):
    address: PciAddress
    index: int
    pf: PciAddress
    vendor: str
    device: str
    driver: str | None
    netdev: str | None
    numa_node: int | None
    iommu_group: int | None

    def __init__(self, address: PciAddress, index: int, pf: PciAddress, vendor: str, device: str,
                 driver: str | None, netdev: str | None, numa_node: int | None, iommu_group: int | None) -> None:
        # Built once per VF read, a thousand times for a listing: its fields set in one step, as
        # PciAddress's (it has nothing to validate).
        object.__setattr__(self, "__dict__", {
            "address": address, "index": index, "pf": pf, "vendor": vendor, "device": device, "driver": driver,
            "netdev": netdev, "numa_node": numa_node, "iommu_group": iommu_group})


class PF(Record):
    address: PciAddress
    netdev: str | None
    vendor: str
    device: str
    driver: str | None
    totalvfs: int
    numvfs: int
    numa_node: int | None
    iommu_group: int | None
    vfs: tuple[VF, ...]
    link_up: bool | None = None

    @property
    def name(self) -> str:
        """The name people know this PF by: its netdev, else its PCI address."""
        return self.netdev or str(self.address)


class Host(Record):
    """A snapshot of the SR-IOV PFs and their VFs, read once from sysfs.

    A snapshot may hold some PFs without their VFs (`unread`, their `vfs` empty): a start on a
    host with a thousand VFs reads a PF's VFs only when the choice needs them. Every lookup
    that would need those VFs raises VfsNotRead rather than answer from half the host."""

    pfs: tuple[PF, ...]
    unread: frozenset[PciAddress] = frozenset()

    def pf(self, name_or_address: str) -> PF | None:
        for pf in self.pfs:
            if pf.netdev == name_or_address or str(pf.address) == name_or_address:
                return pf
        if PciAddress.looks_like(name_or_address):
            wanted = PciAddress.parse(name_or_address)
            for pf in self.pfs:
                if pf.address == wanted:
                    return pf
        return None

    def vfs(self) -> Iterable[VF]:
        if self.unread:
            raise VfsNotRead(self.unread)
        for pf in self.pfs:
            yield from pf.vfs

    def vf_map(self) -> dict[str, VF]:
        return {str(vf.address): vf for vf in self.vfs()}

    def pf_map(self) -> dict[str, PF]:
        return {str(pf.address): pf for pf in self.pfs}

    def vfs_of(self, pf: PciAddress) -> tuple[VF, ...]:
        """The VFs of one PF; none when the PF is not in the snapshot."""
        if pf in self.unread:
            raise VfsNotRead(frozenset((pf,)))
        return next((p.vfs for p in self.pfs if p.address == pf), ())

    def find_vf(self, address: str) -> VF | None:
        """The VF at `address`, None when no PF of the snapshot has it."""
        for pf in self.pfs:
            for vf in pf.vfs:
                if str(vf.address) == address:
                    return vf
        if self.unread:
            raise VfsNotRead(self.unread, vf=address)
        return None

    def with_vfs(self, read: Iterable[PF]) -> Host:
        """The snapshot with these PFs as read again, VFs and all."""
        new = {pf.address: pf for pf in read}
        return Host(tuple(new.get(pf.address, pf) for pf in self.pfs), self.unread - new.keys())


class PoolMember(Record):
    """One PF of a pool, optionally limited to some VF indexes."""

    pf: PciAddress
    indexes: frozenset[int] | None = None
    numvfs: int | None = None

    def admits(self, vf: VF) -> bool:
        return vf.pf == self.pf and (self.indexes is None or vf.index in self.indexes)


class Pool(Record):
    name: str
    members: tuple[PoolMember, ...]
    policy: str = "pack"
    vlan: int | None = None
    trust: str | None = None
    spoofchk: str | None = None

    def __post_init__(self) -> None:
        # PF -> (rank, member): admits() runs once per VF of the host, keep it a dict lookup.
        by_pf: dict[PciAddress, list[tuple[int, PoolMember]]] = {}
        for rank, m in enumerate(self.members):
            by_pf.setdefault(m.pf, []).append((rank, m))
        object.__setattr__(self, "_by_pf", by_pf)

    def member_rank(self, vf: VF) -> int:
        """Position of the member admitting `vf` in the pool's list; len(members) if none."""
        for rank, m in self._by_pf.get(vf.pf, ()):  # type: ignore[attr-defined]
            if m.indexes is None or vf.index in m.indexes:
                return rank
        return len(self.members)

    def admits(self, vf: VF) -> bool:
        return self.member_rank(vf) < len(self.members)

    def has_pf(self, pf: PciAddress) -> bool:
        return pf in self._by_pf  # type: ignore[attr-defined]

    def takes_whole_pf(self, pf: PciAddress) -> bool:
        """Whether every VF of `pf` is in this pool (a member names the PF without indexes)."""
        return any(m.indexes is None for _, m in self._by_pf.get(pf, ()))  # type: ignore[attr-defined]

    def pf_rank(self, pf: PciAddress) -> int:
        """The lowest rank any VF of `pf` can have in this pool: its first member's position."""
        return self._by_pf[pf][0][0]  # type: ignore[attr-defined]


class Request(Record):
    """What a domain asks for, one VF per request; `index` is its position in the request list."""

    pool: str
    index: int = 0
    mac: str | None = None
    vlan: int | None = None
    trust: str | None = None
    spoofchk: str | None = None
    type: str = "interface"
    required: bool = False

    def __post_init__(self) -> None:
        if not self.pool or not isinstance(self.pool, str):
            raise UsageError("a VF request needs a pool name; add pool=\"NAME\"")
        if self.mac is not None:
            object.__setattr__(self, "mac", normalize_mac(self.mac))
        if self.vlan is not None:
            object.__setattr__(self, "vlan", parse_vlan(self.vlan))
        for key in ("trust", "spoofchk"):
            value = getattr(self, key)
            if value is not None and value not in ON_OFF:
                raise UsageError(f"{key}={shown(repr(value))} is not valid; use on or off")
        if self.type not in REQUEST_TYPES:
            raise UsageError(f"type={shown(repr(self.type))} is not valid; use interface or hostdev")
        if self.index < 0:
            raise UsageError(f"request index {self.index} is negative")

    def with_defaults(self, pool: Pool) -> Request:
        """The request with the pool's defaults filled in where it says nothing."""
        return replace(
            self,
            vlan=self.vlan if self.vlan is not None else pool.vlan,
            trust=self.trust if self.trust is not None else pool.trust,
            spoofchk=self.spoofchk if self.spoofchk is not None else pool.spoofchk,
        )


class Lease(Record):
    vf: str
    pf: str
    pool: str
    domain: str
    uuid: str
    index: int
    mac: str | None
    vlan: int | None
    since: str
    boot_id: str
    phase: str
    type: str = "interface"
    trust: str | None = None
    spoofchk: str | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise UsageError(f"lease phase {self.phase!r} is unknown; expected one of {PHASES}")

    def request(self) -> Request:
        """The request this lease serves, with the settings it was taken with."""
        return Request(pool=self.pool, index=self.index, mac=self.mac, vlan=self.vlan, trust=self.trust,
                       spoofchk=self.spoofchk, type=self.type, required=self.required)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self._fields}

    @classmethod
    def from_json(cls, data: Mapping) -> Lease:
        known = {k: data[k] for k in cls._fields if k in data}
        return cls(**known)


class LeaseTable(Record):
    """All leases, plus the VF each domain held last (for sticky allocation)."""

    leases: tuple[Lease, ...] = ()
    last: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def of_domain(self, uuid: str) -> tuple[Lease, ...]:
        return tuple(lease for lease in self.leases if lease.uuid == uuid)

    def by_vf(self) -> dict[str, Lease]:
        return {lease.vf: lease for lease in self.leases}

    def without(self, drop: Iterable[Lease]) -> LeaseTable:
        gone = set(drop)
        return replace(self, leases=tuple(lease for lease in self.leases if lease not in gone))

    def with_leases(self, added: Iterable[Lease]) -> LeaseTable:
        added = tuple(added)
        last = {uuid: dict(m) for uuid, m in self.last.items()}
        for lease in added:
            last.setdefault(lease.uuid, {})[str(lease.index)] = lease.vf
        return LeaseTable(self.leases + added, last)

    def replaced(self, old: Lease, new: Lease) -> LeaseTable:
        return replace(self, leases=tuple(new if lease == old else lease for lease in self.leases))


def whole_number(text: str, limit: int) -> int | None:
    """`text` as a whole number from 0 to `limit`, written in ASCII digits only; None for anything
    else. Bounded before int() runs: int() takes "²" and other Unicode digits for numbers (and
    then fails), and refuses more than 4,300 digits with an error of its own."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(limit)):
        return None
    value = int(text)
    return value if value <= limit else None


def check_name(text: object, what: str = "domain name") -> str:
    """A name from outside (a command line, a domain XML, the lease table) that vfalloc stores,
    logs and prints: one or more printable characters. A newline or a control character in it
    would forge a line of the log or a row of `vfalloc list`."""
    if not isinstance(text, str) or not text or not text.isprintable():
        value = shown(text) if isinstance(text, str) else repr(text)
        raise UsageError(f"{what} {value} is not valid; use printable characters, no newline or control "
                         "character")
    return text


def refuse_hostdev_settings(kind: str, mac: object, vlan: object) -> None:
    """libvirt sets a VF's MAC and VLAN only for <interface type='hostdev'>: a plain <hostdev>
    has neither element, so a hostdev request with one could not be honoured."""
    if kind != "hostdev":
        return
    for key, value in (("mac", mac), ("vlan", vlan)):
        if value is not None:
            raise UsageError(f"--{key} needs --type interface: libvirt sets no MAC or VLAN on a plain hostdev")


def normalize_mac(text: str) -> str:
    if not isinstance(text, str) or not re.fullmatch(_MAC_RE, text):
        raise UsageError(f"mac={shown(repr(text))} is not a MAC address; write it as 52:54:00:12:34:56")
    mac = text.lower()
    first = int(mac[:2], 16)
    if first & 0x01:
        raise UsageError(f"mac={text} is a multicast address; use a unicast MAC (even first byte)")
    if mac == "00:00:00:00:00:00":
        raise UsageError("mac=00:00:00:00:00:00 is not a usable address; pick another MAC")
    return mac


def parse_vlan(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        vlan = value if 1 <= value <= 4094 else None
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        vlan = whole_number(value, 4094)
    else:
        raise UsageError(f"vlan={shown(repr(value))} is not a number; use a VLAN id from 1 to 4094")
    if not vlan:
        raise UsageError(f"vlan={shown(str(value))} is out of range; use a VLAN id from 1 to 4094")
    return vlan


def check_uuid(text: str) -> str:
    if not isinstance(text, str) or not re.fullmatch(_UUID_RE, text):
        raise UsageError(f"{shown(repr(text))} is not a domain UUID; write it as 8-4-4-4-12 hex digits")
    return text.lower()


def derive_mac(uuid: str, index: int) -> str:
    """A stable, locally administered unicast MAC for request `index` of domain `uuid`.
    Two CRC-32s over the pair give 48 well-mixed bits; binascii is built into the interpreter,
    where hashlib would load OpenSSL on every hook call. Not a security property: only
    stability and spread matter."""
    import binascii

    key = f"{uuid.lower()}/{index}".encode()
    bits = binascii.crc32(b"vfalloc-mac-a:" + key).to_bytes(4, "big") + \
        binascii.crc32(b"vfalloc-mac-b:" + key).to_bytes(4, "big")
    first = (bits[0] & 0xFC) | 0x02  # unicast, locally administered: never all-zero
    return ":".join(f"{b:02x}" for b in (first, *bits[1:6]))
