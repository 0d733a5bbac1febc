"""`vfalloc host check`: the doctor on healthy and broken scratch hosts; every line ok/warn/fail
with its fix, --json, and the exit code."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "data"))

import configspace as cs  # noqa: E402

DATA = Path(__file__).parent.parent / "data"
BOOT_ARGS = {"GenuineIntel": "intel_iommu=on iommu=pt", "AuthenticAMD": "iommu=pt"}
CONFIG = '[pools.lan]\npfs = ["enp1s0f0", "enp1s0f1"]\nnumvfs = 2\n'


def build(scratch, *, vf_driver=None, numvfs=2, cpu="GenuineIntel", cmdline="root=/dev/sda1 intel_iommu=on iommu=pt"):
    scratch.fs.bridge("0000:00:03.0", device="2f08", config=cs.load("rootport-8086-2f08-acs"), group=scratch.fs.group())
    for port in range(2):
        scratch.fs.add_pf(f"0000:01:00.{port}", netdev=f"enp1s0f{port}", vendor="8086", device="1521",
                          vf_device="1520", driver="igb", vf_driver=vf_driver, totalvfs=7, numvfs=numvfs,
                          bridge="0000:00:03.0")
        (scratch.fs.root / f"bus/pci/devices/0000:01:00.{port}/sriov_drivers_autoprobe").write_text("0\n")
    scratch.fs.driver("vfio-pci")
    (scratch.proc / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {cpu}\n")
    (scratch.proc / "cmdline").write_text(cmdline + "\n")
    scratch.write_config(CONFIG)
    scratch.target = scratch.root / "target"
    assert scratch.run("install-hook", "--hooks-dir", str(scratch.target / "etc/libvirt/hooks")).code == 0
    unit = scratch.target / "etc/systemd/system"
    (unit / "multi-user.target.wants").mkdir(parents=True)
    (unit / "vfalloc-numvfs.service").write_text(
        "[Service]\nExecStart=/usr/bin/vfalloc host numvfs 0000:01:00.0 2\n"
        "ExecStart=/usr/bin/vfalloc host numvfs 0000:01:00.1 2\n")
    (unit / "multi-user.target.wants/vfalloc-numvfs.service").symlink_to("/etc/systemd/system/vfalloc-numvfs.service")
    grub = (DATA / "boot/debian-12/etc/default/grub").read_text()  # Debian's stock file, IOMMU on
    write(scratch.target, "etc/default/grub", grub.replace('GRUB_CMDLINE_LINUX=""', f'GRUB_CMDLINE_LINUX="{BOOT_ARGS[cpu]}"'))
    return scratch


# The hook file vfalloc 0.1.0 wrote before its shell part: it ran Python for every call and looks
# for leases reserved by hand in no table of its own.
OLD_HOOK = """#!/usr/bin/python3 -I
# vfalloc libvirt qemu hook: hands SR-IOV VFs to domains that ask for them.
import gc
import os
import sys
gc.disable()
from vfalloc.hook import main
sys.exit(main(sys.argv[1:]))
"""


def check(scratch, *args):
    return scratch.run("host", "check", "--root", str(scratch.target), *args)


def lines(res, status=None, name=None):
    found = [ln for ln in res.out.splitlines()[:-1]]
    return [ln for ln in found if (status is None or ln.startswith(status + " "))
            and (name is None or ln.split()[1] == name)]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_healthy_host_is_all_ok(scratch):
    res = check(build(scratch))
    assert res.code == 0, res.out
    assert lines(res) == lines(res, "ok")
    assert res.out.splitlines()[-1] == f"{len(lines(res))} ok, 0 warn, 0 fail"
    names = {ln.split()[1] for ln in lines(res)}
    assert names == {"iommu", "boot", "kernel-args", "iommu-pt", "vfio-pci", "hook", "sr-iov", "link", "isolation",
                     "vf-driver", "persist", "owners"}


def test_json_has_every_check_and_the_summary(scratch):
    build(scratch)
    (scratch.fs.root / "class/net/enp1s0f1/operstate").write_text("down\n")
    res = check(scratch, "--json")
    assert res.code == 1
    data = json.loads(res.out)
    assert data["summary"]["fail"] == 1 and sum(data["summary"].values()) == len(data["checks"])
    bad = [c for c in data["checks"] if c["status"] == "fail"]
    assert bad == [{"status": "fail", "check": "link", "subject": "enp1s0f1",
                    "message": bad[0]["message"], "fix": "ip link set enp1s0f1 up, and at boot"}]
    assert "PF still in reset state" in bad[0]["message"]


def drop_iommu(fs):
    shutil.rmtree(fs.root / "kernel/iommu_groups")
    (fs.root / "kernel/iommu_groups").mkdir()
    for dirpath, dirnames, filenames in os.walk(fs.root):
        if "iommu_group" in dirnames + filenames:
            os.unlink(os.path.join(dirpath, "iommu_group"))


def test_host_without_iommu_fails_with_the_fixes(scratch):
    build(scratch, cmdline="root=/dev/sda1 quiet")
    drop_iommu(scratch.fs)
    res = check(scratch)
    assert res.code == 1
    fails = lines(res, "fail")
    assert any("iommu " in ln and "no IOMMU groups" in ln and "enable VT-d / AMD-Vi" in ln for ln in fails)
    assert any("kernel-args" in ln and "intel_iommu=on is not on the kernel command line" in ln
               and "fix: `vfalloc host kernel-args`" in ln for ln in fails)
    assert sum("VFs have no IOMMU group" in ln for ln in fails) == 2


@pytest.mark.parametrize("cpu, cmdline, status, text", [
    ("GenuineIntel", "intel_iommu=on iommu=pt", "ok", "intel_iommu=on"),
    ("GenuineIntel", "intel_iommu=on intel_iommu=off iommu=pt", "fail", "booted with intel_iommu=off"),
    ("GenuineIntel", "iommu=pt", "warn", "intel_iommu=on is not on"),
    ("AuthenticAMD", "iommu=pt", "ok", "AMD IOMMU on by default"),
    ("AuthenticAMD", "amd_iommu=off iommu=pt", "fail", "booted with amd_iommu=off"),
], ids=["intel-on", "intel-off", "intel-missing-but-groups", "amd-default", "amd-off"])
def test_kernel_args_per_vendor(scratch, cpu, cmdline, status, text):
    res = check(build(scratch, cpu=cpu, cmdline=cmdline))
    [line] = lines(res, name="kernel-args")
    assert line.startswith(status) and text in line


@pytest.mark.parametrize("cpu, unit, cmdline, status, text", [
    ("AuthenticAMD", "dmar0", "iommu=pt", "warn", "intel_iommu=on is not on"),
    ("AuthenticAMD", "dmar0", "intel_iommu=on iommu=pt", "ok", "intel_iommu=on"),
    ("GenuineIntel", "ivhd0", "iommu=pt", "ok", "AMD IOMMU on by default"),
], ids=["amd-cpu-intel-iommu", "amd-cpu-intel-iommu-on", "intel-cpu-amd-iommu"])
def test_the_iommu_units_decide_whose_rules_apply(scratch, cpu, unit, cmdline, status, text):
    """A VM with an AMD CPU model and QEMU's intel-iommu has an Intel IOMMU: class/iommu says so."""
    build(scratch, cpu=cpu, cmdline=cmdline)
    (scratch.fs.root / "class" / "iommu" / unit).mkdir(parents=True)
    [line] = lines(check(scratch), name="kernel-args")
    assert line.startswith(status) and text in line


def test_seed_case_names_the_bridge_without_acs(scratch):
    fs = scratch.fs
    fs.bridge("0000:00:01.0", device="1901", config=cs.load("rootport-8086-1901-noacs"), group=1)
    for port in range(4):
        fs.add_pf(f"0000:01:00.{port}", netdev=f"enp1s0f{port}", vendor="8086", device="1521", vf_device="1520",
                  driver="igb", vf_driver="igbvf", totalvfs=7, numvfs=7, shared_group=1, own_groups=False)
        fs.config(f"0000:01:00.{port}", cs.load("i350-8086-1521-f0"))
    scratch.target = scratch.root
    res = check(scratch)
    assert res.code == 1
    iso = lines(res, "fail", "isolation")
    assert len(iso) == 4
    assert all("group 1 has 33 devices" in ln and "without ACS: 8086:1901" in ln
               and "--acs-override 8086:1901" in ln for ln in iso)


def test_unbound_pf_and_missing_vfs(scratch):
    build(scratch, numvfs=0)
    (scratch.fs.root / "bus/pci/devices/0000:01:00.1/driver").unlink()
    res = check(scratch)
    [f0] = lines(res, name="sr-iov")[:1]
    assert f0.startswith("fail") and "0 of 7 VFs: no VFs created" in f0 and "vfalloc host numvfs enp1s0f0 2" in f0
    assert "no driver bound to the PF" in lines(res, name="sr-iov")[1]


def test_vfs_on_host_driver_warn_with_autoprobe_fix(scratch):
    build(scratch, vf_driver="igbvf")
    for pf in ("0000:01:00.0", "0000:01:00.1"):
        (scratch.fs.root / f"bus/pci/devices/{pf}/sriov_drivers_autoprobe").write_text("1\n")
    res = check(scratch)
    warns = lines(res, "warn", "vf-driver")
    assert len(warns) == 2 and "bound to host driver igbvf" in warns[0]
    assert "vfalloc host vf-driver --autoprobe off enp1s0f0" in warns[0]
    write(scratch.target, "etc/modprobe.d/vfalloc-vf-blacklist.conf", "blacklist igbvf\n")
    res = check(scratch)
    assert "igbvf blacklisted, but 2 VFs are still bound" in lines(res, "warn", "vf-driver")[0]


@pytest.mark.parametrize("setup, status, text", [
    (lambda t: (t / "etc/libvirt/hooks/qemu.d/vfalloc").chmod(0o644), "fail", "is not executable"),
    (lambda t: (t / "etc/libvirt/hooks/qemu.d/vfalloc").unlink(), "fail", "no vfalloc hook"),
    (lambda t: ((t / "etc/libvirt/hooks/qemu.d/vfalloc").unlink(),
                write(t, "etc/libvirt/hooks/qemu", "#!/bin/sh\n/usr/bin/vfalloc hook \"$@\"\n"),
                (t / "etc/libvirt/hooks/qemu").chmod(0o755)), "ok", "hooks/qemu"),
    (lambda t: ((t / "etc/libvirt/hooks/qemu.d/vfalloc").unlink(),
                write(t, "etc/libvirt/hooks/qemu", "#!/bin/sh\nexit 0\n")), "fail", "no vfalloc hook"),
    (lambda t: write(t, "etc/libvirt/hooks/qemu.d/vfalloc", OLD_HOOK), "warn", "is not the hook this vfalloc writes"),
    (lambda t: write(t, "etc/libvirt/hooks/qemu.d/vfalloc", "#!/bin/sh\nexec /usr/local/bin/my-vf-hook \"$@\"\n"),
     "ok", "hook installed"),
], ids=["not-executable", "missing", "main-qemu-script", "foreign-qemu-script", "older-vfalloc", "admins-own"])
def test_hook(scratch, setup, status, text):
    """The hook is checked as `install-hook` wrote it (build), and after each change to it."""
    build(scratch)
    setup(scratch.target)
    [line] = lines(check(scratch), name="hook")
    assert line.startswith(status) and text in line


def test_persist_not_enabled_or_stale(scratch):
    build(scratch)
    (scratch.target / "etc/systemd/system/multi-user.target.wants/vfalloc-numvfs.service").unlink()
    assert all("written but not enabled" in ln for ln in lines(check(scratch), "warn", "persist"))
    scratch.write_config(CONFIG.replace("numvfs = 2", "numvfs = 3"))
    res = check(scratch)
    assert "systemd creates 2 VFs at boot, the config wants 3" in lines(res, "warn", "persist")[0]


OWNERS = [
    ("etc/NetworkManager/system-connections/lan.nmconnection",
     "[connection]\nid=lan\ntype=ethernet\ninterface-name=enp1s0f0\n\n[sriov]\ntotal-vfs=4\n",
     "enp1s0f0", "fail", "NetworkManager also sets VFs", "[sriov] total-vfs=4 (vfalloc wants 2)"),
    ("etc/NetworkManager/system-connections/bymac.nmconnection",
     "[connection]\nid=x\ntype=ethernet\n[ethernet]\nmac-address=A0:36:9F:00:00:01\n[sriov]\ntotal-vfs=2\n",
     "enp1s0f1", "warn", "NetworkManager also sets VFs", "total-vfs=2"),
    ("etc/netplan/01-sriov.yaml",
     "network:\n  version: 2\n  ethernets:\n    enp1s0f1:\n      virtual-function-count: 2  # same\n",
     "enp1s0f1", "warn", "netplan also sets VFs", "enp1s0f1: virtual-function-count: 2"),
    ("etc/netplan/02-vfs.yaml",
     "network:\n  ethernets:\n    enp1s0f0:\n      dhcp4: true\n    vf0:\n      link: enp1s0f0\n",
     "enp1s0f0", "warn", "netplan also sets VFs", "vf0 is a VF with link: enp1s0f0"),
    ("etc/systemd/network/10-sriov.link",
     "[Match]\nDriver=igb\n\n[Link]\nSR-IOVVirtualFunctions=7\n",
     "both", "fail", "systemd-networkd also sets VFs", "SR-IOVVirtualFunctions=7 (vfalloc wants 2)"),
    ("etc/systemd/network/20-one.link",
     "[Match]\nPath=pci-0000:01:00.1\n[Link]\nSR-IOVVirtualFunctions=2\n",
     "enp1s0f1", "warn", "systemd-networkd also sets VFs", "SR-IOVVirtualFunctions=2"),
    ("etc/modprobe.d/igb.conf", "options igb max_vfs=7,7\n",
     "both", "fail", "modprobe also sets VFs", "options igb max_vfs=7,7"),
]


@pytest.mark.parametrize("rel, text, pf, status, who, detail", OWNERS,
                         ids=["nm-by-name", "nm-by-mac", "netplan-count", "netplan-vf-link",
                              "networkd-by-driver", "networkd-by-path", "igb-max_vfs"])
def test_competing_numvfs_owners(scratch, rel, text, pf, status, who, detail):
    build(scratch)
    (scratch.fs.root / "class/net/enp1s0f1/address").write_text("a0:36:9f:00:00:01\n")
    write(scratch.target, rel, text)
    res = check(scratch)
    owners = [ln for ln in lines(res, name="owners") if not ln.startswith("ok")]
    subjects = {"enp1s0f0", "enp1s0f1"} if pf == "both" else {pf}
    assert {ln.split()[2].rstrip(":") for ln in owners} == subjects
    for ln in owners:
        assert ln.startswith(status) and who in ln and detail in ln
        assert f"{scratch.target}/{rel}" in ln and "keep one owner of numvfs" in ln
    assert res.code == (1 if status == "fail" else 0)


def test_owner_files_for_other_pfs_are_ignored(scratch):
    build(scratch)
    write(scratch.target, "etc/systemd/network/10-other.link",
          "[Match]\nOriginalName=eno1 enp9s*\n[Link]\nSR-IOVVirtualFunctions=4\n")
    write(scratch.target, "etc/NetworkManager/system-connections/o.nmconnection",
          "[connection]\ninterface-name=eno1\n[sriov]\ntotal-vfs=4\n")
    assert lines(check(scratch), name="owners") == lines(check(scratch), "ok", "owners")


def test_config_error_is_a_failed_check_not_a_crash(scratch):
    build(scratch)
    scratch.write_config('[pools.lan]\npfs = ["enp7s0"]\n')
    res = check(scratch)
    assert res.code == 1
    [line] = lines(res, "fail", "config")
    assert "names PF 'enp7s0'" in line
    assert lines(res, name="sr-iov")  # the other checks still ran


def test_no_sriov_pf(scratch):
    scratch.fs.driver("vfio-pci")
    (scratch.proc / "cmdline").write_text("quiet\n")
    scratch.target = scratch.root
    res = check(scratch)
    assert res.code == 1 and any("no SR-IOV physical function found" in ln for ln in lines(res, "fail"))


def test_check_writes_nothing(scratch):
    build(scratch)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in scratch.root.rglob("*") if not p.is_symlink())
    check(scratch)
    after = sorted((str(p), p.stat().st_mtime_ns) for p in scratch.root.rglob("*") if not p.is_symlink())
    assert before == after
    assert os.access(scratch.target / "etc/libvirt/hooks/qemu.d/vfalloc", os.X_OK)


def test_pf_table_of_a_pf_in_no_pool_is_checked(scratch):
    build(scratch)
    scratch.write_config('[pools.lan]\npfs = ["enp1s0f0"]\nnumvfs = 2\n\n[pf.enp1s0f1]\nnumvfs = 3\n')
    res = check(scratch)
    assert "warn  sr-iov      enp1s0f1: 2 of 7 VFs, the config wants 3; fix: `vfalloc host numvfs enp1s0f1 3`" in res.out
    assert "warn  persist     enp1s0f1: systemd creates 2 VFs at boot, the config wants 3; " \
           "fix: `vfalloc host persist --enable`" in res.out


@pytest.mark.parametrize("change, status, message", [
    (lambda t: None, "ok", "GRUB (Debian, Ubuntu, Proxmox VE without proxmox-boot-tool): {t}/etc/default/grub:10 carry "
                           "intel_iommu=on iommu=pt"),
    (lambda t: (t / "etc/default/grub").unlink(), "warn", "no boot configuration vfalloc knows under {t}"),
    (lambda t: write(t, "etc/default/grub.d/90-extra.cfg", 'GRUB_CMDLINE_LINUX="$(cat /etc/extra)"\n'), "warn",
     "{t}/etc/default/grub.d/90-extra.cfg:1: uses $(...) command substitution; edit GRUB_CMDLINE_LINUX there by hand"),
    (lambda t: (shutil.copytree(DATA / "boot/pve-8-zfs/etc", t / "etc", dirs_exist_ok=True),
                write(t, "etc/kernel/cmdline", "root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on \n")), "warn",
     "Proxmox VE proxmox-boot-tool (ESPs from /etc/kernel/proxmox-boot-uuids): {t}/etc/default/grub:10 lacks "
     "intel_iommu=on iommu=pt; {t}/etc/kernel/cmdline:1 lacks iommu=pt (the next boot gets what these files say); "
     "fix: `vfalloc host kernel-args`; `proxmox-boot-tool refresh`"),
], ids=["debian-ok", "none", "unreadable", "proxmox-both-files"])
def test_boot_line_names_the_setup_and_its_files(scratch, change, status, message):
    build(scratch)
    change(scratch.target)
    res = check(scratch)
    boot = lines(res, name="boot")
    assert len(boot) == 1 and boot[0].startswith(f"{status} "), res.out
    assert message.format(t=scratch.target) in boot[0]
