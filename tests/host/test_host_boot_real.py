"""`vfalloc host kernel-args` on the boot files distributions really install (tests/data/boot,
SOURCES.md there says where each came from): add, run again (no change), remove; every other
byte of every file stays. /bin/sh, sourcing the grub files the way grub-mkconfig does, checks
what vfalloc reads and writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DATA = Path(__file__).parent.parent / "data" / "boot"
INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\n"

# (fixture, set-up named, file the arguments go into, arguments before)
HOSTS = [
    ("debian-12", "GRUB (Debian", "/etc/default/grub", ["quiet"]),
    ("ubuntu-22.04", "GRUB (Debian", "/etc/default/grub", ["quiet", "splash"]),
    ("ubuntu-24.04", "GRUB (Debian", "/etc/default/grub", ["quiet", "splash"]),
    ("ubuntu-24.04-cloud", "GRUB (Debian", "/etc/default/grub", ["console=tty1", "console=ttyS0"]),
    ("rhel-9", "GRUB with BLS entries", "/etc/default/grub",
     ["crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M", "resume=/dev/mapper/rhel-swap", "rd.lvm.lv=rhel/root",
      "rd.lvm.lv=rhel/swap"]),
    ("pve-8-zfs", "Proxmox VE proxmox-boot-tool", "/etc/default/grub",
     ["root=ZFS=rpool/ROOT/pve-1", "boot=zfs", "quiet"]),
    ("systemd-boot", "systemd-boot / kernel-install", "/etc/kernel/cmdline", ["root=ZFS=rpool/ROOT/pve-1", "boot=zfs"]),
]


def host_root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "target"
    if name == "systemd-boot":  # a host with /etc/kernel/cmdline only (the Proxmox installer's file)
        (root / "etc/kernel").mkdir(parents=True)
        shutil.copy(DATA / "pve-8-zfs/etc/kernel/cmdline", root / "etc/kernel/cmdline")
    else:
        shutil.copytree(DATA / name, root)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sh_cmdline(root: Path) -> list[str]:
    """GRUB_CMDLINE_LINUX and _DEFAULT as /bin/sh gets them sourcing /etc/default/grub and then
    grub.d/*.cfg (as grub-mkconfig does); /etc/kernel/cmdline's first line otherwise."""
    grub = root / "etc/default/grub"
    if not grub.exists():
        return (root / "etc/kernel/cmdline").read_text().split("\n")[0].split()
    files = [grub, *sorted((root / "etc/default/grub.d").glob("*.cfg"))]
    script = "".join(f'. "{f}"\n' for f in files) + 'echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"\n'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, cwd=root)
    return out.stdout.split()


def changed_lines(before: bytes, after: bytes) -> list[tuple[str, str]]:
    old, new = before.decode().split("\n"), after.decode().split("\n")
    assert len(old) == len(new), "a line was added or removed"
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


@pytest.fixture
def target(scratch, tmp_path, request):
    (scratch.proc / "cpuinfo").write_text(INTEL)
    (scratch.proc / "cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet\n")
    return scratch


@pytest.mark.parametrize("name, setup, edited, before_args", HOSTS, ids=[h[0] for h in HOSTS])
def test_kernel_args_add_again_remove_on_real_files(target, tmp_path, name, setup, edited, before_args):
    root = host_root(tmp_path, name)
    original = snapshot(root)
    assert sh_cmdline(root) == before_args

    res = target.run("host", "kernel-args", "--root", str(root))
    assert res.code == 0, res.err
    assert f"boot set-up: {setup}" in res.out
    after = snapshot(root)
    now = sh_cmdline(root)
    assert sorted(now) == sorted(before_args + ["intel_iommu=on", "iommu=pt"])
    assert [a for a in now if a in before_args] == before_args
    for rel in original:
        if after[rel] != original[rel]:
            for old, _new in changed_lines(original[rel], after[rel]):
                assert old.startswith(("GRUB_CMDLINE_LINUX=", "GRUB_CMDLINE_LINUX_DEFAULT=")) or rel == "etc/kernel/cmdline", \
                    f"{rel}: {old!r} changed"
    assert after[edited.lstrip("/")] != original[edited.lstrip("/")]
    if (root / "etc/kernel/cmdline").exists() and name != "systemd-boot":  # proxmox-boot-tool: both loaders' files
        assert (root / "etc/kernel/cmdline").read_text().split() == \
            ["root=ZFS=rpool/ROOT/pve-1", "boot=zfs", "intel_iommu=on", "iommu=pt"]

    again = target.run("host", "kernel-args", "--root", str(root))
    assert again.code == 0 and "nothing to change" in again.out
    assert snapshot(root) == after

    gone = target.run("host", "kernel-args", "--root", str(root), "--no-defaults",
                      "--remove", "intel_iommu=on", "--remove", "iommu=pt")
    assert gone.code == 0, gone.err
    assert snapshot(root) == original


@pytest.mark.parametrize("name", [h[0] for h in HOSTS])
def test_dry_run_shows_the_diff_and_writes_nothing(target, tmp_path, name):
    root = host_root(tmp_path, name)
    original = snapshot(root)
    res = target.run("host", "kernel-args", "--root", str(root), "--dry-run")
    assert res.code == 0, res.err
    assert snapshot(root) == original
    plus = [ln for ln in res.out.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert plus and all("intel_iommu=on iommu=pt" in ln for ln in plus)


@pytest.mark.parametrize("name, tool", [
    ("debian-12", "next: update-grub"),
    ("rhel-9", "next: grubby --update-kernel=ALL --args 'intel_iommu=on iommu=pt'"),
    ("pve-8-zfs", "next: proxmox-boot-tool refresh"),
    ("systemd-boot", "next: kernel-install add $(uname -r) /lib/modules/$(uname -r)/vmlinuz"),
], ids=["debian", "rhel", "proxmox", "systemd-boot"])
def test_next_step_names_the_setups_tool(target, tmp_path, name, tool):
    res = target.run("host", "kernel-args", "--root", str(host_root(tmp_path, name)))
    assert res.code == 0, res.err
    assert f"{tool} (or rerun with --update)" in res.out


def test_amd_iommu_off_is_taken_out_on_a_stock_file(target, tmp_path):
    (target.proc / "cpuinfo").write_text(AMD)
    root = host_root(tmp_path, "debian-12")
    grub = root / "etc/default/grub"
    grub.write_text(grub.read_text().replace('GRUB_CMDLINE_LINUX_DEFAULT="quiet"',
                                             'GRUB_CMDLINE_LINUX_DEFAULT="quiet amd_iommu=off"'))
    res = target.run("host", "kernel-args", "--root", str(root))
    assert res.code == 0, res.err
    assert "removed: amd_iommu=off" in res.out and "added: iommu=pt" in res.out
    assert sh_cmdline(root) == ["iommu=pt", "quiet"]


def test_a_command_line_value_vfalloc_cannot_evaluate_names_file_and_line(target, tmp_path):
    root = host_root(tmp_path, "rhel-9")
    grub = root / "etc/default/grub"
    text = grub.read_text() + 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX $(cat /etc/extra-args)"\n'
    grub.write_text(text)
    res = target.run("host", "kernel-args", "--root", str(root))
    assert res.code == 1
    assert res.err.count("\n") == 1
    assert "/etc/default/grub:9: uses $(...) command substitution" in res.err
    assert "edit GRUB_CMDLINE_LINUX there by hand" in res.err
    assert grub.read_text() == text


def test_every_fixture_file_says_where_it_came_from():
    sources = (DATA / "SOURCES.md").read_text()
    files = [str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and p.name != "SOURCES.md"]
    assert files
    assert [f for f in files if f"`{f}`" not in sources] == []
