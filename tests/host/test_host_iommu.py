"""`vfalloc host iommu-groups`: groups and devices from sysfs alone, names from lspci's database."""

from __future__ import annotations

import json
import shutil

import pytest
from fakehost import i350, x710

from vfalloc.host import iommu
from vfalloc.sysfs import Sysfs

HAS_LSPCI = shutil.which("lspci") is not None


def test_every_group_with_its_devices(scratch):
    i350(scratch.fs, numvfs=1, ports=2)
    res = scratch.run("host", "iommu-groups")
    assert res.code == 0, res.err
    out = res.out.splitlines()
    assert out[0] == "group 1 (1 device)"
    assert out[1].startswith("  0000:00:01.0  8086:a110  class 060400  driver pcieport")
    pf0 = next(ln for ln in out if ln.startswith("  0000:01:00.0"))
    assert "8086:1521  class 020000  driver igb  [PF enp1s0f0]" in pf0
    vf = next(ln for ln in out if ln.startswith("  0000:01:10.0"))
    assert "driver igbvf  [VF 0 of enp1s0f0]" in vf
    assert sum(ln.startswith("group ") for ln in out) == 5  # bridge, 2 PFs, 2 VFs


@pytest.mark.skipif(not HAS_LSPCI, reason="lspci not installed")
def test_names_from_lspci(scratch):
    x710(scratch.fs, numvfs=1)
    res = scratch.run("host", "iommu-groups")
    line = next(ln for ln in res.out.splitlines() if ln.startswith("  0000:3b:00.0"))
    assert line.endswith("Intel Corporation Ethernet Controller X710 for 10GbE SFP+")


def test_without_lspci_the_listing_still_works(scratch, monkeypatch, tmp_path):
    i350(scratch.fs, numvfs=1, ports=1)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = scratch.run("host", "iommu-groups")
    assert res.code == 0
    assert "Intel Corporation" not in res.out and "[PF enp1s0f0]" in res.out


def test_json(scratch):
    i350(scratch.fs, numvfs=1, ports=1)
    data = json.loads(scratch.run("host", "iommu-groups", "--json").out)
    vf = next(d for g in data for d in g["devices"] if d["address"] == "0000:01:10.0")
    assert vf["id"] == "8086:1520" and vf["driver"] == "igbvf" and vf["role"] == "[VF 0 of enp1s0f0]"
    assert [g["group"] for g in data] == sorted(g["group"] for g in data)


def test_no_iommu_is_one_line_and_non_zero(scratch):
    scratch.fs.bridge("0000:00:01.0")   # a device, but no group: IOMMU off
    res = scratch.run("host", "iommu-groups")
    assert res.code == 1 and res.out == ""
    assert res.err.count("\n") == 1 and "no IOMMU groups in sysfs: the IOMMU is off" in res.err


@pytest.mark.skipif(not HAS_LSPCI, reason="lspci not installed")
def test_lspci_dump_round_trip(scratch):
    i350(scratch.fs, numvfs=1, ports=1)
    sysfs = Sysfs(scratch.fs.root)
    devices = [d for g in iommu.groups(sysfs) for d in g.devices]
    names = iommu.lspci_names(devices)
    assert names["0000:01:00.0"] == "Intel Corporation I350 Gigabit Network Connection"
    assert names["0000:01:10.0"] == "Intel Corporation I350 Ethernet Controller Virtual Function"
    assert set(names) == {str(d.address) for d in devices}

