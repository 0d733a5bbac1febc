"""vfalloc against a real libvirt daemon (libvirt 11.3, QEMU 10, TCG) that the tests start
themselves (tests/fakes/libvirtd.py), with vfalloc's hook installed, on a fake SR-IOV host: what
libvirt hands the hook, refusals, release on every kind of stop, `vfalloc request` and
`vfalloc start`, the hot-plug worker, and gc across a daemon restart.

libvirt cannot pass the fake VFs through (they are no PCI devices), so every path that ends in
a VF inside a guest is proven on the emulated SR-IOV host (tests/e2e); here those paths end in
libvirt's refusal, and what vfalloc does about it is what is checked."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest
from libvirtd import lab, libvirt_daemon  # noqa: F401  (fixtures)
from test_docs import REPORT

from vfalloc import domxml

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

pytestmark = pytest.mark.libvirt

REQ = '<vfalloc:vf pool="lan0"/>'
FIRST_VF = "0000:01:10.0"  # VF 0 of enp1s0f0, what pool lan0 (pack) hands out first


def pinned(vf: str = FIRST_VF, index: int = 0) -> str:
    dom, bus, rest = vf.split(":")
    slot, fn = rest.split(".")
    return (f"<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x{dom}' bus='0x{bus}' "
            f"slot='0x{slot}' function='0x{fn}'/></source><alias name='ua-vfalloc-{index}'/></interface>")


def start(dom) -> None:
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)


def test_the_hook_gets_the_request_and_the_worker_reports_libvirts_refusal(lab):
    """A plain start: the hook leases at `prepare begin` from the <metadata> libvirt hands it,
    launches the hot-plug worker at `started begin`; the worker's attach is refused (fake VF),
    so the VF goes back and the optional request leaves the domain running."""
    dom = lab.define("plain", REQ)
    name = dom.name()
    start(dom)
    assert lab.calls() == [f"{name} prepare begin -", f"{name} start begin -", f"{name} started begin -"]
    info = domxml.read_domain(lab.stdin_of("prepare", "begin"))
    assert (info.name, info.uuid, [r.pool for r in info.requests], info.devices) == (name, dom.UUIDString(), ["lan0"], ())
    lab.wait_until(lambda: any("hotplug" in line for line in lab.log_lines()), message="the worker logs")
    log = lab.log_lines()
    assert log[0] == f"{name} prepare begin: leased {FIRST_VF} (lan0, pending-attach)"
    assert log[1].startswith(f"{name} started begin: hot-plug of {FIRST_VF} handed to process ")
    assert log[2].startswith(f"{name} hotplug: cannot hot-plug a VF into {name}: libvirt: ")
    assert log[2].endswith(f"; VF {FIRST_VF} (lan0) given back")
    assert lab.leases() == [] and dom.isActive()


@contextlib.contextmanager
def python_starts(lab):
    """The installed hook file with its interpreter wrapped to note each Python start (domain,
    operation, sub-operation); yields a function that returns the notes so far."""
    hook = lab.tmp / "hooks" / "qemu.d" / "vfalloc"
    installed = hook.read_text()
    notes, wrapper = lab.tmp / "python-starts", lab.tmp / "python-counting"
    notes.unlink(missing_ok=True)
    wrapper.write_text(f'#!/bin/sh\necho "$4 $5 $6" >> {notes}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    assert f"\npython={shlex.quote(sys.executable)}\n" in installed
    hook.write_text(installed.replace(f"\npython={shlex.quote(sys.executable)}\n", f"\npython={wrapper}\n"))
    try:
        yield lambda: notes.read_text().splitlines() if notes.exists() else []
    finally:
        hook.write_text(installed)


def test_libvirt_starts_python_only_for_the_calls_vfalloc_acts_in(lab):
    """The hook file answers the calls of a domain without VFs in the shell (templates.hook_script):
    its start and stop start no Python; a domain that asks for a VF has it at prepare, started
    (the hot-plug) and release."""
    with python_starts(lab) as starts:
        plain, asks = lab.define("novf"), lab.define("asks", REQ)
        start(plain)
        plain.destroy()
        assert len(lab.calls()) == 5 and starts() == []
        start(asks)
        lab.wait_until(lambda: any("hotplug" in line for line in lab.log_lines()), message="the worker logs")
        asks.destroy()
        name = asks.name()
        assert starts() == [f"{name} prepare begin", f"{name} started begin", f"{name} release end"]
        assert lab.leases() == []


def test_vfalloc_start_does_the_work_of_prepare_so_that_call_starts_no_python(lab, monkeypatch):
    """`vfalloc start` stamps the XML it starts (hookfile.StartStamp) where the hook file looks
    (the runtime directory libvirt's hooks see): `prepare begin` ends in the shell. The lab's fake
    VF cannot be passed through, so the start fails, and `release end failed` gives the VF back."""
    monkeypatch.setenv("VFALLOC_RUN_DIR", str(lab.tmp / "run-vfalloc"))
    with python_starts(lab) as starts:
        dom = lab.define("stamped", REQ)
        r = lab.vfalloc("start", dom.name(), "--paused")
        assert r.code == 1 and r.err.endswith(f"; VF {FIRST_VF} given back\n"), r.err
        assert 'start="' in lab.stdin_of("prepare", "begin")
        assert starts() == [f"{dom.name()} release end"]
    assert lab.leases() == [] and list((lab.tmp / "run-vfalloc").glob("start.*")) == []


def test_vfalloc_start_leaves_no_stamp_in_a_runtime_directory_others_may_write(lab, monkeypatch):
    """A stamp is only trusted where nobody but root can put one (vfalloc.rundir): with
    /run/vfalloc open to others, `vfalloc start` warns and leaves none, and the hook does the
    checks of `prepare begin` itself."""
    run_dir = lab.tmp / "run-vfalloc"
    monkeypatch.setenv("VFALLOC_RUN_DIR", str(run_dir))
    run_dir.chmod(0o777)
    try:
        with python_starts(lab) as starts:
            dom = lab.define("unstamped", REQ)
            r = lab.vfalloc("start", dom.name(), "--paused")
            assert r.code == 1 and r.err.startswith(f"vfalloc: warning: no start stamp: {run_dir} has mode 0777"), r.err
            assert starts()[0] == f"{dom.name()} prepare begin"
        assert lab.leases() == [] and list(run_dir.glob("start.*")) == []
    finally:
        run_dir.chmod(0o700)


# What docs/performance.md says `vfalloc start` does not load beyond libvirt-python and lxml:
# each module is a file read and unmarshalled, some 10 ms apiece under TCG.
START_AVOIDS = ("secrets", "random", "hashlib", "dataclasses", "shlex", "tomllib", "subprocess", "datetime",
                "vfalloc.commands.audit")
LOADED = REPORT + "from vfalloc.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_vfalloc_start_as_a_process_loads_what_performance_md_says(lab, monkeypatch):
    """`vfalloc start` run as users run it, a process of its own: it does its work (the lab's VF
    cannot be passed through, so libvirt refuses and the VF is given back) without loading any of
    START_AVOIDS. The config's parse is kept by the hook's first call, as on a host where a VM
    has started."""
    monkeypatch.setenv("VFALLOC_RUN_DIR", str(lab.tmp / "run-vfalloc"))
    dom = lab.define("lean", REQ)
    assert lab.vfalloc("start", dom.name(), "--paused").code == 1  # the hook's `release end` keeps the parse
    r = subprocess.run([sys.executable, "-c", LOADED, "start", "--config", str(lab.config), "--connect", lab.uri,
                        dom.name(), "--paused"], capture_output=True, text=True, timeout=300)
    err, _, mods = r.stderr.rpartition("\nLOADED ")
    assert r.returncode == 1 and err.strip().endswith(f"; VF {FIRST_VF} given back"), r.stderr
    assert 'start="' in lab.stdin_of("prepare", "begin"), "vfalloc start did not stamp the XML it started"
    loaded = set(mods.split())
    assert {"libvirt", "lxml.etree", "vfalloc.leasing"} <= loaded
    assert sorted(m for m in START_AVOIDS if m in loaded) == []
    assert lab.leases() == []


def test_the_hook_keeps_its_parsed_config_in_run_vfalloc(lab):
    """libvirt gives the hook no VFALLOC_* variables: it keeps the parse of its config in the
    default /run/vfalloc (here the namespace's bind mount), 0600, for the exact text of the file."""
    for memo in (lab.tmp / "run-vfalloc").glob("config-*.json"):
        memo.unlink()
    start(lab.define("memo", REQ))
    (memo,) = (lab.tmp / "run-vfalloc").glob("config-*.json")
    assert memo.stat().st_mode & 0o777 == 0o600
    kept = json.loads(memo.read_text())
    assert (kept["path"], kept["text"]) == (str(lab.config), lab.config.read_text())


def test_required_vf_that_cannot_be_hot_plugged_stops_the_domain(lab):
    dom = lab.define("required", '<vfalloc:vf pool="lan0" required="yes"/>')
    name = dom.name()
    start(dom)
    lab.wait_until(lambda: not dom.isActive(), message="the worker destroys the domain")
    lab.wait_until(lambda: any(c.startswith(f"{name} release end") for c in lab.calls()),
                   message="libvirt runs the release hook")
    assert lab.calls()[-2:] == [f"{name} stopped end -", f"{name} release end destroyed"]
    destroyed = f'{name} hotplug: request 0 is required="yes": destroyed {name}'
    lab.wait_until(lambda: destroyed in lab.log_lines(), message="the worker logs the destroy")
    # the worker runs detached: its line may come before or after the hook's "handed to" line
    (failed,) = [line for line in lab.log_lines() if line.startswith(f"{name} hotplug: cannot hot-plug")]
    assert failed.startswith(f"{name} hotplug: cannot hot-plug a VF into {name}: libvirt: ")
    assert failed.endswith(f"; VF {FIRST_VF} (lan0) given back")
    assert lab.leases() == []


def test_empty_pool_refuses_the_start_with_vfallocs_message(lab):
    assert lab.vfalloc("alloc", "--domain", "other", "--uuid", "00000000-0000-0000-0000-0000000000aa",
                       "--pool", "one").code == 0
    before = lab.leases()
    dom = lab.define("refused", '<vfalloc:vf pool="one"/>')
    with pytest.raises(libvirt.libvirtError) as info:
        start(dom)
    message = info.value.get_error_message()
    assert (f"vfalloc: no free VF in pool one for {dom.name()} (1 of 1 leased: other); "
            "free one or add VFs to the pool") in message
    assert not dom.isActive() and lab.leases() == before
    assert lab.calls()[0] == f"{dom.name()} prepare begin -"
    assert lab.calls()[-1] == f"{dom.name()} release end failed"


@pytest.mark.parametrize("how,reason", [
    ("destroy", "destroyed"),
    ("qemu-exits", "shutdown"),
], ids=["destroy", "guest-shutdown"])
def test_release_frees_the_leases_when_the_domain_stops(lab, how, reason):
    """The stop frees what the domain holds. The fake VF cannot be hot-plugged, so the worker
    gives the start's lease back; the lease the domain holds while it runs is then reserved by
    hand. QEMU exits on SIGTERM the way it does when the guest powers off (a SHUTDOWN event,
    then EOF): libvirt records reason "shutdown"."""
    dom = lab.define(f"stop-{how}", REQ)
    start(dom)
    lab.wait_until(lambda: any(" hotplug: " in line for line in lab.log_lines()), message="the worker is done")
    assert lab.leases() == []
    assert lab.vfalloc("alloc", "--domain", dom.name(), "--uuid", dom.UUIDString(), "--pool", "lan0").code == 0
    assert [(x["domain"], x["phase"]) for x in lab.leases()] == [(dom.name(), "reserved")]
    if how == "destroy":
        dom.destroy()
    else:
        pid = int((lab.status_dir / f"{dom.name()}.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        lab.wait_until(lambda: not dom.isActive(), message="QEMU exits")
    lab.wait_until(lambda: any(c.startswith(f"{dom.name()} release end") for c in lab.calls()),
                   message="the release hook runs")
    assert lab.calls()[-1] == f"{dom.name()} release end {reason}"
    assert lab.leases() == []
    assert lab.log_lines()[-1] == f"{dom.name()} release end: released {FIRST_VF} (reason {reason})"
    assert not (lab.status_dir / f"{dom.name()}.pid").exists()


def test_release_after_a_failed_start_of_a_pinned_vf(lab):
    """A VF pinned into the saved config is claimed at `prepare begin`; libvirt then fails the
    start and calls `release end failed`, which gives it back."""
    dom = lab.define("pinned", REQ, pinned())
    with pytest.raises(libvirt.libvirtError):
        start(dom)
    log = lab.log_lines()
    assert log[0] == f"{dom.name()} prepare begin: leased {FIRST_VF} (lan0, attached)"
    assert log[-1] == f"{dom.name()} release end: released {FIRST_VF} (reason failed)"
    assert lab.calls()[-1] == f"{dom.name()} release end failed" and lab.leases() == []


def test_request_round_trips_through_the_metadata_api(lab):
    dom = lab.define("request")
    name = dom.name()
    r = lab.vfalloc("request", name, "--pool", "lan0", "--vlan", "20")
    assert r.code == 0, r.err
    r = lab.vfalloc("request", name, "--pool", "qat", "--type", "hostdev", "--required", "yes")
    assert r.out == f"{name} asks for 2 VFs:\n  ua-vfalloc-0  pool=lan0 vlan=20\n  ua-vfalloc-1  pool=qat type=hostdev required=yes\n"
    saved = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert [(q.pool, q.vlan, q.type, q.required) for q in domxml.read_domain(saved).requests] == [
        ("lan0", 20, "interface", False), ("qat", None, "hostdev", True)]
    assert json.loads(lab.vfalloc("request", name, "--json").out)[1]["alias"] == "ua-vfalloc-1"
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    r = lab.vfalloc("request", name, "--pool", "nope")
    assert r.code == 1 and "no pool named nope" in r.err and dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert lab.vfalloc("request", name, "--clear").out == f"{name} asks for no VFs\n"
    assert domxml.NS not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_vfalloc_start_failure_gives_the_vfs_back_and_keeps_the_saved_config_clean(lab):
    dom = lab.define("start", REQ + '<vfalloc:vf pool="qat" type="hostdev"/>')
    name = dom.name()
    saved = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    r = lab.vfalloc("start", name, "--paused")
    assert r.code == 1 and r.out == "" and r.err.count("\n") == 1
    assert r.err.startswith(f"vfalloc: cannot start {name}: libvirt: ")
    assert r.err.endswith(f"; VFs {FIRST_VF}, 0000:01:10.3 given back\n")
    # the hook was handed the live XML with both devices, and claimed them (not leased anew)
    prepared = domxml.read_domain(lab.stdin_of("prepare", "begin"))
    assert [(d.index, str(d.address), d.type) for d in prepared.devices] == [
        (0, FIRST_VF, "interface"), (1, "0000:01:10.3", "hostdev")]
    assert lab.log_lines()[0] == f"{name} prepare begin: leased {FIRST_VF} (lan0, attached), 0000:01:10.3 (qat, attached)"
    assert lab.leases() == [] and not dom.isActive()
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == saved


def test_vfalloc_start_refuses_a_running_domain(lab):
    dom = lab.define("running", REQ)
    start(dom)
    lab.wait_until(lambda: any(" hotplug: " in line for line in lab.log_lines()), message="the worker is done")
    assert lab.vfalloc("alloc", "--domain", dom.name(), "--uuid", dom.UUIDString(), "--pool", "lan0").code == 0
    before = lab.leases()
    r = lab.vfalloc("start", dom.name())
    assert r.code == 2 and f"{dom.name()} is already running" in r.err and lab.leases() == before


def test_gc_after_a_daemon_restart(lab, monkeypatch):
    """libvirtd is killed; meanwhile the table gains a lease for a domain that does not run. The
    restarted daemon calls `reconnect begin` for the running domain, and the hook frees that
    lease from libvirt's status files, without asking libvirt. `vfalloc list` / `gc` then agree
    through libvirt itself."""
    running = lab.define("alive", REQ)
    start(running)  # the fake VF cannot be hot-plugged: the worker gives the start's lease back
    lab.wait_until(lambda: any(" hotplug: " in line for line in lab.log_lines()), message="the worker is done")
    assert lab.vfalloc("alloc", "--domain", running.name(), "--uuid", running.UUIDString(), "--pool", "lan0").code == 0
    ghost = lab.define("ghost", REQ)  # defined, never started
    assert lab.vfalloc("alloc", "--domain", ghost.name(), "--uuid", ghost.UUIDString(), "--pool", "lan0").code == 0
    table = json.loads(lab.state.read_text())
    for item in table["leases"]:
        if item["domain"] == ghost.name():  # as if the hook had attached it and its stop went unseen
            item.update(phase="attached", since="2026-01-01T00:00:00+00:00")
    lab.state.write_text(json.dumps(table))
    ghost_vf = next(x["vf"] for x in table["leases"] if x["domain"] == ghost.name())

    lab.restart_libvirtd()
    lab.wait_until(lambda: any("reconnect begin:" in line for line in lab.log_lines())
                   and f"{running.name()} reconnect begin -" in lab.calls(), message="the reconnect hooks")
    line = next(x for x in lab.log_lines() if "reconnect begin:" in x and running.name() in x)
    assert line == f"{running.name()} reconnect begin: gc freed {ghost_vf} of {ghost.name()} (its domain is not running)"
    assert [x["domain"] for x in lab.leases()] == [running.name()]

    # the same verdict through libvirt: a second ghost shows as stale in `list`, `gc` frees it
    table = json.loads(lab.state.read_text())
    table["leases"].append(dict(table["leases"][0], domain=ghost.name(), uuid=ghost.UUIDString(), vf=ghost_vf,
                                phase="pending-attach"))
    lab.state.write_text(json.dumps(table))
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", lab.uri)  # `vfalloc list` has no --connect
    rows = json.loads(lab.vfalloc("list", "--json").out)
    assert {r["domain"]: (r["state"], r["reason"]) for r in rows if r["domain"]} == {
        running.name(): ("leased", None), ghost.name(): ("stale", "its domain is not running")}
    r = lab.vfalloc("gc")
    assert r.out == (f"freed {ghost_vf} from {ghost.name()} ({ghost.UUIDString()}, pending-attach): its domain is not running\n"
                     f"running domains from libvirt at {lab.uri}\n")
    assert [x["domain"] for x in lab.leases()] == [running.name()]
    assert lab.conn.lookupByName(running.name()).isActive()


@contextlib.contextmanager
def hook_interpreter(lab, interpreter: str):
    """The lab's hook file as install-hook wrote it, but running `interpreter`: what is left
    when vfalloc's venv is deleted or its package removed. Put back afterwards."""
    path = lab.tmp / "hooks" / "qemu.d" / "vfalloc"
    text = path.read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("python=")]
    path.write_text(text.replace(f"\n{line}\n", f"\npython={shlex.quote(interpreter)}\n", 1))
    try:
        yield
    finally:
        path.write_text(text)


def test_a_hook_file_whose_vfalloc_is_gone_kills_no_running_domain(lab):
    """libvirt kills a running domain whose hook fails at `reconnect begin`. With the hook's
    interpreter gone, a daemon restart keeps every domain running; a domain that asks for
    nothing starts and stops; one that asks for a VF is refused with the fix."""
    name = lab.define("survivor").name()
    start(lab.conn.lookupByName(name))
    with hook_interpreter(lab, "/opt/vfalloc-removed/bin/python"):
        lab.restart_libvirtd()
        lab.wait_until(lambda: f"{name} reconnect begin -" in lab.calls(), message="the reconnect hook")
        plain = lab.define("plain")
        start(plain)
        assert plain.isActive()
        plain.destroy()
        # libvirt stops a domain whose reconnect hook failed right after the hook: by now it would be
        alive = lab.conn.lookupByName(name)
        assert alive.isActive() and f"{name} release end failed" not in lab.calls()
        asks = lab.define("asks", REQ)
        with pytest.raises(libvirt.libvirtError) as info:
            start(asks)
        message = info.value.get_error_message()
        assert (f"vfalloc: cannot run vfalloc (/opt/vfalloc-removed/bin/python is not there), and {asks.name()} "
                "asks for a VF: reinstall vfalloc or run `vfalloc install-hook` again") in message
        assert alive.isActive() and not asks.isActive()
    lab.restart_libvirtd()  # the daemon reads the hook file as it was again
