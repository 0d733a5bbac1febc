"""`vfalloc host kernel-args` end to end through the command line, on a scratch root and /proc."""

from __future__ import annotations

import os

import pytest

GRUB = 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
CPUINFO = {"intel": "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n",
           "amd": "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n",
           "hygon": "processor\t: 0\nvendor_id\t: HygonGenuine\n",
           "arm": "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n"}


@pytest.fixture
def host(scratch):
    (scratch.proc / "cpuinfo").write_text(CPUINFO["intel"])
    (scratch.proc / "cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet\n")
    root = scratch.root / "target"
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text(GRUB)
    scratch.target = root
    return scratch


def grub_text(host) -> str:
    return (host.target / "etc/default/grub").read_text()


def run(host, *args):
    return host.run("host", "kernel-args", "--root", str(host.target), *args)


@pytest.mark.parametrize("cpu, line", [
    ("intel", 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"'),
    ("amd", 'GRUB_CMDLINE_LINUX="iommu=pt"'),
    ("hygon", 'GRUB_CMDLINE_LINUX="iommu=pt"'),
], ids=["intel", "amd", "hygon"])
def test_vendor_default(host, cpu, line):
    (host.proc / "cpuinfo").write_text(CPUINFO[cpu])
    res = run(host)
    assert res.code == 0, res.err
    assert grub_text(host) == GRUB.replace('GRUB_CMDLINE_LINUX=""', line)
    assert "amd_iommu=on" not in grub_text(host)


def test_output_shows_configured_running_and_next_step(host):
    res = run(host)
    lines = res.out.splitlines()
    assert lines.pop(0) == "boot set-up: GRUB (Debian, Ubuntu, Proxmox VE without proxmox-boot-tool)"
    assert lines[0] == f"configured ({host.target}/etc/default/grub:4): quiet"
    assert lines[1] == "running (/proc/cmdline): BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet"
    assert "added: intel_iommu=on iommu=pt" in lines
    assert "the running kernel lacks intel_iommu=on iommu=pt: reboot after regenerating" in lines


def test_second_run_changes_nothing(host):
    assert run(host).code == 0
    before = grub_text(host)
    mtime = os.stat(host.target / "etc/default/grub").st_mtime_ns
    res = run(host)
    assert res.code == 0
    assert "nothing to change" in res.out and "already configured: intel_iommu=on iommu=pt" in res.out
    assert grub_text(host) == before
    assert os.stat(host.target / "etc/default/grub").st_mtime_ns == mtime


def test_running_kernel_already_has_them(host):
    (host.proc / "cmdline").write_text("root=/dev/sda1 intel_iommu=on iommu=pt\n")
    (host.target / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n')
    res = run(host)
    assert res.code == 0
    assert "lacks" not in res.out and "next:" not in res.out


def test_dry_run_prints_a_diff_and_writes_nothing(host):
    res = run(host, "--dry-run", "--acs-override", "8086:1901", "--realloc")
    assert res.code == 0, res.err
    assert grub_text(host) == GRUB
    assert '-GRUB_CMDLINE_LINUX=""' in res.out
    assert '+GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt pcie_acs_override=id:8086:1901 pci=realloc"' in res.out
    assert "would add:" in res.out


def test_flags_add_acs_override_realloc_and_assign_busses(host):
    res = run(host, "--no-defaults", "--acs-override", "8086:1901", "--realloc", "--assign-busses",
              "--add", "vfio-pci.ids=8086:1520")
    assert res.code == 0, res.err
    assert 'GRUB_CMDLINE_LINUX="vfio-pci.ids=8086:1520 pcie_acs_override=id:8086:1901 pci=realloc pci=assign-busses"' in grub_text(host)
    assert "pci=assign-busses lets the kernel renumber buses" in res.err


def test_grub_d_file_is_edited_when_it_sets_the_value(host):
    dropin = host.target / "etc/default/grub.d"
    dropin.mkdir()
    (dropin / "50-cloudimg-settings.cfg").write_text('GRUB_CMDLINE_LINUX="console=ttyS0"\n')
    res = run(host)
    assert res.code == 0, res.err
    assert grub_text(host) == GRUB
    assert (dropin / "50-cloudimg-settings.cfg").read_text() == 'GRUB_CMDLINE_LINUX="console=ttyS0 intel_iommu=on iommu=pt"\n'
    assert "50-cloudimg-settings.cfg:1" in res.out


def test_file_mode_is_kept(host):
    os.chmod(host.target / "etc/default/grub", 0o600)
    assert run(host).code == 0
    assert os.stat(host.target / "etc/default/grub").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("args, code, message", [
    (["--add", "quiet;reboot"], 2, "has characters vfalloc will not write"),
    (["--add", "$(id)"], 2, "has characters"),
    (["--acs-override", "8086-1901"], 2, "is not a vendor:device id"),
    (["--update"], 2, "--update runs this host's boot loader tool"),
], ids=["shell-metachar", "command-subst", "bad-acs-id", "update-needs-real-root"])
def test_bad_input_is_one_line_and_changes_nothing(host, args, code, message):
    res = run(host, *args)
    assert res.code == code
    assert res.err.count("\n") == 1 and message in res.err
    assert grub_text(host) == GRUB


def test_unknown_cpu_vendor_without_add_is_refused(host):
    (host.proc / "cpuinfo").write_text(CPUINFO["arm"])
    res = run(host)
    assert res.code == 2 and "nothing to add" in res.err and "pass --add" in res.err
    assert grub_text(host) == GRUB


@pytest.mark.parametrize("text, message", [
    ('GRUB_CMDLINE_LINUX="$(cat /etc/kernel/cmdline)"\n', "$(...) command substitution"),
    ('GRUB_CMDLINE_LINUX="quiet\n', "unterminated"),
    ('OFF=intel_iommu=off\nGRUB_CMDLINE_LINUX="$OFF"\n', "set through a variable"),
], ids=["command-substitution", "unterminated", "undoing-via-variable"])
def test_grub_file_vfalloc_cannot_edit_safely(host, text, message):
    (host.target / "etc/default/grub").write_text(text)
    res = run(host)
    assert res.code == 1
    assert message in res.err and "edit GRUB_CMDLINE_LINUX there by hand" in res.err
    assert grub_text(host) == text


def test_no_grub_file(host):
    (host.target / "etc/default/grub").unlink()
    res = run(host)
    assert res.code == 1 and "no boot configuration under" in res.err and "/etc/kernel/cmdline" in res.err


def test_root_that_is_not_a_directory(host):
    res = host.run("host", "kernel-args", "--root", str(host.target / "nope"))
    assert res.code == 2 and "is not a directory" in res.err
