"""Every fix `vfalloc host check` prints works: for each warn/fail, the host is broken that way,
the printed fix is run as printed on the scratch root, and `host check` then passes that line.

Commands of vfalloc run through main() with the scratch host's flags (and --root / --hooks-dir
pointing at the scratch root); `chmod` and `systemctl --root` run for real. The boot loader's
tool and the reboot are played by `boot()`: the next kernel gets the command line /bin/sh reads
from the grub files (as grub-mkconfig sources them), or /etc/kernel/cmdline's first line."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
from test_host_check import DATA, build, check, lines

TOOLS = {"update-grub", "grubby", "proxmox-boot-tool", "kernel-install", "grub-mkconfig", "grub2-mkconfig"}


def boot(scratch) -> None:
    """Regenerate and reboot: /proc/cmdline becomes what the boot files say."""
    root = scratch.target
    grub = root / "etc/default/grub"
    if (root / "etc/kernel/cmdline").exists() and (not grub.exists() or (root / "etc/kernel/proxmox-boot-uuids").exists()):
        args = (root / "etc/kernel/cmdline").read_text().split("\n")[0]
    else:
        files = [grub, *sorted((root / "etc/default/grub.d").glob("*.cfg"))]
        script = "".join(f'. "{f}"\n' for f in files) + 'echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"'
        args = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    (scratch.proc / "cmdline").write_text(f"BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 {' '.join(args.split())}\n")


def apply_fix(scratch, fix: str) -> None:
    """Run each `command` of the fix in order; `reboot` (a bare step) boots the new config."""
    regenerated = False
    for step in fix.split("; "):
        commands = re.findall(r"`([^`]+)`", step)
        if not commands and step.strip() == "reboot":
            assert regenerated, f"the fix reboots without regenerating the boot config: {fix}"
            boot(scratch)
        for command in commands:
            argv = shlex.split(command)
            if argv[0] == "vfalloc":
                run_vfalloc(scratch, argv[1:])
            elif argv[0] in TOOLS:
                regenerated = True
                if argv[0] == "grubby":  # each option's value is one word: the arguments, quoted
                    assert argv[1] == "--update-kernel=ALL" and argv[2] in ("--args", "--remove-args"), argv
                    assert all(not a.startswith("-") or a in ("--args", "--remove-args") for a in argv[2:]), argv
                    assert len(argv) in (4, 6), argv
            elif argv[0] == "chmod":
                subprocess.run(argv, check=True)
            else:
                raise AssertionError(f"the test cannot run {command!r} from {fix!r}")


def run_vfalloc(scratch, argv: list[str]) -> None:
    if argv[0] == "host":
        argv = [*argv[:2], "--root", str(scratch.target), *argv[2:]]
    elif argv[0] == "install-hook":
        argv = [*argv, "--hooks-dir", str(scratch.target / "etc/libvirt/hooks")]
    res = scratch.run(*argv)
    assert res.code == 0, f"vfalloc {' '.join(argv)}: {res.err}"


def swap_grub(scratch, old: str, new: str) -> None:
    grub = scratch.target / "etc/default/grub"
    grub.write_text(grub.read_text().replace(old, new))


def use_fixture(scratch, name: str, extra: str = "") -> None:
    shutil.rmtree(scratch.target / "etc/default")
    shutil.copytree(DATA / "boot" / name / "etc", scratch.target / "etc", dirs_exist_ok=True)


# (id, how the host is broken, check name, expected status)
BROKEN = [
    ("intel-iommu-missing", dict(cmdline="root=/dev/sda1 iommu=pt", grub=('intel_iommu=on iommu=pt', 'iommu=pt')),
     "kernel-args", "warn"),
    ("intel-iommu-off", dict(cmdline="root=/dev/sda1 intel_iommu=off iommu=pt",
                             grub=('intel_iommu=on iommu=pt', 'intel_iommu=off iommu=pt')), "kernel-args", "fail"),
    ("amd-iommu-off", dict(cpu="AuthenticAMD", cmdline="root=/dev/sda1 amd_iommu=off iommu=pt",
                           grub=('GRUB_CMDLINE_LINUX_DEFAULT="quiet"', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet amd_iommu=off"')),
     "kernel-args", "fail"),
    ("no-iommu-pt", dict(cmdline="root=/dev/sda1 intel_iommu=on", grub=('intel_iommu=on iommu=pt', 'intel_iommu=on')),
     "iommu-pt", "warn"),
    ("boot-config-lacks-args", dict(grub=('intel_iommu=on iommu=pt', '')), "boot", "warn"),
    ("boot-config-amd-off", dict(cpu="AuthenticAMD", cmdline="root=/dev/sda1 iommu=pt",
                                 grub=('GRUB_CMDLINE_LINUX_DEFAULT="quiet"', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet amd_iommu=off"')),
     "boot", "warn"),
    ("rhel-9-bls", dict(fixture="rhel-9"), "boot", "warn"),
    ("proxmox-zfs", dict(fixture="pve-8-zfs"), "boot", "warn"),
    ("ubuntu-cloud", dict(fixture="ubuntu-24.04-cloud"), "boot", "warn"),
    ("hook-not-executable", dict(hook_mode=0o644), "hook", "fail"),
    ("hook-missing", dict(hook_mode=None), "hook", "fail"),
    ("persist-not-enabled", dict(unlink="etc/systemd/system/multi-user.target.wants/vfalloc-numvfs.service"),
     "persist", "warn"),
    ("persist-missing", dict(remove_unit=True), "persist", "warn"),
    ("persist-other-count", dict(unit_count=5), "persist", "warn"),
]


def breakit(scratch, *, cpu="GenuineIntel", cmdline="root=/dev/sda1 intel_iommu=on iommu=pt", grub=None,
            fixture=None, hook_mode=0o755, unlink=None, remove_unit=False, unit_count=None):
    build(scratch, cpu=cpu, cmdline=cmdline)
    if grub:
        swap_grub(scratch, *grub)
    if fixture:
        use_fixture(scratch, fixture)
    hook = scratch.target / "etc/libvirt/hooks/qemu.d/vfalloc"
    if hook_mode is None:
        hook.unlink()
    else:
        hook.chmod(hook_mode)
    unit = scratch.target / "etc/systemd/system/vfalloc-numvfs.service"
    if unlink:
        (scratch.target / unlink).unlink()
    if remove_unit:
        (scratch.target / "etc/systemd/system/multi-user.target.wants/vfalloc-numvfs.service").unlink()
        unit.unlink()
    if unit_count:
        unit.write_text(unit.read_text().replace(" 2\n", f" {unit_count}\n"))


@pytest.mark.parametrize("broken, name, status", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_the_printed_fix_makes_the_line_pass(scratch, broken, name, status):
    breakit(scratch, **broken)
    before = check(scratch)
    bad = lines(before, status, name)
    assert bad, before.out
    for ln in bad:
        fix = ln.split("; fix: ", 1)[1]
        apply_fix(scratch, fix)
    after = check(scratch)
    assert lines(after, name=name) == lines(after, "ok", name), after.out


# Fixes that act on the firmware or the running kernel: a scratch root has neither, so they are
# listed here with the reason, and each is asserted to be printed as it stands.
NOT_ON_A_SCRATCH_ROOT = {
    "iommu": "switching VT-d/AMD-Vi on in the firmware",
    "vfio-pci": "modprobe loads a module into the running kernel",
    "sr-iov": "the kernel creates the VFs on a write to sriov_numvfs (tests/e2e runs `vfalloc host numvfs`)",
    "link": "ip link acts on the running kernel",
    "vf-driver": "the kernel re-creates VFs unbound (tests/e2e)",
    "isolation": "needs a kernel with the ACS override patch",
    "owners": "another tool's file is the admin's to edit",
    "fdb": "`vfalloc fdb sync` changes the running kernel's forwarding tables (tests/fdb/test_fdb_cli.py runs it "
           "against a fake bridge command, tests/e2e/steps_fdb.py against the real one, each then checked)",
}


def test_fixes_not_runnable_here_are_the_ones_listed():
    import inspect

    from vfalloc.host import check as doctor

    names = set(re.findall(r'Check\((?:WARN|FAIL|status|FAIL if clash else WARN|WARN if [^,]+), "([a-z-]+)"',
                           inspect.getsource(doctor)))
    tested = {b[2] for b in BROKEN}
    assert names - tested - {"config"} == set(NOT_ON_A_SCRATCH_ROOT)
