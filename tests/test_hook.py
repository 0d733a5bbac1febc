"""The hook run exactly as libvirt runs it: `qemu DOMAIN OP SUBOP EXTRA`, the domain XML on
stdin, with the exit code, stderr and stdout libvirt would see; on fake hosts."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hookfiles
import pytest
from conftest import REPO
from fakehost import i350
from hookfiles import hook_file
from lxml import etree

NS = "urn:vfalloc:1"


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def domain_xml(n: int, requests: str = "", devices: str = "", extra: str = "") -> str:
    meta = f'<metadata><vfalloc:vfs xmlns:vfalloc="{NS}">{requests}</vfalloc:vfs></metadata>' if requests else ""
    return (f"<domain type='qemu'><name>vm{n}</name><uuid>{uuid(n)}</uuid>{meta}<memory unit='KiB'>65536</memory>"
            f"{extra}<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{devices}</devices></domain>")


def iface(index: int, vf: str) -> str:
    dom, bus, rest = vf.split(":")
    slot, fn = rest.split(".")
    return (f"<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x{dom}' bus='0x{bus}' "
            f"slot='0x{slot}' function='0x{fn}'/></source><alias name='ua-vfalloc-{index}'/></interface>")


class Hook:
    def __init__(self, scratch, tmp_path):
        self.s = scratch
        self.log = tmp_path / "hook.log"
        self.spawned = tmp_path / "spawned"
        self.iplog = tmp_path / "ip.log"
        self.env = scratch.env()
        self.env["VFALLOC_HOOK_LOG"] = str(self.log)
        self.env["VFALLOC_HOTPLUG_CMD"] = f"{sys.executable} {REPO / 'tests' / 'fakes' / 'record_spawn.py'} {self.spawned}"
        self.env["VFALLOC_IP"] = str(REPO / "tests" / "fakes" / "fake_ip.py")
        self.env["FAKE_IP_LOG"] = str(self.iplog)

    def run(self, domain: str, op: str, subop: str, extra: str = "-", xml: str = "", argv0=None):
        argv0 = argv0 or [hook_file()]
        return subprocess.run([*argv0, domain, op, subop, extra], input=xml.encode(), env=self.env,
                              capture_output=True, timeout=60)

    def leases(self):
        if not self.s.state.exists():
            return []
        return json.loads(self.s.state.read_text())["leases"]


@pytest.fixture
def hook(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0", "enp1s0f1#0-1"]\n'
                         '[pools.san]\npfs = ["enp1s0f2#0"]\nvlan = 20\n'
                         '[pools.qat]\npfs = ["enp1s0f3"]\n')
    return Hook(scratch, tmp_path)


def test_domain_without_request_touches_nothing(hook):
    for op, sub in (("prepare", "begin"), ("started", "begin"), ("release", "end")):
        r = hook.run("plain", op, sub, xml=domain_xml(1))
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert not hook.s.state.exists() and not hook.s.state.parent.exists()


def test_start_stop_cycle(hook):
    xml = domain_xml(1, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="san" mac="52:54:00:aa:bb:cc"/>'
                        '<vfalloc:vf pool="qat" type="hostdev"/>')
    r = hook.run("vm1", "prepare", "begin", xml=xml)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r.stderr
    leases = hook.leases()
    assert [(x["pool"], x["phase"], x["index"], x["type"]) for x in leases] == [
        ("lan0", "pending-attach", 0, "interface"), ("san", "pending-attach", 1, "interface"),
        ("qat", "pending-attach", 2, "hostdev")]
    assert leases[1]["mac"] == "52:54:00:aa:bb:cc" and leases[1]["vlan"] == 20 and leases[2]["mac"] is None
    assert hook.run("vm1", "start", "begin", xml=xml).returncode == 0
    r = hook.run("vm1", "started", "begin", xml=xml)
    assert r.returncode == 0 and r.stdout == b""
    record = _wait_for(hook.spawned)
    assert record["argv"][-2:] == ["vm1", uuid(1)]
    assert record["sid"] == record["pid"]
    assert record["fds"] == [0, 1, 2] and record["stdin_is_devnull"] and record["cwd"] == "/"
    # prepare again (e.g. a second hook pass) is idempotent: the same VFs, nothing more
    assert hook.run("vm1", "prepare", "begin", xml=xml).returncode == 0
    def same(x):
        return {k: v for k, v in x.items() if k != "since"}
    assert [same(x) for x in hook.leases()] == [same(x) for x in leases]
    r = hook.run("vm1", "release", "end", "destroyed", xml=xml)
    assert r.returncode == 0 and hook.leases() == []
    lines = hook.log.read_text().splitlines()
    assert lines[0].startswith("vm1 prepare begin: leased 0000:01:10.0 (lan0, pending-attach)")
    assert any(line.startswith("vm1 release end: released ") and "reason destroyed" in line for line in lines)


def _wait_for(path: Path, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_spawned_worker_outlives_the_hook(hook, tmp_path):
    xml = domain_xml(1, '<vfalloc:vf pool="lan0"/>')
    hook.run("vm1", "prepare", "begin", xml=xml)
    go = tmp_path / "go"
    hook.env["RECORD_SPAWN_GO"] = str(go)  # the worker finishes only once this file exists
    r = hook.run("vm1", "started", "begin", xml=xml)
    assert r.returncode == 0
    assert not hook.spawned.exists()                   # the hook returned, its worker still runs
    go.touch()
    record = _wait_for(hook.spawned)
    assert record["sid"] == record["pid"]              # its own session: not in libvirt's group
    assert record["fds"] == [0, 1, 2]                  # nothing inherited from the hook


def test_started_without_pending_spawns_nothing(hook):
    vf = "0000:01:10.0"
    xml = domain_xml(1, '<vfalloc:vf pool="lan0"/>', iface(0, vf))
    assert hook.run("vm1", "prepare", "begin", xml=xml).returncode == 0
    assert [(x["vf"], x["phase"]) for x in hook.leases()] == [(vf, "attached")]
    assert hook.run("vm1", "started", "begin", xml=xml).returncode == 0
    time.sleep(0.3)
    assert not hook.spawned.exists()


def test_pinned_vf_held_by_another_domain_is_refused(hook):
    vf = "0000:01:10.0"
    assert hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>', iface(0, vf))).returncode == 0
    r = hook.run("vm2", "prepare", "begin", xml=domain_xml(2, '<vfalloc:vf pool="lan0"/>', iface(0, vf)))
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode() == f"vfalloc: VF {vf} wanted by vm2 is leased to vm1; stop vm1 or remove the VF from vm2's XML\n"
    assert [x["domain"] for x in hook.leases()] == ["vm1"]


def test_empty_pool_refuses_with_names(hook):
    for n in (1, 2):
        assert hook.run(f"vm{n}", "prepare", "begin", xml=domain_xml(n, '<vfalloc:vf pool="san"/>')).returncode in (0, 1)
    r = hook.run("vm2", "prepare", "begin", xml=domain_xml(2, '<vfalloc:vf pool="san"/>'))
    assert r.returncode == 1
    assert r.stderr.decode() == ("vfalloc: no free VF in pool san for vm2 (1 of 1 leased: vm1); "
                                 "free one or add VFs to the pool\n")
    assert "refused" in hook.log.read_text()


@pytest.mark.parametrize("requests,message", [
    ('<vfalloc:vf pool="wan"/>', "no pool named wan for vm1 (pools: lan0, san, qat)"),
    ('<vfalloc:vf pool="lan0" vlan="9999"/>', "vlan"),
    ('<vfalloc:vf pool="lan0" mac="nope"/>', "mac"),
    ('<vfalloc:vf pool="lan0" type="pci"/>', "type"),
    ('<vfalloc:vf/>', "pool"),
], ids=["unknown-pool", "bad-vlan", "bad-mac", "bad-type", "no-pool"])
def test_bad_requests_refuse_the_start(hook, requests, message):
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, requests))
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("vfalloc: ") and err.count("\n") == 1 and message in err
    assert "vm1" in err and hook.leases() == []


@pytest.mark.parametrize("xml,message", [
    ('<domain><name>vm1</name><metadata><vfalloc:vfs xmlns:vfalloc="urn:vfalloc:1">', "vm1"),
    ("", "no domain XML on stdin"),
    ("""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<domain><name>vm1</name><uuid>00000000-0000-0000-0000-000000000001</uuid><metadata><x xmlns="urn:vfalloc:1">&lol4;</x></metadata></domain>""", ""),
    ("""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain><name>vm1</name>
<uuid>00000000-0000-0000-0000-000000000001</uuid><metadata><vfalloc:vfs xmlns:vfalloc="urn:vfalloc:1"><vfalloc:vf pool="&x;"/></vfalloc:vfs></metadata></domain>""", ""),
    ("<domain><name>vm1</name><uuid>00000000-0000-0000-0000-000000000001</uuid><metadata>"
     '<vfalloc:vfs xmlns:vfalloc="urn:vfalloc:1"><vfalloc:vf pool="lan0"/></vfalloc:vfs></metadata>'
     "<description>" + "x" * (17 << 20) + "</description></domain>", "larger than"),
], ids=["malformed", "empty", "xml-bomb", "external-entity", "huge"])
def test_unreadable_xml_refused_nothing_changed(hook, xml, message):
    hook.run("keep", "prepare", "begin", xml=domain_xml(9, '<vfalloc:vf pool="qat"/>'))
    before = hook.s.state.read_bytes()
    r = hook.run("vm1", "prepare", "begin", xml=xml)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("vfalloc: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err and "root:" not in err
    assert hook.s.state.read_bytes() == before


def test_failed_start_releases(hook):
    xml = domain_xml(3, '<vfalloc:vf pool="lan0"/>')
    hook.run("vm3", "prepare", "begin", xml=xml)
    assert len(hook.leases()) == 1
    hook.run("vm3", "stopped", "end", xml=xml)
    r = hook.run("vm3", "release", "end", "failed", xml=xml)
    assert r.returncode == 0 and hook.leases() == []


def test_release_never_touches_another_domain(hook):
    for n in (1, 2, 3):
        hook.run(f"vm{n}", "prepare", "begin", xml=domain_xml(n, '<vfalloc:vf pool="lan0"/>'))
    hook.run("vm2", "release", "end", "-", xml=domain_xml(2, '<vfalloc:vf pool="lan0"/>'))
    assert sorted(x["domain"] for x in hook.leases()) == ["vm1", "vm3"]
    hook.run("vm2", "release", "end", "-", xml=domain_xml(2, '<vfalloc:vf pool="lan0"/>'))
    assert sorted(x["domain"] for x in hook.leases()) == ["vm1", "vm3"]


def _canon(xml: bytes | str) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True)
    return etree.tostring(etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser), method="c14n")


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_incoming_swaps_sources_only(hook, op):
    other_host_vf = "0000:05:10.0"
    xml = domain_xml(4, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="qat" type="hostdev"/>',
                     iface(0, other_host_vf) +
                     "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' "
                     "slot='0x10' function='0x1'/></source><alias name='ua-vfalloc-1'/></hostdev>")
    r = hook.run("vm4", op, "begin", xml=xml)
    assert r.returncode == 0, r.stderr
    out = etree.fromstring(r.stdout)
    leases = {x["index"]: x["vf"] for x in hook.leases()}
    sources = [el.getparent().getparent() for el in out.iter("address") if el.getparent().tag == "source"]
    assert len(sources) == 2  # same devices, same order
    addrs = ["{:04x}:{:02x}:{:02x}.{}".format(*(int(a.get(k), 16) for k in ("domain", "bus", "slot", "function")))
             for a in out.iter("address") if a.getparent().tag == "source"]
    assert addrs == [leases[0], leases[1]]
    # everything but the source addresses is unchanged
    for a in out.iter("address"):
        if a.getparent().tag == "source":
            a.attrib.clear()
    orig = etree.fromstring(xml.encode())
    for a in orig.iter("address"):
        if a.getparent().tag == "source":
            a.attrib.clear()
    assert _canon(etree.tostring(out)) == _canon(etree.tostring(orig))
    assert all(x["phase"] == "attached" for x in hook.leases())


def test_incoming_without_devices_prints_nothing(hook):
    r = hook.run("vm4", "restore", "begin", xml=domain_xml(4, '<vfalloc:vf pool="lan0"/>'))
    assert (r.returncode, r.stdout) == (0, b"")
    r = hook.run("vm5", "migrate", "begin", xml=domain_xml(5))
    assert (r.returncode, r.stdout) == (0, b"")


def test_reconnect_matches_leases_to_devices(hook):
    vf = "0000:01:10.4"
    xml = domain_xml(6, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="lan0"/>', iface(1, vf))
    # the state lost the lease of device 1 and holds a stale attached lease for index 0
    hook.s.run("alloc", "--domain", "vm6", "--uuid", uuid(6), "--pool", "lan0", "--index", "0")
    table = json.loads(hook.s.state.read_text())
    table["leases"][0]["phase"] = "attached"
    hook.s.state.write_text(json.dumps(table))
    r = hook.run("vm6", "reconnect", "begin", xml=xml)
    assert r.returncode == 0, r.stderr
    assert [(x["vf"], x["index"], x["phase"]) for x in hook.leases()] == [(vf, 1, "attached")]


def test_other_operations_exit_silently(hook):
    for op, sub in (("stopped", "end"), ("start", "begin"), ("attach", "begin"), ("frobnicate", "x")):
        r = hook.run("vm1", op, sub, xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert hook.leases() == []


def test_trust_and_spoofchk_set_through_the_pf(hook):
    xml = domain_xml(7, '<vfalloc:vf pool="lan0" trust="on" spoofchk="off"/>')
    r = hook.run("vm7", "prepare", "begin", xml=xml)
    assert r.returncode == 0, r.stderr
    assert hook.iplog.read_text().splitlines() == ["link set dev enp1s0f0 vf 0 trust on spoofchk off"]


def test_failing_ip_refuses_and_gives_the_vf_back(hook):
    hook.env["FAKE_IP_FAIL"] = "RTNETLINK answers: Operation not supported"
    r = hook.run("vm7", "prepare", "begin", xml=domain_xml(7, '<vfalloc:vf pool="lan0" trust="on"/>'))
    err = r.stderr.decode()
    assert r.returncode == 1 and "Operation not supported" in err and err.count("\n") == 1
    assert hook.leases() == []


def test_two_hooks_race_for_the_last_vf(hook):
    env = hook.env
    procs = [subprocess.Popen([hook_file(), f"vm{n}", "prepare", "begin", "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for n in (1, 2)]
    for n, p in zip((1, 2), procs, strict=True):
        p.stdin.write(domain_xml(n, '<vfalloc:vf pool="san"/>').encode())
        p.stdin.close()
    results = [(p.wait(timeout=60), p.stderr.read().decode()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1]
    loser = next(err for code, err in results if code == 1)
    assert "no free VF in pool san" in loser
    assert len(hook.leases()) == 1


def test_installed_hook_runs_as_libvirt_runs_it(hook, scratch, tmp_path):
    hooks_dir = tmp_path / "hooks"
    r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir))
    assert r.code == 0 and "restart libvirt" in r.out
    installed = hooks_dir / "qemu.d" / "vfalloc"
    assert os.access(installed, os.X_OK) and installed.stat().st_mode & 0o022 == 0
    assert installed.stat().st_uid == os.geteuid()  # root's when root installs it
    assert f"|| VFALLOC_CONFIG={scratch.config}\nexport VFALLOC_CONFIG\n" in installed.read_text()
    xml = domain_xml(8, '<vfalloc:vf pool="lan0"/>')
    del hook.env["VFALLOC_CONFIG"]  # the hook finds its config without the environment
    scratch.write_config(scratch.config.read_text() + f'[settings]\nstate = "{scratch.state}"\n')
    r = hook.run("vm8", "prepare", "begin", xml=xml, argv0=[str(installed)])
    assert r.returncode == 0, r.stderr
    assert [x["domain"] for x in hook.leases()] == ["vm8"]


def test_hook_without_arguments(hook):
    r = subprocess.run([hook_file()], env=hook.env, capture_output=True)
    assert r.returncode == 2 and b"expected DOMAIN OPERATION SUB-OPERATION" in r.stderr


def test_install_hook_refuses_foreign_file_and_removes_only_its_own(scratch, tmp_path):
    hooks_dir = tmp_path / "hooks"
    foreign = hooks_dir / "qemu.d" / "vfalloc"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("#!/bin/sh\necho mine\n")
    r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir))
    assert r.code == 2 and "was not written by vfalloc" in r.err
    r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir), "--remove")
    assert r.code == 2 and "left alone" in r.err
    assert foreign.read_text() == "#!/bin/sh\necho mine\n"
    foreign.unlink()
    main_hook = hooks_dir / "qemu"
    main_hook.write_text("#!/bin/sh\nexit 0\n")
    r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir), "--dry-run")
    assert r.code == 0 and "would write" in r.out and not foreign.exists()
    r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir))
    assert r.code == 0 and "libvirt runs it first" in r.out
    assert main_hook.read_text() == "#!/bin/sh\nexit 0\n"
    assert foreign.read_text().startswith("#!/bin/sh\n") and f"\npython={sys.executable}\n" in foreign.read_text()
    assert "already installed" in scratch.run("install-hook", "--hooks-dir", str(hooks_dir)).out
    r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir), "--remove")
    assert r.code == 0 and not foreign.exists() and main_hook.exists()


def test_repo_hook_is_the_template_for_pythons_on_the_path():
    """hooks/qemu (the Debian package's /usr/share/vfalloc/hooks/qemu) is what `install-hook`
    writes for `python3` and the default paths."""
    assert (REPO / "hooks" / "qemu").read_text() == hookfiles.script("python3")


def test_reconnect_never_fails_a_running_domain(hook):
    """libvirt kills a domain whose `reconnect begin` hook exits non-zero: errors are logged only."""
    hook.s.write_config('[pools.renamed]\npfs = ["enp1s0f0"]\n')  # the domain's pool is gone
    r = hook.run("vm1", "reconnect", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>', iface(0, "0000:01:10.0")))
    assert r.returncode == 0 and r.stderr.decode().startswith("vfalloc: no pool named lan0")
    assert "vm1 reconnect begin: failed: no pool named lan0" in hook.log.read_text()


def test_reconnect_of_any_domain_frees_leases_of_stopped_domains(hook, tmp_path):
    run_dir = tmp_path / "run-libvirt-qemu"
    run_dir.mkdir()
    hook.env["VFALLOC_LIBVIRT_RUN"] = str(run_dir)
    hook.s.run("alloc", "--domain", "gone", "--uuid", uuid(5), "--pool", "lan0")
    table = json.loads(hook.s.state.read_text())
    table["leases"][0].update(phase="attached", since="2026-01-01T00:00:00+00:00")
    hook.s.state.write_text(json.dumps(table))
    r = hook.run("web", "reconnect", "begin", xml=domain_xml(6))  # a domain that asks for no VF
    assert r.returncode == 0, r.stderr
    assert hook.leases() == []
    assert "gc freed 0000:01:10.0 of gone (its domain is not running)" in hook.log.read_text()


def test_unwritable_hook_log_does_not_refuse_the_start(hook, tmp_path):
    hook.env["VFALLOC_HOOK_LOG"] = str(tmp_path / "no-such-dir" / "hook.log")
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert (r.returncode, r.stderr) == (0, b"") and len(hook.leases()) == 1


def test_pool_name_with_a_newline_stays_one_line(hook):
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="x&#10;y"/>'))
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "no pool named 'x\\ny'" in err


def test_restore_keeps_a_vf_pinned_without_a_request(hook):
    vf = "0000:01:10.4"
    xml = domain_xml(9, "", iface(0, vf)).replace("<metadata></metadata>", "")
    r = hook.run("vm9", "restore", "begin", xml=xml)
    assert r.returncode == 0, r.stderr
    assert [(x["vf"], x["phase"], x["pool"]) for x in hook.leases()] == [(vf, "attached", "lan0")]
    assert _canon(r.stdout) == _canon(xml)  # the source stays where it was pinned


@pytest.mark.parametrize("pool, outcome", [("lan0", "leased 0000:01:10.0"), ("nope", "refused: no pool named nope")],
                         ids=["leased", "refused"])
def test_hook_log_from_the_config_file_gets_the_line(hook, tmp_path, pool, outcome):
    """libvirt passes hooks no VFALLOC_* variables: `hook_log` in [settings] must do on its own."""
    del hook.env["VFALLOC_HOOK_LOG"]
    configured = tmp_path / "configured.log"
    hook.s.write_config(f'[settings]\nhook_log = "{configured}"\n' + hook.s.config.read_text())
    hook.run("vm1", "prepare", "begin", xml=domain_xml(1, f'<vfalloc:vf pool="{pool}"/>'))
    lines = configured.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vm1 prepare begin: ") and outcome in lines[0]


def test_a_lease_taken_again_at_once_differs_from_the_one_before(hook):
    """gc frees a lease only if it is still exactly as gc read it. A domain stopped and started
    again within one second gets the same VF (sticky) with the same MAC and phase: only the
    time it was taken tells the two leases apart, so that time must be finer than a second."""
    from datetime import datetime

    xml = domain_xml(1, '<vfalloc:vf pool="lan0"/>')
    taken = []
    for _ in range(3):
        assert hook.run("vm1", "prepare", "begin", xml=xml).returncode == 0
        taken.append(hook.leases()[0])
        assert hook.run("vm1", "release", "end", "destroyed", xml=xml).returncode == 0
    assert len({x["vf"] for x in taken}) == 1  # the same VF each time
    assert len({x["since"] for x in taken}) == 3
    times = [datetime.fromisoformat(x["since"]) for x in taken]
    assert times == sorted(times) and all(t.utcoffset().total_seconds() == 0 for t in times)


# Stands in for the interpreter the hook file starts: runs the program it is given with `-c` as
# Python would, then reports its flags, the collector's state and which of these modules it loaded.
_WATCH = """#!{python}
import gc, sys
at = sys.argv.index("-c")
flags, code, sys.argv = sys.argv[1:at], sys.argv[at + 1], ["-c", *sys.argv[at + 2:]]
try:
    exec(compile(code, "<hook>", "exec"), {{"__name__": "__main__"}})
finally:
    sys.stderr.write(f"flags:{{','.join(flags)}} gc:{{gc.isenabled()}} loaded:" + ",".join(m for m in ("dataclasses",) if m in sys.modules))
"""


@pytest.mark.parametrize("op, subop", [("prepare", "begin"), ("release", "end")], ids=["prepare", "release"])
def test_hook_defines_no_dataclass_and_runs_without_the_cycle_collector(hook, op, subop, tmp_path):
    """A hook is a new process on every libvirt call: a frozen dataclass costs it about 1 ms to
    define (vfalloc.record says why), and the cycle collector's passes about 2 ms."""
    watch, hook_path = tmp_path / "python", tmp_path / "hook"
    watch.write_text(_WATCH.format(python=sys.executable))
    hookfiles.write(hook_path, str(watch))
    watch.chmod(0o755)
    xml = domain_xml(1, '<vfalloc:vf pool="lan0"/>')
    r = hook.run("vm1", op, subop, xml=xml, argv0=[str(hook_path)])
    assert r.returncode == 0 and r.stderr.decode().rstrip("\n").endswith("flags:-I gc:False loaded:"), r.stderr
