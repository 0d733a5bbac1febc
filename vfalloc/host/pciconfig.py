"""Parse a PCI function's configuration space (the bytes of its sysfs `config` file) far enough to
answer the ACS question: is it a PCI Express device, which port type, is it multi-function, and
does it carry an Access Control Services extended capability with the bits Linux requires.

Pure: bytes in, a frozen value out; no I/O. Malformed or truncated bytes never raise and never
loop: a capability walk stops at a zero, out-of-range or already-seen pointer.

Register layout (PCI Local Bus 3.0 ch. 6, PCI Express Base 4.0 7.5/7.7.8, include/uapi/linux/
pci_regs.h):
  0x00 vendor, 0x02 device, 0x06 status (bit 4: capability list), 0x0e header type (bit 7:
  multi-function), 0x34 first capability pointer; a capability is [id u8, next u8, ...].
  PCI Express capability id 0x10; at +2 its capabilities register, bits 7:4 the port type.
  Extended capabilities from 0x100: a u32 header, id bits 15:0, version 19:16, next 31:20.
  ACS extended capability id 0x000D: u16 capability register at +4, u16 control register at +6.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PCI_CAP_ID_EXP = 0x10
PCI_EXT_CAP_ID_ACS = 0x000D
EXT_CAP_START = 0x100
CONFIG_SIZE = 4096

# ACS capability/control bits (pci_regs.h PCI_ACS_*).
ACS_SV, ACS_TB, ACS_RR, ACS_CR, ACS_UF, ACS_EC, ACS_DT = (1 << n for n in range(7))
ACS_NAMES = {ACS_SV: "SrcValid", ACS_TB: "TransBlk", ACS_RR: "ReqRedir", ACS_CR: "CmpltRedir",
             ACS_UF: "UpstreamFwd", ACS_EC: "EgressCtrl", ACS_DT: "DirectTrans"}
# drivers/iommu/iommu.c REQ_ACS_FLAGS (Linux 3.x .. 6.x): what the kernel needs before it puts a
# device behind a port into a group of its own.
REQ_ACS_FLAGS = ACS_SV | ACS_RR | ACS_CR | ACS_UF

# PCI Express device/port type (PCI_EXP_TYPE_*).
PORT_TYPES = {0x0: "endpoint", 0x1: "legacy endpoint", 0x4: "root port", 0x5: "upstream port",
              0x6: "downstream port", 0x7: "PCIe-to-PCI bridge", 0x8: "PCI-to-PCIe bridge",
              0x9: "root complex integrated endpoint", 0xA: "root complex event collector"}
ROOT_PORT, UPSTREAM, DOWNSTREAM = 0x4, 0x5, 0x6


@dataclass(frozen=True)
class Acs:
    offset: int
    capability: int
    control: int

    @property
    def missing(self) -> int:
        """Required flags that the port implements but has not enabled. Linux 6.x
        pci_acs_flags_enabled(): flags absent from the capability register count as hard-wired
        on (except egress control), so only implemented-but-off flags are missing."""
        required = REQ_ACS_FLAGS & (self.capability | ACS_EC)
        return required & ~self.control

    @property
    def enabled(self) -> bool:
        return self.missing == 0


@dataclass(frozen=True)
class ConfigInfo:
    size: int
    vendor: int
    device: int
    header_type: int
    multifunction: bool
    port_type: int | None      # None: no PCI Express capability (conventional PCI)
    ext_caps: tuple[int, ...]  # ids of the extended capabilities, in list order
    acs: Acs | None

    @property
    def is_pcie(self) -> bool:
        return self.port_type is not None

    @property
    def extended_readable(self) -> bool:
        """Unprivileged readers of sysfs `config` get 64 bytes only (drivers/pci/pci-sysfs.c)."""
        return self.size > EXT_CAP_START

    @property
    def port_name(self) -> str:
        if self.port_type is None:
            return "conventional PCI"
        return PORT_TYPES.get(self.port_type, f"PCIe type {self.port_type:#x}")


def _u8(data: bytes, off: int) -> int:
    return data[off] if off < len(data) else 0

def _u16(data: bytes, off: int) -> int:
    return struct.unpack_from("<H", data, off)[0] if off + 2 <= len(data) else 0

def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0] if off + 4 <= len(data) else 0


def capabilities(data: bytes) -> list[tuple[int, int]]:
    """(id, offset) of each standard capability, following the list from 0x34."""
    if not _u16(data, 0x06) & 0x10:
        return []
    found, seen = [], set()
    pos = _u8(data, 0x34) & 0xFC
    while 0x40 <= pos < min(len(data), 0x100) and pos not in seen:
        seen.add(pos)
        found.append((_u8(data, pos), pos))
        pos = _u8(data, pos + 1) & 0xFC
    return found


def extended_capabilities(data: bytes) -> list[tuple[int, int]]:
    """(id, offset) of each extended capability, following the list from 0x100."""
    found, seen = [], set()
    pos = EXT_CAP_START
    while EXT_CAP_START <= pos <= len(data) - 4 and pos not in seen:
        seen.add(pos)
        header = _u32(data, pos)
        if header in (0, 0xFFFFFFFF):
            break
        found.append((header & 0xFFFF, pos))
        # Like drivers/pci/pci.c pci_find_next_ext_capability() (Linux 6.x): any pointer at or
        # past 0x100 is followed; a pointer below 0x100 ends the list; a repeat is a loop.
        pos = (header >> 20) & 0xFFC
    return found


def parse(data: bytes) -> ConfigInfo:
    header = _u8(data, 0x0E)
    port_type = None
    for cap_id, off in capabilities(data):
        if cap_id == PCI_CAP_ID_EXP:
            port_type = (_u16(data, off + 2) >> 4) & 0xF
            break
    ext = extended_capabilities(data) if port_type is not None else []
    acs = next((Acs(off, _u16(data, off + 4), _u16(data, off + 6))
                for cap_id, off in ext if cap_id == PCI_EXT_CAP_ID_ACS), None)
    return ConfigInfo(len(data), _u16(data, 0), _u16(data, 2), header & 0x7F, bool(header & 0x80),
                      port_type, tuple(cap_id for cap_id, _ in ext), acs)


def flag_names(bits: int) -> str:
    return " ".join(name for bit, name in ACS_NAMES.items() if bits & bit) or "none"
