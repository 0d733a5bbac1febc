"""vfalloc.host.pciconfig on the config-space fixtures of tests/data and on hostile bytes."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent.parent / "data"))

import configspace as cs  # noqa: E402

from vfalloc.host import pciconfig  # noqa: E402

ALL_ACS = pciconfig.REQ_ACS_FLAGS


@pytest.mark.parametrize("name", sorted(cs.FIXTURES))
def test_fixture_files_match_the_builder(name):
    data = cs.load(name)
    assert len(data) == 4096
    assert data == cs.FIXTURES[name](), f"tests/data/{name}.lspci is stale: run tests/data/configspace.py"


@pytest.mark.parametrize("name, ident, port, multifunction, acs, enabled", [
    ("rootport-8086-1901-noacs", (0x8086, 0x1901), "root port", False, None, None),
    ("rootport-8086-2f08-acs", (0x8086, 0x2F08), "root port", False, 0x1F, True),
    ("rootport-8086-2f08-acs-off", (0x8086, 0x2F08), "root port", False, 0x1F, False),
    ("i350-8086-1521-f0", (0x8086, 0x1521), "endpoint", True, 0x00, True),
    ("switch-10b5-8747-upstream", (0x10B5, 0x8747), "upstream port", False, None, None),
    ("switch-10b5-8747-downstream-acs", (0x10B5, 0x8747), "downstream port", False, 0x3D, True),
    ("switch-10b5-8747-downstream-noacs", (0x10B5, 0x8747), "downstream port", False, None, None),
    ("bridge-1b21-1080-pcie-to-pci", (0x1B21, 0x1080), "PCIe-to-PCI bridge", False, None, None),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parse_fixture(name, ident, port, multifunction, acs, enabled):
    info = pciconfig.parse(cs.load(name))
    assert (info.vendor, info.device) == ident
    assert info.port_name == port
    assert info.multifunction is multifunction
    if acs is None:
        assert info.acs is None
        assert pciconfig.PCI_EXT_CAP_ID_ACS not in info.ext_caps
    else:
        assert info.acs.capability == acs
        assert info.acs.enabled is enabled


def test_ext_caps_followed_in_chain_order_to_the_last_one():
    info = pciconfig.parse(cs.load("rootport-8086-1901-noacs"))
    assert info.ext_caps == (cs.VC, cs.RCLINK, cs.SECPCI)  # the last one sits at 0xd94


def test_acs_found_after_a_vendor_specific_capability():
    info = pciconfig.parse(cs.load("rootport-8086-2f08-acs"))
    assert info.acs.offset == 0x110
    assert info.ext_caps[:3] == (cs.VNDR, cs.ACS, cs.AER)


@pytest.mark.parametrize("cap, ctrl, missing", [
    (ALL_ACS, ALL_ACS, 0),
    (ALL_ACS | pciconfig.ACS_TB, ALL_ACS, 0),                  # TB is not required
    (ALL_ACS, ALL_ACS & ~pciconfig.ACS_RR, pciconfig.ACS_RR),
    (0, 0, 0),                                                 # nothing implemented: hard-wired
    (pciconfig.ACS_SV, 0, pciconfig.ACS_SV),                   # implemented but off
    (pciconfig.ACS_EC, 0, 0),                                  # egress control alone is not required
], ids=["all-on", "tb-extra", "rr-off", "none-implemented", "sv-off", "ec-only"])
def test_acs_enabled_follows_pci_acs_flags_enabled(cap, ctrl, missing):
    acs = pciconfig.Acs(0x100, cap, ctrl)
    assert acs.missing == missing
    assert acs.enabled is (missing == 0)


def test_unprivileged_64_bytes_are_not_taken_for_conventional_pci():
    info = pciconfig.parse(cs.load("rootport-8086-2f08-acs")[:64])
    assert not info.extended_readable
    assert info.acs is None


def test_extended_capability_loop_terminates():
    data = bytearray(cs.load("rootport-8086-2f08-acs"))
    header = struct.unpack_from("<I", data, 0x148)[0] & 0xFFFFF
    struct.pack_into("<I", data, 0x148, header | (0x100 << 20))   # AER points back to 0x100
    info = pciconfig.parse(bytes(data))
    assert info.ext_caps == (cs.VNDR, cs.ACS, cs.AER)


def test_standard_capability_loop_terminates():
    data = bytearray(cs.load("rootport-8086-1901-noacs"))
    data[0xA0 + 1] = 0x80                                           # PCIe cap points back to PM
    assert [cid for cid, _ in pciconfig.capabilities(bytes(data))] == [cs.PM, cs.SSVID, cs.MSI, cs.EXP]


def test_backward_standard_chain_is_followed():
    info = pciconfig.parse(cs.load("bridge-1b21-1080-pcie-to-pci"))   # 0xc0 -> 0x80 -> 0x90
    assert info.port_name == "PCIe-to-PCI bridge"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=4096))
def test_parse_never_raises_on_random_bytes(data):
    info = pciconfig.parse(data)
    assert info.size == len(data)
    assert len(info.ext_caps) <= (4096 - 0x100) // 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=0xFFF), min_size=1, max_size=40))
def test_any_next_pointer_chain_terminates(pointers):
    data = bytearray(cs.load("rootport-8086-1901-noacs"))
    pos = 0x100
    for nxt in pointers:
        struct.pack_into("<I", data, pos, 0x0001 | (1 << 16) | ((nxt & 0xFFC) << 20))
        if nxt & 0xFFC < 0x100 or nxt & 0xFFC > 4092:
            break
        pos = nxt & 0xFFC
    found = pciconfig.extended_capabilities(bytes(data))
    offsets = [off for _, off in found]
    assert len(offsets) == len(set(offsets)), "a capability was visited twice"
    assert all(0x100 <= off <= 4092 for off in offsets)
