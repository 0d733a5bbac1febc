"""`vfalloc host acs`: walks from a device to its root port over fake sysfs trees carrying the
config-space fixtures of tests/data, and the override it proposes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "data"))

import configspace as cs  # noqa: E402
from fakehost import FakeSys  # noqa: E402

from vfalloc.host import acs  # noqa: E402
from vfalloc.model import PciAddress  # noqa: E402
from vfalloc.sysfs import Sysfs  # noqa: E402

I350 = cs.load("i350-8086-1521-f0")


def i350_behind(fs: FakeSys, bridge: str, *, shared: int | None, bus: int = 1, numvfs: int = 2) -> None:
    """Four I350 ports behind `bridge`; all in group `shared`, or each function in its own."""
    for port in range(4):
        bdf = f"0000:{bus:02x}:00.{port}"
        fs.add_pf(bdf, netdev=f"enp{bus}s0f{port}", vendor="8086", device="1521", vf_device="1520",
                  driver="igb", vf_driver="igbvf", totalvfs=7, numvfs=numvfs, bridge=bridge,
                  shared_group=shared, own_groups=shared is None)
        fs.config(bdf, I350)


def seed_host(fs: FakeSys) -> None:
    """The admin notes' case: an I350-T4 in the CPU's x16 slot, whose root port has no ACS."""
    fs.bridge("0000:00:01.0", device="1901", config=cs.load("rootport-8086-1901-noacs"), group=1)
    i350_behind(fs, "0000:00:01.0", shared=1)


def good_host(fs: FakeSys, root: str = "rootport-8086-2f08-acs") -> None:
    fs.bridge("0000:00:03.0", device="2f08", config=cs.load(root), group=fs.group())
    i350_behind(fs, "0000:00:03.0", shared=None)


def switch_host(fs: FakeSys, downstream: str) -> None:
    fs.bridge("0000:00:03.0", device="2f08", config=cs.load("rootport-8086-2f08-acs"), group=fs.group())
    fs.bridge("0000:02:00.0", parent="0000:00:03.0", vendor="10b5", device="8747",
              config=cs.load("switch-10b5-8747-upstream"), group=fs.group())
    group = fs.group()
    fs.bridge("0000:03:08.0", parent="0000:02:00.0", vendor="10b5", device="8747", config=cs.load(downstream), group=group)
    i350_behind(fs, "0000:03:08.0", shared=group if downstream.endswith("noacs") else None, bus=4)


def report(fs: FakeSys, address: str) -> acs.AcsReport:
    return acs.report(Sysfs(fs.root), PciAddress.parse(address))


def verdicts(rep: acs.AcsReport) -> list[tuple[str, str]]:
    return [(str(h.device.address), h.verdict) for h in rep.hops]


def test_seed_case_four_i350_ports_behind_a_root_port_without_acs(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    seed_host(fs)
    reports = [report(fs, f"0000:01:00.{fn}") for fn in range(4)]
    for rep in reports:
        assert rep.group == 1 and len(rep.peers) == 1 + 3 + 4 * 2  # root port, 3 ports, 8 VFs
        assert verdicts(rep) == [(str(rep.device.address), acs.OK), ("0000:00:01.0", acs.NO_ACS)]
        assert rep.needs_override
    assert acs.override_ids(reports) == ["8086:1901"]
    assert acs.override_arg(acs.override_ids(reports)) == "pcie_acs_override=id:8086:1901"


def test_seed_case_vf_walks_through_the_same_root_port(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    seed_host(fs)
    rep = report(fs, "0000:01:10.0")
    assert rep.device.device == "1520"
    assert [h.ident for h in rep.blockers] == ["8086:1901"]


def test_root_port_with_acs_gives_isolated_groups_and_no_override(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    good_host(fs)
    rep = report(fs, "0000:01:00.0")
    assert rep.isolated
    assert verdicts(rep) == [("0000:01:00.0", acs.OK), ("0000:00:03.0", acs.OK)]
    assert "SrcValid ReqRedir CmpltRedir UpstreamFwd" in rep.hops[1].detail
    assert acs.override_ids([rep]) == []


def test_acs_present_but_disabled_names_the_missing_flags(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    fs.bridge("0000:00:03.0", device="2f08", config=cs.load("rootport-8086-2f08-acs-off"), group=1)
    i350_behind(fs, "0000:00:03.0", shared=1)
    rep = report(fs, "0000:01:00.0")
    hop = rep.hops[1]
    assert hop.verdict == acs.ACS_OFF
    assert hop.detail == "ACS present but SrcValid ReqRedir CmpltRedir UpstreamFwd not enabled"
    assert acs.override_ids([rep]) == ["8086:2f08"]


@pytest.mark.parametrize("downstream, blockers", [
    ("switch-10b5-8747-downstream-noacs", ["10b5:8747"]),
    ("switch-10b5-8747-downstream-acs", []),
], ids=["downstream-port-without-acs", "downstream-port-with-acs"])
def test_switch_upstream_port_needs_no_acs_downstream_port_does(tmp_path, downstream, blockers):
    fs = FakeSys(tmp_path / "sys")
    switch_host(fs, downstream)
    rep = report(fs, "0000:04:00.0")
    assert [h.verdict for h in rep.hops[1:]] == [
        acs.NO_ACS if blockers else acs.OK, acs.NOT_NEEDED, acs.OK]
    assert acs.override_ids([rep]) == blockers


def test_pcie_to_pci_bridge_is_not_offered_an_override(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    fs.bridge("0000:00:1c.0", device="2f08", config=cs.load("rootport-8086-2f08-acs"), group=1)
    fs.bridge("0000:05:00.0", parent="0000:00:1c.0", vendor="1b21", device="1080",
              config=cs.load("bridge-1b21-1080-pcie-to-pci"), group=2)
    i350_behind(fs, "0000:05:00.0", shared=2, bus=6)
    rep = report(fs, "0000:06:00.0")
    assert rep.hops[1].verdict == acs.PCI_BRIDGE
    assert not rep.needs_override and acs.override_ids([rep]) == []


@pytest.mark.parametrize("config, expect", [
    (None, "config space unreadable"),
    (b"\x86\x80\x01\x19" + bytes(60), "only the first 64 bytes"),
    (cs.load("rootport-8086-1901-noacs")[:256], "extended config space"),
], ids=["no-config-file", "unprivileged-64-bytes", "no-extended-space"])
def test_unreadable_config_space_says_run_as_root(tmp_path, config, expect):
    fs = FakeSys(tmp_path / "sys")
    fs.bridge("0000:00:01.0", device="1901", config=config, group=1)
    i350_behind(fs, "0000:00:01.0", shared=1)
    hop = report(fs, "0000:01:00.0").hops[1]
    assert hop.verdict == acs.UNREADABLE
    assert expect in hop.detail


def test_quirk_isolated_anyway(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    fs.bridge("0000:00:01.0", device="1901", config=cs.load("rootport-8086-1901-noacs"), group=1)
    i350_behind(fs, "0000:00:01.0", shared=None)
    rep = report(fs, "0000:01:00.0")
    assert rep.isolated and rep.blockers and not rep.needs_override


# -- the command --

def test_cli_acs_seed_case_prints_the_override_and_the_warning(scratch):
    seed_host(scratch.fs)
    res = scratch.run("host", "acs")
    assert res.code == 0, res.err
    assert res.out.count("<- blocks isolation") == 4
    assert "proposed kernel argument: pcie_acs_override=id:8086:1901\n" in res.out
    assert "out-of-tree ACS override patch" in res.out
    assert "vfalloc host kernel-args --acs-override 8086:1901" in res.out


def test_cli_acs_by_interface_name_and_by_vf_address(scratch):
    seed_host(scratch.fs)
    by_name = scratch.run("host", "acs", "enp1s0f2")
    by_vf = scratch.run("host", "acs", "0000:01:10.0")
    assert by_name.out.splitlines()[0].startswith("0000:01:00.2 (8086:1521) is in IOMMU group 1")
    assert by_vf.out.splitlines()[0].startswith("0000:01:10.0 (8086:1520)")
    assert "pcie_acs_override=id:8086:1901" in by_vf.out


def test_cli_acs_isolated_host_proposes_nothing(scratch):
    good_host(scratch.fs)
    res = scratch.run("host", "acs")
    assert res.code == 0
    assert "alone in IOMMU group" in res.out and "proposed" not in res.out


@pytest.mark.parametrize("device, code, message", [
    ("eth9", 2, "eth9 is neither a PCI address nor a network interface"),
    ("0000:09:00.0", 1, "no such PCI device"),
    ("01:00", 2, "neither a PCI address"),
], ids=["unknown-interface", "missing-address", "malformed"])
def test_cli_acs_bad_device_is_one_line(scratch, device, code, message):
    seed_host(scratch.fs)
    res = scratch.run("host", "acs", device)
    assert res.code == code
    assert res.out == ""
    assert res.err.count("\n") == 1 and message in res.err and res.err.startswith("vfalloc: ")
