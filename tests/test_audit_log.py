"""Every command that changes the host or the lease table logs one line, as the hook does
(vfalloc.log: syslog and the hook_log file): what changed and who ran it. Read back from the
file VFALLOC_HOOK_LOG names. A dry run, a refusal and a no-op log nothing."""

from __future__ import annotations

import getpass
import re

import pytest
from fakehost import i350
from fakekernel import FakeKernel, command
from test_stale import lab  # noqa: F401  (the fixture: a host with stale leases)

U1, U2 = "6f1b1f4e-3d5a-4d39-9c8e-000000000001", "6f1b1f4e-3d5a-4d39-9c8e-000000000002"
GRUB = 'GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\nGRUB_CMDLINE_LINUX=""\n'


@pytest.fixture
def logged(scratch, tmp_path, monkeypatch):
    i350(scratch.fs, numvfs=7, ports=2)
    (scratch.proc / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    (scratch.proc / "cmdline").write_text("root=/dev/sda1 quiet\n")
    scratch.log = tmp_path / "vfalloc.log"
    monkeypatch.setenv("VFALLOC_HOOK_LOG", str(scratch.log))
    scratch.target = tmp_path / "target"
    (scratch.target / "etc/default").mkdir(parents=True)
    (scratch.target / "etc/default/grub").write_text(GRUB)
    scratch.exe = tmp_path / "vfalloc-exe"
    scratch.exe.write_text("#!/bin/sh\n")
    scratch.exe.chmod(0o755)
    return scratch


def log_lines(host) -> list[str]:
    return host.log.read_text().splitlines() if host.log.exists() else []


def by(line: str) -> bool:
    return line.endswith(f"[by {getpass.getuser()}]")


def target(host, *argv):
    return host.run(*argv[:2], "--root", str(host.target), *argv[2:])


# (id, the command, the line it logs)
CHANGES = [
    ("alloc", lambda h: h.run("alloc", "--domain", "vm1", "--uuid", U1, "--pool", "enp1s0f0"),
     rf"^alloc: 0000:01:10\.0 \(VF 0 of 0000:01:00\.0, pool enp1s0f0\) leased to vm1 mac [0-9a-f:]{{17}} \({U1}, reserved by hand\)"),
    ("kernel-args", lambda h: target(h, "host", "kernel-args"),
     r"^kernel-args: added intel_iommu=on iommu=pt in .*/target/etc/default/grub "),
    ("persist", lambda h: target(h, "host", "persist", "enp1s0f0=4", "--exec", str(h.exe)),
     r"^host persist: wrote .*/etc/systemd/system/vfalloc-numvfs.service \(systemd\): enp1s0f0=4 "),
    ("vf-driver-blacklist", lambda h: target(h, "host", "vf-driver", "--blacklist", "igbvf"),
     r"^host vf-driver: igbvf blacklisted in .*/etc/modprobe.d/"),
    ("vf-driver-autoprobe", lambda h: target(h, "host", "vf-driver", "--autoprobe", "off", "enp1s0f1"),
     r"^host vf-driver: enp1s0f1 sriov_drivers_autoprobe <- 0 "),
    ("install-hook", lambda h: h.run("install-hook", "--hooks-dir", str(h.target / "etc/libvirt/hooks")),
     r"^install-hook: installed .*/etc/libvirt/hooks/qemu.d/vfalloc "),
]


@pytest.mark.parametrize("run, pattern", [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_a_change_logs_one_line_with_who(logged, run, pattern):
    res = run(logged)
    assert res.code == 0, res.err
    lines = log_lines(logged)
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    assert by(lines[0])


@pytest.mark.parametrize("run", [
    lambda h: target(h, "host", "kernel-args", "--dry-run"),
    lambda h: target(h, "host", "persist", "enp1s0f0=4", "--exec", str(h.exe), "--dry-run"),
    lambda h: h.run("install-hook", "--hooks-dir", str(h.target / "etc/libvirt/hooks"), "--dry-run"),
    lambda h: h.run("alloc", "--domain", "vm1", "--uuid", U1, "--pool", "nosuchpool"),
    lambda h: h.run("release", "--uuid", U2),
], ids=["kernel-args-dry-run", "persist-dry-run", "install-hook-dry-run", "alloc-refused", "release-nothing"])
def test_no_change_no_line(logged, run):
    run(logged)
    assert log_lines(logged) == []


def test_alloc_says_the_vfs_own_index_and_release_logs(logged):
    for n in range(4):
        assert logged.run("alloc", "--domain", f"vm{n}", "--uuid", f"{U1[:-1]}{n + 3}", "--pool", "enp1s0f0").code == 0
    res = logged.run("alloc", "--domain", "vm9", "--uuid", U1, "--pool", "enp1s0f0")
    # the fifth VF of the PF (pack policy), not the request's position 0
    assert res.out.startswith("0000:01:12.0 (VF 4 of 0000:01:00.0, pool enp1s0f0) leased to vm9"), res.out
    assert logged.run("release", "--uuid", U1).code == 0
    assert re.match(rf"^release: 0000:01:12\.0 \(enp1s0f0\) from vm9 \({U1}\) ", log_lines(logged)[-1])


def test_numvfs_logs_the_change(logged):
    kernel = FakeKernel(logged.fs)
    code, out, err = command(logged, kernel, "enp1s0f1", "3")
    assert code == 0, err
    assert re.match(r"^host numvfs: enp1s0f1 \(0000:01:00\.1\) 7 -> 3 VFs \[by ", log_lines(logged)[-1])


def test_gc_logs_each_lease_it_frees(lab, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("VFALLOC_HOOK_LOG", str(tmp_path / "gc.log"))
    assert lab.run("gc").code == 0
    lines = (tmp_path / "gc.log").read_text().splitlines()
    assert sorted(re.match(r"^gc: freed \S+ \(lan0\) from (vm\d) ", ln)[1] for ln in lines) == ["vm2", "vm3", "vm4"]
    assert all(by(ln) for ln in lines)
