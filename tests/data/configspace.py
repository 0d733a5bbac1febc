"""Builds and reads the PCI config-space fixtures in this directory.

The *.lspci files hold 4096-byte config spaces in the `lspci -xxxx` text format (the way config
space is captured from a real host: `sudo lspci -s 00:01.0 -xxxx > file`), so they can be read and
reviewed as text. They are constructed here, register by register, after the capability lists
`lspci -vvv` prints for these parts (offsets and capability ids as on the real devices); run
`python tests/data/configspace.py` to regenerate them. tests/host/test_host_acs.py checks that the files
and this builder agree.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).parent

# capability ids (include/uapi/linux/pci_regs.h)
PM, MSI, SSVID, MSIX, EXP = 0x01, 0x05, 0x0D, 0x11, 0x10
AER, VC, DSN, RCLINK, VNDR, ACS, ARI, SRIOV, TPH, LTR, SECPCI = (
    0x01, 0x02, 0x03, 0x05, 0x0B, 0x0D, 0x0E, 0x10, 0x17, 0x18, 0x19)
SV, TB, RR, CR, UF, EC, DT = (1 << n for n in range(7))
ENDPOINT, ROOT_PORT, UPSTREAM, DOWNSTREAM, PCIE_TO_PCI = 0x0, 0x4, 0x5, 0x6, 0x7


class Cfg:
    """A 4096-byte config space; capabilities are chained in the order they are added."""

    def __init__(self, vendor: int, device: int, class_code: int, rev: int = 0, header: int = 0) -> None:
        self.b = bytearray(4096)
        struct.pack_into("<HHHH", self.b, 0, vendor, device, 0x0007, 0x0010)  # cmd, status: cap list
        self.b[8] = rev
        self.b[9:12] = class_code.to_bytes(3, "little")
        self.b[0x0E] = header
        self._last_cap = None
        self._last_ext = None

    def cap(self, off: int, cap_id: int, body: bytes = b"") -> Cfg:
        self.b[off], self.b[off + 1] = cap_id, 0
        self.b[off + 2:off + 2 + len(body)] = body
        if self._last_cap is None:
            self.b[0x34] = off
        else:
            self.b[self._last_cap + 1] = off
        self._last_cap = off
        return self

    def pcie(self, off: int, port_type: int, slot: bool = False) -> Cfg:
        flags = 0x2 | (port_type << 4) | (0x100 if slot else 0)  # version 2
        return self.cap(off, EXP, struct.pack("<H", flags))

    def ext(self, off: int, cap_id: int, body: bytes = b"", version: int = 1) -> Cfg:
        struct.pack_into("<I", self.b, off, cap_id | (version << 16))
        self.b[off + 4:off + 4 + len(body)] = body
        if self._last_ext is not None:
            header = struct.unpack_from("<I", self.b, self._last_ext)[0]
            struct.pack_into("<I", self.b, self._last_ext, header | (off << 20))
        self._last_ext = off
        return self

    def acs(self, off: int, cap: int, ctrl: int) -> Cfg:
        return self.ext(off, ACS, struct.pack("<HH", cap, ctrl))

    def bytes(self) -> bytes:
        return bytes(self.b)


def skylake_peg_root_port() -> bytes:
    """8086:1901, 6th-10th Gen Core PCIe Controller (x16): a root port without ACS (the usual
    reason an I350 in the x16 slot shares one group with everything behind it)."""
    return (Cfg(0x8086, 0x1901, 0x060400, rev=0x07, header=0x01)
            .cap(0x80, PM).cap(0x88, SSVID).cap(0x90, MSI).pcie(0xA0, ROOT_PORT, slot=True)
            .ext(0x100, VC).ext(0x140, RCLINK).ext(0xD94, SECPCI).bytes())


def haswell_e_root_port(acs_ctrl: int = SV | RR | CR | UF) -> bytes:
    """8086:2f08, Xeon E5 v3 PCI Express Root Port 3: ACS with SV TB RR CR UF implemented; Linux
    enables SV RR CR UF at boot (pci_std_enable_acs)."""
    return (Cfg(0x8086, 0x2F08, 0x060400, rev=0x02, header=0x01)
            .cap(0x40, SSVID).cap(0x60, MSI).pcie(0x90, ROOT_PORT, slot=True).cap(0xE0, PM)
            .ext(0x100, VNDR).acs(0x110, SV | TB | RR | CR | UF, acs_ctrl).ext(0x148, AER)
            .ext(0x1D0, VNDR).ext(0x250, SECPCI).ext(0x280, VNDR).ext(0x300, VNDR).bytes())


def i350_function(fn: int) -> bytes:
    """8086:1521, I350 Gigabit port (one of four functions, multi-function header): ACS structure
    at 0x1d0 with no ACS feature implemented (capability register 0)."""
    sriov = bytearray(0x3C)                          # body starts at +4 of the capability
    struct.pack_into("<HH", sriov, 0x08, 8, 8)       # InitialVFs, TotalVFs (+0x0c, +0x0e)
    struct.pack_into("<HH", sriov, 0x10, 0x80, 4)    # First VF Offset, VF Stride (+0x14, +0x16)
    struct.pack_into("<H", sriov, 0x16, 0x1520)      # VF Device ID (+0x1a)
    return (Cfg(0x8086, 0x1521, 0x020000, rev=0x01, header=0x80)
            .cap(0x40, PM).cap(0x50, MSI).cap(0x70, MSIX).pcie(0xA0, ENDPOINT)
            .ext(0x100, AER, version=2).ext(0x140, DSN).ext(0x150, ARI).ext(0x160, SRIOV, bytes(sriov))
            .ext(0x1A0, TPH).ext(0x1C0, LTR).acs(0x1D0, 0, 0).bytes())


def plx_upstream() -> bytes:
    """10b5:8747, PEX 8747 switch upstream port: no ACS (none needed on an upstream port)."""
    return (Cfg(0x10B5, 0x8747, 0x060400, rev=0xCA, header=0x01)
            .cap(0x40, PM).cap(0x48, MSI).pcie(0x68, UPSTREAM).ext(0x100, DSN).ext(0xFB4, AER).bytes())


def plx_downstream(with_acs: bool) -> bytes:
    """10b5:8747, PEX 8747 downstream port, ACS SV RR CR UF EC implemented and enabled; or the
    same port with its ACS structure hidden (a switch whose EEPROM disables ACS)."""
    c = (Cfg(0x10B5, 0x8747, 0x060400, rev=0xCA, header=0x01)
         .cap(0x40, PM).cap(0x48, MSI).pcie(0x68, DOWNSTREAM, slot=True).ext(0x100, DSN))
    if with_acs:
        c.acs(0x148, SV | RR | CR | UF | EC, SV | RR | CR | UF)
    return c.ext(0xFB4, AER).bytes()


def pcie_to_pci_bridge() -> bytes:
    """1b21:1080, ASMedia ASM1083/1085 PCIe-to-PCI bridge: conventional PCI behind it."""
    return (Cfg(0x1B21, 0x1080, 0x060401, rev=0x04, header=0x01)
            .cap(0xC0, SSVID).cap(0x80, PM).pcie(0x90, PCIE_TO_PCI).bytes())


FIXTURES = {
    "rootport-8086-1901-noacs": skylake_peg_root_port,
    "rootport-8086-2f08-acs": haswell_e_root_port,
    "rootport-8086-2f08-acs-off": lambda: haswell_e_root_port(acs_ctrl=0),
    "i350-8086-1521-f0": lambda: i350_function(0),
    "switch-10b5-8747-upstream": plx_upstream,
    "switch-10b5-8747-downstream-acs": lambda: plx_downstream(True),
    "switch-10b5-8747-downstream-noacs": lambda: plx_downstream(False),
    "bridge-1b21-1080-pcie-to-pci": pcie_to_pci_bridge,
}


def to_lspci(address: str, data: bytes) -> str:
    lines = [f"{address} (constructed by tests/data/configspace.py)"]
    for off in range(0, len(data), 16):
        lines.append(f"{off:03x}: " + " ".join(f"{b:02x}" for b in data[off:off + 16]))
    return "\n".join(lines) + "\n"


def from_lspci(text: str) -> bytes:
    """Config space bytes from `lspci -x`/`-xxx`/`-xxxx` output of one device."""
    data = bytearray()
    for line in text.splitlines():
        head, sep, rest = line.partition(": ")
        if sep and all(c in "0123456789abcdef" for c in head.strip()) and head.strip():
            if int(head, 16) != len(data):
                raise ValueError(f"offset {head} out of sequence (have {len(data)} bytes)")
            data += bytes(int(x, 16) for x in rest.split())
    return bytes(data)


def load(name: str) -> bytes:
    return from_lspci((HERE / f"{name}.lspci").read_text())


def write_all() -> None:
    for name, build in FIXTURES.items():
        (HERE / f"{name}.lspci").write_text(to_lspci("0000:00:00.0", build()))


if __name__ == "__main__":
    write_all()
    sys.exit(0)
