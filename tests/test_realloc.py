"""`vfalloc alloc` for a domain that already holds a lease for the request position: a
reservation of a domain that does not run is replaced (one warning line on stderr, one log line),
a lease that may be in use is refused with the table left byte for byte, a second position keeps
both. On a fake I350, through main(argv) and the real executable; who runs is judged as `vfalloc
gc` judges it: libvirt (unreachable here), else libvirt's status directory (NAME.xml, NAME.pid)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from conftest import Result
from fakehost import i350
from test_cli_core import VFALLOC, uuid
from test_stale import status

U1 = uuid(1)
FIRST = ["alloc", "--domain", "vm1", "--uuid", U1, "--pool", "enp1s0f0"]  # 0000:01:10.0, VF 0 of enp1s0f0
WARNING = re.compile(rf"^vfalloc: warning: replaced the reservation of vm1 \({U1}\) for request 0: "
                     r"0000:01:10\.0 \(pool enp1s0f0, mac [0-9a-f:]{17}\) given back, "
                     r"0000:01:10\.1 \(pool enp1s0f1, mac [0-9a-f:]{17}\) instead")


@pytest.fixture
def host(scratch, tmp_path, monkeypatch):
    """A fake I350; libvirt unreachable, its status directory empty (no domain runs), a log file."""
    i350(scratch.fs)
    scratch.rundir = tmp_path / "run-qemu"
    scratch.rundir.mkdir()
    scratch.log = tmp_path / "vfalloc.log"
    scratch.extra_env = {"VFALLOC_LIBVIRT_RUN": str(scratch.rundir), "VFALLOC_HOOK_LOG": str(scratch.log),
                         "LIBVIRT_DEFAULT_URI": "qemu:///system?socket=/nonexistent/libvirt-sock"}
    for key, value in scratch.extra_env.items():
        monkeypatch.setenv(key, value)
    return scratch


def in_process(h, argv) -> Result:
    return h.run(*argv)


def executable(h, argv) -> Result:
    done = subprocess.run([VFALLOC, *argv], env=h.env() | h.extra_env, capture_output=True, text=True, timeout=60)
    return Result(done.returncode, done.stdout, done.stderr)


def set_phase(h, phase: str) -> None:
    table = json.loads(h.state.read_text())
    table["leases"][0]["phase"] = phase
    h.state.write_text(json.dumps(table, indent=1))


def vm1_runs(h) -> None:
    status(h.rundir, "vm1", 1, os.getpid())  # the test's own PID: alive


def no_status_directory(h) -> None:
    h.rundir.rmdir()


def leases(h) -> list[tuple[str, int, str, str]]:
    return [(x["vf"], x["index"], x["pool"], x["phase"]) for x in json.loads(h.state.read_text())["leases"]]


def log_lines(h) -> list[str]:
    return h.log.read_text().splitlines() if h.log.exists() else []


REFUSED_ATTACHED = rf"^vfalloc: vm1 holds VF 0000:01:10\.0 for request 0 \(attached\); .*`vfalloc release --uuid {U1}` first"

# (id, what happens to vm1's reservation before the second alloc, the second alloc's extra flags,
#  the leases after it or None for "the table unchanged byte for byte", the pattern of stderr)
CASES = [
    ("reserved-replaced", None, ["--pool", "enp1s0f1"],
     [("0000:01:10.1", 0, "enp1s0f1", "reserved")], WARNING.pattern + "\n$"),
    ("reserved-replaced-running-unknown", no_status_directory, ["--pool", "enp1s0f1"],
     [("0000:01:10.1", 0, "enp1s0f1", "reserved")], WARNING.pattern + r"; whether vm1 runs is unknown \(cannot "
     r"connect to libvirt at .*; and .*run-qemu does not exist\)\n$"),
    ("attached-refused", lambda h: set_phase(h, "attached"), ["--pool", "enp1s0f1"], None, REFUSED_ATTACHED),
    ("attached-same-pool-refused", lambda h: set_phase(h, "attached"), ["--pool", "enp1s0f0"], None,
     REFUSED_ATTACHED),
    ("pending-attach-refused", lambda h: set_phase(h, "pending-attach"), ["--pool", "enp1s0f1"], None,
     r"^vfalloc: vm1 holds VF 0000:01:10\.0 for request 0 \(pending-attach\); "),
    ("domain-runs-refused", vm1_runs, ["--pool", "enp1s0f1"], None,
     r"^vfalloc: vm1 holds VF 0000:01:10\.0 for request 0 \(reserved, and vm1 runs: libvirt's status files "
     r"in .*run-qemu\); .* or give --index 1 for a second VF\n$"),
]


@pytest.mark.parametrize("run", [in_process, executable], ids=["main", "executable"])
@pytest.mark.parametrize("before, flags, after, err", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_alloc_again_for_the_same_position(host, run, before, flags, after, err):
    assert run(host, FIRST).code == 0
    if before is not None:
        before(host)
    table, logged = host.state.read_bytes(), log_lines(host)
    r = run(host, [*FIRST[:-2], *flags])
    assert re.search(err, r.err), r.err
    assert r.err.count("\n") == 1, r.err
    if after is None:  # refused
        assert (r.code, r.out) == (1, "")
        assert host.state.read_bytes() == table
        assert log_lines(host) == logged
    else:
        assert r.code == 0 and r.out.startswith("0000:01:10.1 (VF 0 of 0000:01:00.1, pool enp1s0f1) leased to vm1")
        assert leases(host) == after
        new = log_lines(host)[len(logged):]
        assert len(new) == 2, new
        assert new[0].startswith("alloc: " + r.err[len("vfalloc: warning: "):-1] + " [by ")
        assert new[1].startswith("alloc: 0000:01:10.1 (VF 0 of 0000:01:00.1, pool enp1s0f1) leased to vm1 ")


@pytest.mark.parametrize("run", [in_process, executable], ids=["main", "executable"])
def test_the_refusal_names_the_index_of_a_second_vf_and_both_are_kept(host, run):
    """vm1's guest runs with its VF attached: asking again is refused and names --index 1; with
    it, vm1 holds both VFs, and nothing is said on stderr."""
    assert run(host, FIRST).code == 0
    set_phase(host, "attached")
    vm1_runs(host)
    refused = run(host, [*FIRST[:-1], "enp1s0f1"])
    assert refused.code == 1
    index = re.search(r"give --index (\d+) for a second VF", refused.err)
    assert index, refused.err
    r = run(host, [*FIRST[:-1], "enp1s0f1", "--index", index[1]])
    assert (r.code, r.err) == (0, ""), r.err
    assert r.out.startswith("0000:01:10.1 (VF 0 of 0000:01:00.1, pool enp1s0f1) leased to vm1 as request 1")
    assert leases(host) == [("0000:01:10.0", 0, "enp1s0f0", "attached"), ("0000:01:10.1", 1, "enp1s0f1", "reserved")]



def test_a_lease_of_an_earlier_boot_taken_over_is_said_and_logged(host):
    """With every VF of the pool leased, alloc takes over the one leased in an earlier boot: that
    lease goes, so it is said on stderr and logged too."""
    host.set_boot_id("99999999-2222-3333-4444-555555555555")
    assert host.run("alloc", "--domain", "old", "--uuid", uuid(9), "--pool", "enp1s0f0").code == 0
    host.set_boot_id("11111111-2222-3333-4444-555555555555")
    for n in range(2, 8):
        assert host.run("alloc", "--domain", f"vm{n}", "--uuid", uuid(n), "--pool", "enp1s0f0").code == 0
    r = host.run(*FIRST)
    assert r.code == 0 and r.out.startswith("0000:01:10.0 (VF 0 of 0000:01:00.0, pool enp1s0f0) leased to vm1"), r.err
    said = f"took over 0000:01:10.0 (enp1s0f0) from old ({uuid(9)}): its lease was taken in an earlier boot"
    assert r.err == f"vfalloc: warning: {said}\n"
    assert log_lines(host)[-2].startswith(f"alloc: {said} [by ")
