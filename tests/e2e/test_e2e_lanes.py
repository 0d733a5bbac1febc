"""The e2e rig's lanes (tests/e2e/rig.py, RigConfig.lanes; scenario.LANES): boots of one lane are
one VM rebooted on one disk, lanes are VMs of their own that run at the same time (one after
another when VFALLOC_E2E_LANES=apart). Run without booting the VM: the QEMU command lines, the
work dir, the step records, and the lanes run by real processes standing in for QEMU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import rig
import scenario

LANES = ((1, 2), (3,))


def config(tmp_path: Path, **overrides) -> rig.RigConfig:
    kernel = rig.Kernel("r", tmp_path / "vmlinuz", tmp_path / "modules")
    return rig.RigConfig(kernel=kernel, work_dir=tmp_path, lanes=LANES, disk_mib=1, **overrides)


def value_of(argv: list[str], flag: str, key: str) -> str:
    """The `key=` part of the argument after `flag` that has it (e.g. -drive file=...)."""
    for i, arg in enumerate(argv[:-1]):
        if arg == flag and f"{key}=" in argv[i + 1]:
            return argv[i + 1].split(f"{key}=", 1)[1].split(",", 1)[0]
    raise AssertionError(f"no {flag} with {key}= in {argv}")


@pytest.mark.parametrize("a, b, same", [(1, 2, True), (1, 3, False), (2, 3, False)],
                         ids=["reboot-same-vm", "other-vm", "other-vm-after-reboot"])
def test_boots_of_a_lane_share_the_disk_and_cache_other_lanes_have_their_own(tmp_path, a, b, same):
    c = config(tmp_path)
    argv_a, argv_b = rig.qemu_argv(c, a), rig.qemu_argv(c, b)
    assert (value_of(argv_a, "-drive", "file") == value_of(argv_b, "-drive", "file")) is same
    caches = [value_of(x, "-fsdev", "id=fscache,path") for x in (argv_a, argv_b)]
    assert (caches[0] == caches[1]) is same
    assert f"e2e.boot={a}" in argv_a[-1] and f"e2e.boot={b}" in argv_b[-1]
    assert argv_a[argv_a.index("-serial") + 1] != argv_b[argv_b.index("-serial") + 1]  # file:<console log>


@pytest.mark.parametrize("boot, cpus", [(1, 2), (2, 2), (3, 1)], ids=["first-vm", "first-vm-rebooted", "second-vm"])
def test_the_second_vm_gets_one_vcpu(tmp_path, boot, cpus):
    argv = rig.qemu_argv(config(tmp_path), boot)
    assert argv[argv.index("-smp") + 1] == str(cpus)


@pytest.mark.parametrize("given, first, other", [
    ("cache/given", "cache/given", "cache/given-3"), (None, "libvirt-cache", "libvirt-cache-3"),
], ids=["given", "in-the-work-dir"])
def test_the_first_lane_keeps_the_cache_it_is_given_the_others_one_beside_it(tmp_path, given, first, other):
    c = config(tmp_path, libvirt_cache=tmp_path / given if given else None)
    assert (c.cache_dir(1), c.cache_dir(2), c.cache_dir(3)) == (tmp_path / first, tmp_path / first, tmp_path / other)


def test_the_run_says_which_cache_it_starts_with(tmp_path):
    c = config(tmp_path / "work", libvirt_cache=tmp_path / "cache" / "qemu")
    (tmp_path / "cache" / "qemu" / "capabilities").mkdir(parents=True)
    (tmp_path / "cache" / "qemu" / "capabilities" / "x.xml").write_text("<qemuCaps/>")
    assert rig.describe_caches(c) == (f"e2e rig: libvirt capability cache: {tmp_path}/cache/qemu there (1 files), "
                                      f"{tmp_path}/cache/qemu-3 absent")


def test_the_work_dir_gets_one_blank_disk_per_lane(tmp_path):
    c = config(tmp_path)
    (tmp_path / "disk.img").write_bytes(b"an older run's")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "steps-1.jsonl").write_text("{}\n")
    rig.prepare_work_dir(c)
    assert sorted(p.name for p in tmp_path.glob("disk*.img")) == ["disk-1.img", "disk-3.img"]
    assert all(p.read_bytes() == bytes(1024 * 1024) for p in tmp_path.glob("disk*.img"))
    assert list((tmp_path / "results").iterdir()) == []
    assert c.cache_dir(1).is_dir() and c.cache_dir(3).is_dir()


def test_results_are_read_from_every_boots_records_and_a_torn_line_is_dropped(tmp_path):
    line = lambda step, ok: json.dumps({"step": step, "ok": ok, "seconds": 1.5, "boot": 0}) + "\n"  # noqa: E731
    (tmp_path / "steps-1.jsonl").write_text(line("a", True) + line("b", False))
    (tmp_path / "steps-3.jsonl").write_text(line("c", True) + '{"step": "d", "ok"')
    results = rig.read_results(tmp_path)
    assert {k: v.ok for k, v in results.items()} == {"a": True, "b": False, "c": True}


@pytest.mark.parametrize("boot, passed", [(1, set()), (2, {"a"}), (3, set())],
                         ids=["first-boot", "after-reboot", "other-vm"])
def test_a_boot_counts_only_what_passed_before_it_in_its_own_vm(tmp_path, boot, passed):
    (tmp_path / "steps-1.jsonl").write_text(json.dumps({"step": "a", "ok": True}) + "\n"
                                            + json.dumps({"step": "b", "ok": False}) + "\n")
    (tmp_path / "steps-3.jsonl").write_text(json.dumps({"step": "c", "ok": True}) + "\n")
    assert scenario.passed_before(tmp_path, boot) == passed


def test_the_scenarios_steps_need_only_steps_of_their_own_vm():
    boot_of = dict(scenario.step_boots())
    assert {b for _, b in scenario.step_boots()} == {b for lane in scenario.LANES for b in lane}
    for s in scenario.STEPS:
        assert all(boot_of[n] in scenario.lane_of(s.boot) for n in s.needs), s.name


def test_a_step_that_needs_a_step_of_another_vm_is_refused(monkeypatch):
    monkeypatch.setattr(scenario, "STEPS", list(scenario.STEPS))
    with pytest.raises(ValueError, match="needs \\['config'\\], which run in another VM"):
        scenario.step("late", needs=("config",), boot=3)(lambda ctx: None)


FAKE_QEMU = """#!/bin/sh
# Stands in for QEMU: notes its boot, then waits (bounded) for a boot of the other lane to have
# started too, which it can only see when the lanes run at the same time.
case "$*" in *e2e.boot=1*) me=1 other=3 ;; *e2e.boot=2*) me=2 other=3 ;; *e2e.boot=3*) me=3 other=1 ;; esac
echo "$me" >> "$NOTES/started"
echo "$me $(nice)" >> "$NOTES/nice"
n=0
while ! grep -qx "$other" "$NOTES/started"; do
    n=$((n + 1)); [ "$n" -lt 600 ] || exit 1
    sleep 0.1
done
echo "$me" >> "$NOTES/ended"
"""


def test_the_lanes_run_at_the_same_time_and_a_lanes_boots_one_after_another(tmp_path, monkeypatch):
    """Lanes overlap, a lane's boots follow each other, and the second VM runs at the priority
    of the first (side_nice)."""
    fake = tmp_path / "qemu"
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    monkeypatch.setenv("NOTES", str(tmp_path))
    monkeypatch.setattr(rig, "QEMU", str(fake))
    monkeypatch.setattr(rig, "find_busybox", lambda: Path("/bin/true"))
    monkeypatch.setattr(rig, "build_initramfs", lambda config, busybox: None)
    lines: list[str] = []
    run = rig.run_rig(config(tmp_path / "work", timeout_s=600, together=True), on_line=lines.append)
    assert [(b.number, b.ok) for b in run.boots] == [(1, True), (2, True), (3, True)], run.describe_boot()
    ended = (tmp_path / "ended").read_text().split()
    assert ended.index("1") < ended.index("2")  # boot 2 only after boot 1, on its disk
    base = int(subprocess.run(["nice"], capture_output=True, text=True, check=True).stdout)
    niceness = dict(line.split() for line in (tmp_path / "nice").read_text().splitlines())
    assert niceness == {"1": str(base), "2": str(base), "3": str(min(base + rig.RigConfig.side_nice, 19))}
    assert sorted(line for line in lines if line.startswith("e2e rig: boot")) == [
        "e2e rig: boot 1 of 3", "e2e rig: boot 2 of 3", "e2e rig: boot 3 of 3"]


STAT = "cpu  {busy} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


@pytest.mark.parametrize("busy, idle, iowait, free", [
    (0, 200, 0, 2.0), (100, 100, 0, 1.0), (200, 0, 0, 0.0), (100, 50, 50, 1.0),
], ids=["idle", "one-core-busy", "all-busy", "iowait-is-free"])
def test_the_free_cpus_are_the_idle_share_of_the_time_that_passed(busy, idle, iowait, free):
    before = STAT.format(busy=1000, idle=5000, iowait=10)
    after = STAT.format(busy=1000 + busy, idle=5000 + idle, iowait=10 + iowait)
    assert rig.free_between(before, after, cpus=2) == pytest.approx(free)


def test_the_free_cpus_of_this_machine_are_between_none_and_all():
    assert 0 <= rig.free_cpus(0.2) <= (os.cpu_count() or 1) + 0.01


APART_QEMU = r"""#!/bin/sh
# Stands in for QEMU: notes its boot, its vCPUs and niceness, and fails when another boot is
# running at the same moment (a file per running boot).
case "$*" in *e2e.boot=1*) me=1 ;; *e2e.boot=2*) me=2 ;; *e2e.boot=3*) me=3 ;; esac
smp=$(echo "$*" | sed -n 's/.*-smp \([0-9]*\).*/\1/p')
echo "$me $smp $(nice)" >> "$NOTES/boots"
ls "$NOTES/running" | grep -q . && exit 1
touch "$NOTES/running/$me"
sleep 0.3
ls "$NOTES/running" | grep -qvx "$me" && exit 1
rm "$NOTES/running/$me"
"""


@pytest.mark.parametrize("free, wanted, together", [
    (0.3, "", True), (2.0, "together", True), (2.0, "apart", False), (0.3, "apart", False),
], ids=["busy-machine", "together-asked", "apart-asked", "apart-busy"])
def test_the_lanes_run_as_asked_and_the_run_says_how_and_what_was_free(tmp_path, monkeypatch, free, wanted,
                                                                       together):
    """At the same time unless VFALLOC_E2E_LANES=apart, whatever the free CPUs; apart, every VM
    gets all the vCPUs and no lower priority."""
    monkeypatch.setenv("VFALLOC_E2E_LANES", wanted)
    fake = tmp_path / "qemu"
    fake.write_text(APART_QEMU)
    fake.chmod(0o755)
    (tmp_path / "running").mkdir()
    monkeypatch.setenv("NOTES", str(tmp_path))
    monkeypatch.setattr(rig, "QEMU", str(fake))
    monkeypatch.setattr(rig, "find_busybox", lambda: Path("/bin/true"))
    monkeypatch.setattr(rig, "build_initramfs", lambda config, busybox: None)
    monkeypatch.setattr(rig, "free_cpus", lambda seconds=2.0: free)
    lines: list[str] = []
    run = rig.run_rig(config(tmp_path / "work", timeout_s=600), on_line=lines.append)
    assert run.config.together is together
    how = "at the same time" if together else "one after another"
    assert f"e2e rig: {free:.1f} of {os.cpu_count()} CPUs free at the start; the 2 VMs run {how}" in lines
    if not together:
        assert [b.ok for b in run.boots] == [True, True, True], run.describe_boot()
        base = subprocess.run(["nice"], capture_output=True, text=True, check=True).stdout.strip()
        assert (tmp_path / "boots").read_text().split("\n")[:-1] == [f"1 2 {base}", f"2 2 {base}", f"3 2 {base}"]
        assert "lanes one after another" in rig.format_results(run, [])


def test_a_wrong_lanes_setting_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("VFALLOC_E2E_LANES", "both")
    monkeypatch.setattr(rig, "find_busybox", lambda: Path("/bin/true"))
    monkeypatch.setattr(rig, "free_cpus", lambda seconds=2.0: 2.0)
    with pytest.raises(RuntimeError, match="VFALLOC_E2E_LANES=both: say together or apart \\(unset: together\\)"):
        rig.run_rig(config(tmp_path / "work"))
