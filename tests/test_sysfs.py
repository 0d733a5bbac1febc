"""Inventory read from real fake sysfs trees of realistic hosts."""

import os

import pytest
from fakehost import FakeSys, connectx, i350, x710

from vfalloc.errors import SysfsError
from vfalloc.model import PciAddress
from vfalloc.sysfs import Sysfs, parse_cpulist


@pytest.fixture
def host_dir(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    i350(fs)
    x710(fs)
    connectx(fs)
    fs.add_pf("0000:02:00.0", netdev="enp2s0", vendor="8086", device="1521", vf_device="1520",
              driver="igb", vf_driver="igbvf", totalvfs=7, numvfs=0)
    fs.add_pf("0000:81:00.0", netdev=None, vendor="8086", device="1521", vf_device="1520",
              driver="igb", vf_driver="vfio-pci", totalvfs=7, numvfs=2)
    return fs


def test_every_pf_is_found(host_dir):
    host = Sysfs(host_dir.root).read_host()
    names = [pf.name for pf in host.pfs]
    assert names == ["enp1s0f0", "enp1s0f1", "enp1s0f2", "enp1s0f3", "enp2s0", "ens2f0", "ens2f1",
                     "ens5f0np0", "0000:81:00.0", "ens6f0np0"]


@pytest.mark.parametrize("name,driver,total,num,vendor,device,numa", [
    ("enp1s0f0", "igb", 7, 7, "8086", "1521", None),
    ("ens2f1", "i40e", 64, 16, "8086", "1572", 0),
    ("ens6f0np0", "mlx5_core", 16, 8, "15b3", "1017", 1),
    ("enp2s0", "igb", 7, 0, "8086", "1521", None),
], ids=["i350", "x710", "connectx-node1", "numvfs-0"])
def test_pf_facts(host_dir, name, driver, total, num, vendor, device, numa):
    pf = Sysfs(host_dir.root).read_host().pf(name)
    assert (pf.driver, pf.totalvfs, pf.numvfs, pf.vendor, pf.device, pf.numa_node) == (
        driver, total, num, vendor, device, numa)
    assert len(pf.vfs) == num
    assert [vf.index for vf in pf.vfs] == list(range(num))
    assert pf.link_up is True


def test_i350_vf_details(host_dir):
    pf = Sysfs(host_dir.root).read_host().pf("enp1s0f1")
    vf = pf.vfs[2]
    # igb: VF offset 0x80, stride 4 from 01:00.1 -> routing id 0x101 + 0x80 + 8
    assert str(vf.address) == "0000:01:11.1"
    assert (vf.pf, vf.vendor, vf.device, vf.driver, vf.netdev) == (
        PciAddress.parse("0000:01:00.1"), "8086", "1520", "igbvf", "enp1s0f1v2")
    groups = {v.iommu_group for v in pf.vfs}
    assert len(groups) == 7 and pf.iommu_group not in groups


def test_without_vf_netdevs_every_other_fact_is_read(host_dir):
    """`vfalloc list`'s read: the VFs' network interfaces are not looked up (a VF's net/ that
    cannot be listed does not matter to it), all else is what the full read gives."""
    full = Sysfs(host_dir.root).read_host()
    vf_net = host_dir.root / "bus/pci/devices/0000:01:11.1/net"
    vf_net.rename(vf_net.with_name("net-moved"))
    vf_net.write_text("")  # a file where the kernel has a directory: listing it fails
    with pytest.raises(SysfsError, match="0000:01:11.1/net"):
        Sysfs(host_dir.root).read_host()
    shown = Sysfs(host_dir.root).read_host(vf_netdevs=False)
    assert any(vf.netdev for pf in full.pfs for vf in pf.vfs)
    assert all(vf.netdev is None for pf in shown.pfs for vf in pf.vfs)

    def facts(host):
        return [(pf.address, pf.netdev, pf.link_up, pf.numa_node, pf.iommu_group,
                 [(vf.address, vf.index, vf.pf, vf.vendor, vf.device, vf.driver, vf.numa_node, vf.iommu_group)
                  for vf in pf.vfs]) for pf in host.pfs]

    assert facts(shown) == facts(full)


def test_a_vf_is_not_asked_whether_it_is_a_pf(host_dir):
    """The functions are walked in address order and a VF of a PF read already is not checked
    for sriov_totalvfs (the kernel shows it on PFs only): here one VF is given the file, which
    no kernel does, and stays a VF of its PF, not a PF of its own."""
    before = Sysfs(host_dir.root).read_host()
    vf = host_dir.root / "bus/pci/devices/0000:01:11.1"
    (vf / "sriov_totalvfs").write_text("7\n")
    after = Sysfs(host_dir.root).read_host()
    assert [pf.address for pf in after.pfs] == [pf.address for pf in before.pfs]
    assert after.find_vf("0000:01:11.1") == before.find_vf("0000:01:11.1")
    assert Sysfs(host_dir.root).is_pf(PciAddress.parse("0000:01:11.1"))  # asked by name, it says what it has


def test_vfio_bound_vf_has_no_netdev(host_dir):
    pf = Sysfs(host_dir.root).read_host().pf("0000:81:00.0")
    assert pf.netdev is None
    assert [(vf.driver, vf.netdev) for vf in pf.vfs] == [("vfio-pci", None)] * 2


def test_only_selected_pfs_are_read(host_dir):
    wanted = {PciAddress.parse("0000:3b:00.0")}
    host = Sysfs(host_dir.root).read_host(only=wanted)
    assert [pf.name for pf in host.pfs] == ["ens2f0"]


def test_host_without_sriov_has_no_pfs(tmp_path):
    assert Sysfs(FakeSys(tmp_path).root).read_host().pfs == ()


def test_wrong_root_is_an_error_not_an_empty_host(tmp_path):
    with pytest.raises(SysfsError, match="bus/pci/devices: does not exist; is sysfs mounted there"):
        Sysfs(tmp_path / "nothing-here").read_host()


def test_unreadable_attribute_is_an_error_not_a_default(host_dir):
    path = host_dir.root / "bus/pci/devices/0000:01:00.0/sriov_numvfs"
    os.unlink(os.path.realpath(path))
    with pytest.raises(SysfsError) as info:
        Sysfs(host_dir.root).read_host()
    assert "sriov_numvfs" in str(info.value) and "cannot read" in str(info.value)


def test_garbage_number_is_an_error(host_dir):
    (host_dir.root / "bus/pci/devices/0000:01:00.0/sriov_totalvfs").write_text("seven\n")
    with pytest.raises(SysfsError, match="'seven', not a number"):
        Sysfs(host_dir.root).read_host()


def test_netdev_lookup_and_upstream(host_dir):
    sysfs = Sysfs(host_dir.root)
    assert sysfs.netdev_pci("ens2f0") == PciAddress.parse("0000:3b:00.0")
    assert sysfs.netdev_pci("nosuch0") is None
    for name, parent in (("br0", "virtual"), ("enx0c37", "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0")):
        ndir = host_dir.root / "devices" / parent / "net" / name
        ndir.mkdir(parents=True)
        (host_dir.root / "class/net" / name).symlink_to(os.path.relpath(ndir, host_dir.root / "class/net"))
        assert sysfs.netdev_pci(name) is None  # a bridge; a USB NIC (its parent is a USB interface)
    for bad in ("", ".", "..", "../../bus"):
        assert sysfs.netdev_pci(bad) is None
    assert sysfs.upstream(PciAddress.parse("0000:3b:00.0")) == [PciAddress.parse("0000:3a:00.0")]


def test_iommu_groups_and_numa(host_dir):
    sysfs = Sysfs(host_dir.root)
    groups = sysfs.iommu_groups()
    vf = sysfs.read_host().pf("enp1s0f0").vfs[0]
    assert groups[vf.iommu_group] == [vf.address]
    assert sysfs.node_cpus() == {0: frozenset(range(16)), 1: frozenset(range(16, 32))}


def test_write_attr_keeps_errno(host_dir, tmp_path):
    sysfs = Sysfs(host_dir.root)
    addr = PciAddress.parse("0000:01:00.0")
    sysfs.write_attr(addr, "sriov_numvfs", "3")
    assert sysfs.read_attr(addr, "sriov_numvfs") == "3"
    with pytest.raises(SysfsError) as info:
        sysfs.write_attr(addr, "no_such_attr", "1")
    assert info.value.errno == 2


@pytest.mark.parametrize("text,expected", [
    ("0-3", {0, 1, 2, 3}), ("0-3,^2,8", {0, 1, 3, 8}), ("5", {5}), ("", set()), ("0-1,4-5", {0, 1, 4, 5}),
], ids=["range", "exclude", "single", "empty", "two-ranges"])
def test_cpulist(text, expected):
    assert parse_cpulist(text) == frozenset(expected)


@pytest.mark.parametrize("target", ["../not-a-pci-function", "dangling-0000:01:10.0"], ids=["garbage", "near-miss"])
@pytest.mark.parametrize("brief", [False, True], ids=["full", "brief"])
def test_virtfn_link_to_something_else_is_an_error(host_dir, target, brief):
    pf = os.path.realpath(host_dir.root / "bus/pci/devices/0000:01:00.0")
    os.unlink(f"{pf}/virtfn3")
    os.symlink(target, f"{pf}/virtfn3")
    with pytest.raises(SysfsError) as info:
        Sysfs(host_dir.root).read_host(brief=brief)
    assert "virtfn3" in str(info.value) and "does not point to a PCI function" in str(info.value)


def test_read_pf_of_a_function_that_is_no_pf_names_it(host_dir):
    vf = Sysfs(host_dir.root).read_host().pfs[0].vfs[0].address
    with pytest.raises(SysfsError, match=f"{vf}: is not an SR-IOV physical function"):
        Sysfs(host_dir.root).read_pf(vf)
