"""Stale leases: the verdicts (table-driven), libvirt's status directory as the hook reads it,
`vfalloc gc` / `vfalloc list` on a fake host, and the hook's gc at `reconnect begin` without
libvirt. The same against a real daemon restart is in test_virt_libvirtd.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import REPO
from fakehost import i350
from hookfiles import hook_file

import vfalloc.hook
from vfalloc.model import Lease, LeaseTable
from vfalloc.stale import NOT_RUNNING, RUNDIR_GRACE, Observed, Running, collect, find_stale, from_rundir

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
BOOT = "11111111-2222-3333-4444-555555555555"
NS = "urn:vfalloc:1"


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def lease(n: int = 1, **kw) -> Lease:
    base = dict(vf="0000:01:10.0", pf="0000:01:00.0", pool="lan0", domain=f"vm{n}", uuid=uuid(n), index=0,
                mac=None, vlan=None, since=(NOW - timedelta(hours=1)).isoformat(), boot_id=BOOT, phase="attached")
    return Lease(**(base | kw))


LIBVIRT = Running(frozenset({uuid(1)}), "libvirt at test")
RUNDIR = Running(frozenset({uuid(1)}), "status files", frozenset({"vm7"}), RUNDIR_GRACE)


@pytest.mark.parametrize("item,running,reason", [
    (lease(1), LIBVIRT, None),
    (lease(1, boot_id="other"), LIBVIRT, "taken in an earlier boot"),
    (lease(1, vf="0000:01:1f.0"), LIBVIRT, "its VF no longer exists"),
    (lease(2), LIBVIRT, NOT_RUNNING),
    (lease(2, phase="pending-attach"), LIBVIRT, NOT_RUNNING),
    (lease(2, phase="reserved"), LIBVIRT, None),
    (lease(2), None, None),
    (lease(2, boot_id="other"), None, "taken in an earlier boot"),
    (lease(2, since=(NOW - timedelta(seconds=10)).isoformat(), phase="pending-attach"), RUNDIR, None),
    (lease(2, since=(NOW - timedelta(seconds=10)).isoformat()), LIBVIRT, NOT_RUNNING),
    (lease(2), RUNDIR, NOT_RUNNING),
    (lease(7), RUNDIR, None),
    (lease(2, since="garbage"), RUNDIR, NOT_RUNNING),
], ids=["running", "earlier-boot", "vf-gone", "not-running", "pending-not-running", "reserved-exempt",
        "running-unknown", "earlier-boot-running-unknown", "young-lease-from-status-files",
        "young-lease-from-libvirt", "old-lease-from-status-files", "status-file-unreadable", "bad-since"])
def test_verdicts(item, running, reason):
    found = find_stale(LeaseTable((item,)), {"0000:01:10.0": object()}, BOOT, running, NOW)
    assert found == ([(item, reason)] if reason else [])


# -- libvirt's status directory --

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def status(rundir, name: str, n: int, pid: int | str | None, xml: str | None = None) -> None:
    rundir.mkdir(parents=True, exist_ok=True)
    body = xml if xml is not None else (
        f"<domstatus state='running' reason='booted' pid='{pid}'><taint flag='custom-monitor'/>"
        f"<domain type='qemu' id='3'><name>{name}</name><uuid>{uuid(n)}</uuid>"
        f"<metadata><vfalloc:vfs xmlns:vfalloc='{NS}'><vfalloc:vf pool='lan0'/></vfalloc:vfs></metadata>"
        f"</domain></domstatus>")
    (rundir / f"{name}.xml").write_text(body)
    if pid is not None:
        (rundir / f"{name}.pid").write_text(str(pid))


@pytest.mark.parametrize("pid,xml,expect", [
    (os.getpid(), None, "running"),
    (None, None, "stopped"),
    ("dead", None, "stopped"),
    ("", None, "running"),
    (os.getpid(), "<domstatus><domain><name>vm1</name>", "unsure"),
], ids=["alive", "no-pid-file", "dead-pid", "pid-file-being-written", "unreadable-status"])
def test_status_directory(tmp_path, pid, xml, expect):
    rundir = tmp_path / "qemu"
    status(rundir, "vm1", 1, _dead_pid() if pid == "dead" else pid, xml)
    (rundir / "driver.pid").write_text("1\n")  # libvirtd's own files are not domains
    (rundir / "autostarted").write_text("")
    seen = from_rundir(rundir)
    assert (uuid(1) in seen.uuids, "vm1" in seen.unsure) == {"running": (True, False), "stopped": (False, False),
                                                             "unsure": (False, True)}[expect]
    assert seen.grace == RUNDIR_GRACE and str(rundir) in seen.source


def test_status_directory_missing_means_unknown(tmp_path):
    assert from_rundir(tmp_path / "nope") is None


def test_status_directory_reads_only_the_names_asked_for(tmp_path):
    rundir = tmp_path / "qemu"
    status(rundir, "vm1", 1, os.getpid())
    status(rundir, "vm2", 2, os.getpid(), "not xml at all")
    assert from_rundir(rundir, {"vm1", "vm9"}) == Running(frozenset({uuid(1)}), f"libvirt's status files in {rundir}",
                                                          frozenset(), RUNDIR_GRACE)


# -- vfalloc gc / list on a fake host --

@pytest.fixture
def lab(scratch, tmp_path, monkeypatch):
    """vm1 runs (status files), vm2 does not; vm3's lease is from an earlier boot; vm4's VF is
    gone; vm5 holds a lease reserved by hand. libvirt itself is unreachable."""
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0", "enp1s0f1"]\n')
    rundir = tmp_path / "run-qemu"
    status(rundir, "vm1", 1, os.getpid())
    monkeypatch.setenv("VFALLOC_LIBVIRT_RUN", str(rundir))
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///system?socket=/nonexistent/libvirt-sock")
    env = scratch.env() | {"VFALLOC_LIBVIRT_RUN": str(rundir)}
    for n in (1, 2, 3, 4):
        xml = (f"<domain type='qemu'><name>vm{n}</name><uuid>{uuid(n)}</uuid><metadata><vfalloc:vfs xmlns:vfalloc='{NS}'>"
               f"<vfalloc:vf pool='lan0'/></vfalloc:vfs></metadata></domain>")
        assert vfalloc.hook.main([f"vm{n}", "prepare", "begin", "-"], stdin=io.BytesIO(xml.encode()), out=io.StringIO(),
                                 err=io.StringIO(), environ=env) == 0
    assert scratch.run("alloc", "--domain", "vm5", "--uuid", uuid(5), "--pool", "lan0").code == 0
    table = json.loads(scratch.state.read_text())
    for item in table["leases"]:
        item["since"] = "2026-01-01T00:00:00+00:00"  # older than the status-file grace
        if item["domain"] == "vm3":
            item["boot_id"] = "99999999-0000-0000-0000-000000000000"
    scratch.state.write_text(json.dumps(table))
    gone = next(x for x in table["leases"] if x["domain"] == "vm4")["vf"]
    (scratch.sysfs / "bus" / "pci" / "devices" / "0000:01:00.0" / "virtfn3").unlink()
    assert gone == "0000:01:11.4"  # pack policy: vm1..vm4 hold VFs 0..3 of enp1s0f0
    scratch.rundir = rundir
    return scratch


EXPECTED = {"vm2": NOT_RUNNING, "vm3": "taken in an earlier boot", "vm4": "its VF no longer exists"}


def test_list_shows_what_gc_would_free_and_changes_nothing(lab):
    before = lab.state.read_bytes()
    rows = json.loads(lab.run("list", "--json").out)
    verdicts = {r["domain"]: (r["state"], r["reason"]) for r in rows if r["domain"]}
    assert verdicts == {"vm1": ("leased", None), "vm2": ("stale", NOT_RUNNING),
                        "vm3": ("stale", "taken in an earlier boot"), "vm4": ("stale", "its VF no longer exists"),
                        "vm5": ("leased", None)}
    text = lab.run("list").out
    assert f"leased to vm2: {NOT_RUNNING} (free it with `vfalloc gc`)" in text
    pools = json.loads(lab.run("pools", "--json").out)
    assert pools[0]["stale"] == 3 and pools[0]["leased"] == 2
    assert lab.state.read_bytes() == before


def test_gc_frees_each_stale_lease_and_reports_it(lab):
    before = lab.state.read_bytes()
    r = lab.run("gc", "--dry-run")
    assert r.code == 0 and r.out.count("would free ") == 3 and lab.state.read_bytes() == before
    r = lab.run("gc")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    freed = {line.split()[3]: line.split(": ", 1)[1] for line in lines if line.startswith("freed ")}
    assert freed == EXPECTED
    assert lines[-1].startswith(f"running domains from libvirt's status files in {lab.rundir} "
                                "(libvirt did not answer: cannot connect to libvirt at qemu:///system?socket=")
    assert sorted(x["domain"] for x in json.loads(lab.state.read_text())["leases"]) == ["vm1", "vm5"]
    r = lab.run("gc")
    assert r.out.splitlines()[-1] == "no stale leases"


def test_gc_without_libvirt_or_status_directory_judges_only_boot_and_vfs(lab, monkeypatch):
    monkeypatch.setenv("VFALLOC_LIBVIRT_RUN", str(lab.rundir.parent / "nowhere"))
    r = lab.run("gc")
    freed = {line.split()[3] for line in r.out.splitlines() if line.startswith("freed ")}
    assert freed == {"vm3", "vm4"}
    assert "running domains unknown (cannot connect to libvirt" in r.out
    assert "only earlier-boot leases and vanished VFs were judged" in r.out


def test_gc_asks_libvirt_first(lab):
    pytest.importorskip("libvirt")
    import libvirt

    hold = libvirt.open("test:///default")  # the test driver runs one domain, "test"
    try:
        running = hold.lookupByName("test").UUIDString()
        table = json.loads(lab.state.read_text())
        next(x for x in table["leases"] if x["domain"] == "vm2")["uuid"] = running
        lab.state.write_text(json.dumps(table))
        r = lab.run("gc", "--connect", "test:///default")
    finally:
        hold.close()
    freed = {line.split()[3] for line in r.out.splitlines() if line.startswith("freed ")}
    assert freed == {"vm1", "vm3", "vm4"}  # vm1's status files do not count when libvirt answers
    assert r.out.splitlines()[-1] == "running domains from libvirt at test:///default"


def test_a_lease_changed_while_libvirt_was_asked_is_kept(lab):
    """gc reads the table, asks who runs (without the lock), then frees only leases still as read."""
    from vfalloc.cli import make_context

    class Args:
        config, sysfs_root, state, proc_root = str(lab.config), str(lab.sysfs), str(lab.state), str(lab.proc)

    ctx = make_context(Args, io.StringIO(), io.StringIO())

    def observe(table):
        with ctx.store.transaction() as txn:  # vm2 starts again meanwhile: its lease is renewed
            old = next(x for x in txn.table.leases if x.domain == "vm2")
            txn.table = txn.table.replaced(old, Lease(**(old.to_json() | {"since": "2026-11-26T12:00:00+00:00"})))
        return Observed(from_rundir(lab.rundir))

    report = collect(ctx, observe)
    assert sorted(x.domain for x, _ in report.stale) == ["vm3", "vm4"]
    assert sorted(x["domain"] for x in json.loads(lab.state.read_text())["leases"]) == ["vm1", "vm2", "vm5"]


def test_a_pinned_vf_claimed_again_while_gc_judges_is_kept(lab):
    """vm2, whose lease was left behind when it died, starts again with its VF pinned in its XML just
    after gc read the table (an autostart beside a daemon restart's `reconnect begin`): the
    claim renews the lease, so gc, which frees only leases still exactly as read, keeps it."""
    from vfalloc.cli import make_context

    class Args:
        config, sysfs_root, state, proc_root = str(lab.config), str(lab.sysfs), str(lab.state), str(lab.proc)

    ctx = make_context(Args, io.StringIO(), io.StringIO())
    table = json.loads(lab.state.read_text())
    (left,) = [x for x in table["leases"] if x["domain"] == "vm2"]
    left["phase"] = "attached"  # it ran with the VF, and died while libvirtd was down: no release
    lab.state.write_text(json.dumps(table))
    vf = left["vf"]
    dom, bus, rest = vf.split(":")
    slot, fn = rest.split(".")
    xml = (f"<domain type='qemu'><name>vm2</name><uuid>{uuid(2)}</uuid><metadata><vfalloc:vfs xmlns:vfalloc='{NS}'>"
           f"<vfalloc:vf pool='lan0'/></vfalloc:vfs></metadata><devices><interface type='hostdev' managed='yes'>"
           f"<source><address type='pci' domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/></source>"
           f"<alias name='ua-vfalloc-0'/></interface></devices></domain>")

    def observe(table):
        r = subprocess.run([hook_file(), "vm2", "prepare", "begin", "-"],
                           input=xml.encode(), env=lab.env() | {"VFALLOC_LIBVIRT_RUN": str(lab.rundir)},
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return Observed(from_rundir(lab.rundir))  # vm2 has no status files yet: not running

    report = collect(ctx, observe)
    assert "vm2" not in {x.domain for x, _ in report.stale}
    (kept,) = [x for x in json.loads(lab.state.read_text())["leases"] if x["domain"] == "vm2"]
    assert kept["vf"] == vf and kept["since"] != "2026-01-01T00:00:00+00:00"


# -- the hook at `reconnect begin` --

def test_reconnect_hook_frees_stale_leases_without_libvirt(lab, tmp_path):
    log = tmp_path / "hook.log"
    env = lab.env() | {"VFALLOC_LIBVIRT_RUN": str(lab.rundir), "VFALLOC_HOOK_LOG": str(log)}
    xml = (lab.rundir / "vm1.xml").read_text()
    code = ("import sys, vfalloc.hook as h; rc = h.main(sys.argv[1:]);"
            "assert 'libvirt' not in sys.modules, 'the hook imported libvirt'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "vm1", "reconnect", "begin", "-"], input=xml.encode(),
                       env=env, capture_output=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert sorted(x["domain"] for x in json.loads(lab.state.read_text())["leases"]) == ["vm1", "vm5"]
    line = log.read_text().strip()
    assert line.startswith("vm1 reconnect begin: holds 0000:01:10.0; gc freed ")
    for name, why in EXPECTED.items():
        assert f"of {name} ({why})" in line


def test_import_hook_does_not_import_libvirt():
    r = subprocess.run([sys.executable, "-c", "import sys, vfalloc.hook, vfalloc.stale; print('libvirt' in sys.modules)"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.stdout == "False\n", r.stderr
