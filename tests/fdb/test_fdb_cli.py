"""`vfalloc fdb sync|show`, the hook's FDB steps and `host check`'s FDB warning, run as users and
libvirt run them, on a fake host with a bridge over an I350 port and a stand-in for iproute2's
`bridge` (tests/fakes/fake_bridge.py) that keeps the tables; then iproute2's real `bridge` on a
veth interface in a network namespace made for the test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid as uuidlib

import pytest
from conftest import REPO
from fakehost import i350
from hookfiles import hook_file

FAKE_BRIDGE = REPO / "tests" / "fakes" / "fake_bridge.py"
PF_MAC = "a0:36:9f:00:00:00"
BR_MAC = "02:00:00:00:b0:00"
GUEST_MAC = "52:54:00:00:00:01"
VETH_PEER = "aa:00:00:00:00:99"   # a container's MAC, learnt by br0 behind veth0
UUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"


def live_xml(name: str = "web", uuid: str = UUID, bridge: str = "br0", mac: str = GUEST_MAC, kind: str = "bridge") -> str:
    """A running domain's live XML as libvirt 11.3 writes it (single quotes, <target dev>)."""
    source = f"<source bridge='{bridge}'/>" if kind == "bridge" else \
        f"<source network='default' portid='8f1ac7cb-9d67-4f4a-a13a-7d4b1d1c4d4e' bridge='{bridge}'/>"
    return (f"<domain type='kvm' id='1'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  <devices>\n"
            f"    <interface type='{kind}'>\n      <mac address='{mac}'/>\n      {source}\n"
            f"      <target dev='vnet0'/>\n      <model type='virtio'/>\n      <alias name='net0'/>\n"
            "    </interface>\n  </devices>\n</domain>\n")


class Host:
    def __init__(self, scratch, tmp_path, monkeypatch):
        self.s = scratch
        self.log = tmp_path / "bridge.log"
        self.tables = tmp_path / "bridge.json"
        self.hook_log = tmp_path / "hook.log"
        self.run_dir = tmp_path / "run" / "libvirt" / "qemu"
        self.run_dir.mkdir(parents=True)
        self.env = {**scratch.env(), "VFALLOC_BRIDGE": str(FAKE_BRIDGE), "FAKE_BRIDGE_LOG": str(self.log),
                    "FAKE_BRIDGE_STATE": str(self.tables), "VFALLOC_LIBVIRT_RUN": str(self.run_dir),
                    "VFALLOC_HOOK_LOG": str(self.hook_log)}
        for key, value in self.env.items():
            if key.startswith(("VFALLOC_", "FAKE_BRIDGE_")):
                monkeypatch.setenv(key, value)
        self.set_tables(learned={"br0": [["veth0", VETH_PEER], ["vnet0", GUEST_MAC]]})

    def set_tables(self, own=None, learned=None):
        self.tables.write_text(json.dumps({"own": own or {}, "learned": learned or {}}))

    def own(self, dev: str = "enp1s0f0") -> set[str]:
        return set(json.loads(self.tables.read_text())["own"].get(dev, []))

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def running(self, name: str = "web", xml: str | None = None) -> None:
        """libvirt's status file of a running domain: <domstatus> around the live XML."""
        body = xml or live_xml(name)
        (self.run_dir / f"{name}.xml").write_text(f"<domstatus state='running' reason='booted' pid='4242'>\n"
                                                  f"  <taint flag='high-privileges'/>\n{body}</domstatus>\n")

    def hook(self, domain: str, op: str, subop: str, xml: str, extra: str = "-"):
        return subprocess.run([hook_file(), domain, op, subop, extra],
                              input=xml.encode(), env=self.env, capture_output=True, timeout=60)

    def run(self, *argv: str):
        """`vfalloc fdb SUB ...` (and the others) in-process, with this host's flags after the command."""
        if argv[0] == "fdb":
            argv = (f"fdb {argv[1]}", *argv[2:])
        head, *rest = argv
        return self.s.run(*head.split(), *rest) if head.startswith("host") else self._fdb(head, rest)

    def _fdb(self, head: str, rest):
        import io

        from conftest import Result

        from vfalloc.cli import main

        out, err = io.StringIO(), io.StringIO()
        code = main([*head.split(), *self.s.flags(), *rest], out=out, err=err)
        return Result(code, out.getvalue(), err.getvalue())

    @property
    def ledger(self):
        return self.s.state.parent / "fdb.json"


@pytest.fixture
def host(scratch, tmp_path, monkeypatch):
    """br0 over enp1s0f0 (7 VFs) with a guest's tap vnet0 and a container's veth0."""
    fs = scratch.fs
    i350(fs)
    fs.set_mac("enp1s0f0", PF_MAC)
    fs.virtual_netdev("vnet0", "fe:54:00:00:00:01")
    fs.virtual_netdev("veth0", "aa:00:00:00:00:05")
    fs.linux_bridge("br0", BR_MAC, ["enp1s0f0", "vnet0", "veth0"])
    fs.virtual_netdev("virbr0", "52:54:00:aa:aa:aa")
    fs.linux_bridge("virbr0", "52:54:00:aa:aa:aa", [])
    return Host(scratch, tmp_path, monkeypatch)


def test_sync_adds_what_is_missing_and_show_says_for_whom(host):
    host.running()
    res = host.run("fdb", "sync")
    assert res.code == 0, res.err
    assert host.own() == {GUEST_MAC, BR_MAC, VETH_PEER}
    assert sorted(c for c in host.calls() if c.startswith("fdb add")) == sorted(
        f"fdb add {mac} dev enp1s0f0 self" for mac in (GUEST_MAC, BR_MAC, VETH_PEER))
    assert f"add {GUEST_MAC} to enp1s0f0 (for domain web)" in res.out
    assert f"add {BR_MAC} to enp1s0f0 (for bridge br0)" in res.out
    shown = host.run("fdb", "show")
    assert f"enp1s0f0  {VETH_PEER}  port veth0 on br0" in shown.out
    data = json.loads(host.run("fdb", "show", "--json").out)
    assert {(e["mac"], e["owners"][0]["kind"]) for e in data} == {(GUEST_MAC, "domain"), (BR_MAC, "bridge"),
                                                                 (VETH_PEER, "port")}
    again = host.run("fdb", "sync")
    assert "holds what it should (3 entries kept by vfalloc)" in again.out
    assert not [c for c in host.calls() if c.startswith("fdb ")][3:]


def test_dry_run_changes_nothing(host):
    host.running()
    res = host.run("fdb", "sync", "--dry-run")
    assert res.code == 0 and f"would add {GUEST_MAC} to enp1s0f0" in res.out
    assert host.own() == set() and not host.ledger.exists()
    assert not [c for c in host.calls() if c.startswith("fdb ")]


def test_entries_vfalloc_did_not_add_are_never_removed(host):
    admins = "52:54:00:00:00:77"
    host.set_tables(own={"enp1s0f0": [admins, GUEST_MAC]}, learned={"br0": [["veth0", VETH_PEER]]})
    host.running()
    res = host.run("fdb", "sync")
    assert f"left {GUEST_MAC} on enp1s0f0 as it is (not added by vfalloc)" in res.out
    (host.run_dir / "web.xml").unlink()            # the guest stopped
    host.s.fs.unplug("br0", "veth0")               # the container left
    res = host.run("fdb", "sync")
    assert res.code == 0, res.err
    assert f"remove {VETH_PEER} from enp1s0f0" in res.out
    assert host.own() == {admins, GUEST_MAC, BR_MAC}
    assert not [c for c in host.calls() if c.startswith("fdb del") and (admins in c or GUEST_MAC in c)]


def test_a_pf_this_namespace_does_not_see_keeps_its_record(host):
    """A sync run in another network namespace (or after a PF was moved away) cannot see that
    PF's table: its entries stay recorded, untouched."""
    host.ledger.parent.mkdir(parents=True)
    record = {"version": 1, "entries": [{"pf": "eth9", "mac": "52:54:00:00:00:09",
                                         "owners": [{"kind": "bridge", "id": "br9", "name": "br9"}]}]}
    host.ledger.write_text(json.dumps(record))
    res = host.run("fdb", "sync")
    assert res.code == 0, res.err
    assert "eth9: no such interface here; its entries stay recorded" in res.out
    assert [e for e in json.loads(host.ledger.read_text())["entries"] if e["pf"] == "eth9"] == record["entries"]
    assert not [c for c in host.calls() if "eth9" in c]


def test_a_quiet_container_keeps_its_entry(host):
    host.run("fdb", "sync")
    host.set_tables(own={"enp1s0f0": sorted(host.own())}, learned={})  # the bridge forgot the MAC
    host.run("fdb", "sync")
    assert VETH_PEER in host.own()


@pytest.mark.parametrize("config", ['[fdb]\nenabled = false\n', '[pf.enp1s0f0]\nfdb = false\n',
                                    '[pf."0000:01:00.0"]\nfdb = false\n'],
                         ids=["host", "pf-name", "pf-address"])
def test_switched_off_removes_what_vfalloc_added_and_adds_nothing(host, config):
    host.running()
    host.run("fdb", "sync")
    host.s.write_config(config)
    res = host.run("fdb", "sync")
    assert res.code == 0, res.err
    assert host.own() == set()
    assert json.loads(host.run("fdb", "show", "--json").out) == []


@pytest.mark.parametrize("config, message", [
    ('[fdb]\nenabled = "no"\n', "[fdb] enabled = 'no' is not true or false"),
    ('[pf.enp1s0f0]\nfdb = 1\n', "[pf.enp1s0f0] fdb = 1 is not true or false"),
    ('[fdb]\nkeep = true\n', "unknown key 'keep' in [fdb]"),
], ids=["host", "pf", "unknown"])
def test_bad_switch_is_one_line(host, config, message):
    host.s.write_config(config)
    res = host.run("fdb", "sync")
    assert res.code != 0 and message in res.err and len(res.err.splitlines()) == 1
    assert not host.ledger.exists() and not host.calls()


@pytest.mark.parametrize("name, what", [("nosuch0", "no network interface"), ("br0", "no SR-IOV PF with VFs")],
                         ids=["missing", "bridge"])
def test_sync_of_a_pf_that_is_none(host, name, what):
    res = host.run("fdb", "sync", name)
    assert res.code == 2 and f"{name} is {what} on this host" in res.err and len(res.err.splitlines()) == 1
    assert not host.calls() and not host.ledger.exists()


def test_sync_of_one_pf(host):
    host.running()
    res = host.run("fdb", "sync", "enp1s0f1")  # not a bridge port: nothing to do there
    assert res.code == 0 and host.own() == set()
    res = host.run("fdb", "sync", "enp1s0f0")
    assert res.code == 0 and host.own() == {GUEST_MAC, BR_MAC, VETH_PEER}


def test_broken_record_is_refused_and_left_as_it_is(host):
    host.ledger.parent.mkdir(parents=True)
    host.ledger.write_text('{"version": 7, "entries": []}')
    res = host.run("fdb", "sync")
    assert res.code != 0 and "has version 7, newer than this vfalloc knows" in res.err
    assert host.ledger.read_text() == '{"version": 7, "entries": []}'


def test_a_failing_bridge_command_is_one_line(host, monkeypatch):
    host.running()
    monkeypatch.setenv("FAKE_BRIDGE_FAIL", "RTNETLINK answers: Operation not supported")
    res = host.run("fdb", "sync")
    assert res.code != 0 and "Operation not supported" in res.err and len(res.err.splitlines()) == 1
    assert json.loads(host.run("fdb", "show", "--json").out) == []  # nothing recorded that is not there


def test_missing_bridge_command(host, monkeypatch):
    monkeypatch.setenv("VFALLOC_BRIDGE", "/nonexistent/bridge")
    res = host.run("fdb", "sync")
    assert res.code != 0 and "the `bridge` command is missing; install iproute2" in res.err


# -- the hook --

def test_hook_adds_at_started_and_removes_at_release(host):
    xml = live_xml()
    r = host.hook("web", "started", "begin", xml)
    assert (r.returncode, r.stderr) == (0, b"")
    assert host.own() == {GUEST_MAC}
    assert f"web started begin: fdb added {GUEST_MAC} on enp1s0f0" in host.hook_log.read_text()
    r = host.hook("web", "release", "end", xml, "destroyed")
    assert (r.returncode, r.stderr) == (0, b"")
    assert host.own() == set()
    assert f"web release end: fdb removed {GUEST_MAC} on enp1s0f0" in host.hook_log.read_text()
    assert json.loads(host.ledger.read_text())["entries"] == []


def test_hook_leaves_an_entry_it_did_not_add(host):
    host.set_tables(own={"enp1s0f0": [GUEST_MAC]})
    xml = live_xml()
    host.hook("web", "started", "begin", xml)
    host.hook("web", "release", "end", xml, "shutdown")
    assert host.own() == {GUEST_MAC}
    assert not [c for c in host.calls() if c.startswith("fdb del")]


@pytest.mark.parametrize("xml", [
    live_xml(kind="network", bridge="virbr0"),   # libvirt's NAT network: no NIC below it
    live_xml(bridge="nosuchbr"),
    "<domain type='kvm'><name>x</name><uuid>" + UUID + "</uuid><devices><interface type='user'>"
    "<mac address='52:54:00:00:00:09'/></interface></devices></domain>",
    # not even well-formed: were it parsed, the hook would say so on stderr
    live_xml(kind="network", bridge="virbr0").replace("</domain>", "<oops"),
], ids=["virbr0", "missing-bridge", "user", "not-parsed"])
def test_hook_leaves_other_domains_alone(host, xml):
    for op, subop in (("started", "begin"), ("release", "end")):
        r = host.hook("x", op, subop, xml)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert not host.calls() and not host.ledger.exists()


def test_hook_network_interface_whose_bridge_is_the_pfs(host, tmp_path):
    r = host.hook("web", "started", "begin", live_xml(kind="network", bridge="br0"))
    assert r.returncode == 0 and host.own() == {GUEST_MAC}


def test_hook_guest_with_a_vf_and_a_bridged_interface(host, tmp_path):
    """A guest that asks vfalloc for a VF and also sits on br0: both happen, one log line each."""
    host.s.write_config('[pools.lan]\npfs = ["enp1s0f1"]\n')
    host.env["VFALLOC_CONFIG"] = str(host.s.config)
    host.env["VFALLOC_HOTPLUG_CMD"] = f"{sys.executable} {REPO / 'tests/fakes/record_spawn.py'} {tmp_path / 'spawned'}"
    xml = live_xml().replace("<devices>", "<metadata><vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'>"
                             "<vfalloc:vf pool='lan'/></vfalloc:vfs></metadata><devices>")
    for op, subop in (("prepare", "begin"), ("started", "begin")):
        r = host.hook("web", op, subop, xml)
        assert (r.returncode, r.stderr) == (0, b""), r.stderr
    assert host.own() == {GUEST_MAC}
    log = host.hook_log.read_text()
    assert "web started begin: hot-plug of " in log and f"; fdb added {GUEST_MAC} on enp1s0f0" in log
    r = host.hook("web", "release", "end", xml, "shutdown")
    assert (r.returncode, r.stderr) == (0, b"")
    assert host.own() == set()
    assert "web release end: released " in host.hook_log.read_text()
    assert f"fdb removed {GUEST_MAC} on enp1s0f0" in host.hook_log.read_text()


def test_hook_failure_does_not_stop_the_guest(host):
    host.env["FAKE_BRIDGE_FAIL"] = "RTNETLINK answers: Operation not supported"
    r = host.hook("web", "started", "begin", live_xml())
    assert r.returncode == 0
    assert b"vfalloc: warning: fdb failed" in r.stderr and b"Operation not supported" in r.stderr
    assert "fdb failed" in host.hook_log.read_text()


def test_hook_reconnect_syncs(host):
    host.running()
    r = host.hook("web", "reconnect", "begin", live_xml())
    assert r.returncode == 0, r.stderr
    assert host.own() == {GUEST_MAC, BR_MAC, VETH_PEER}
    assert "web reconnect begin: fdb sync added" in host.hook_log.read_text()


# -- host check, the boot unit, numvfs --

def test_host_check_warns_with_the_fix(host):
    host.running()
    res = host.s.run("host", "check", "--json")
    fdb = [c for c in json.loads(res.out)["checks"] if c["check"] == "fdb"]
    assert [(c["status"], c["subject"], c["fix"]) for c in fdb] == [("warn", "enp1s0f0", "`vfalloc fdb sync`")]
    assert GUEST_MAC in fdb[0]["message"] and "domain web" in fdb[0]["message"]
    host.run("fdb", "sync")
    res = host.s.run("host", "check", "--json")
    assert [c["status"] for c in json.loads(res.out)["checks"] if c["check"] == "fdb"] == ["ok"]


def test_host_check_fix_when_switched_off(host):
    host.running()
    host.s.write_config('[pf.enp1s0f0]\nfdb = false\n')
    res = host.s.run("host", "check", "--json")
    fdb = [c for c in json.loads(res.out)["checks"] if c["check"] == "fdb"]
    assert f"bridge fdb add {GUEST_MAC} dev enp1s0f0 self" in fdb[0]["fix"]


def test_boot_unit_syncs_after_the_vfs_are_made(host, tmp_path):
    host.s.write_config('[pools.lan]\npfs = ["enp1s0f0"]\nnumvfs = 7\n')
    (tmp_path / "root").mkdir()
    res = host.s.run("host", "persist", "--root", str(tmp_path / "root"), "--exec", "/usr/bin/vfalloc")
    assert res.code == 0, res.err
    unit = (tmp_path / "root/etc/systemd/system/vfalloc-numvfs.service").read_text().splitlines()
    starts = [i for i, ln in enumerate(unit) if ln.startswith("ExecStart=")]
    post = [i for i, ln in enumerate(unit) if ln.startswith("ExecStartPost=")]
    assert len(post) == 1 and post[0] > max(starts)
    assert unit[post[0]] == f"ExecStartPost=-/usr/bin/vfalloc fdb sync --config {host.s.config}"


def test_numvfs_puts_the_entries_back(host):
    from fakekernel import FakeKernel, command

    host.running()
    host.run("fdb", "sync")
    host.set_tables(learned={"br0": [["veth0", VETH_PEER]]})  # the PF's reset emptied its table
    code, out, err = command(host.s, FakeKernel(host.s.fs), "enp1s0f0", "3")
    assert code == 0, err
    assert "enp1s0f0: 3 VFs (was 7)" in out
    assert f"fdb: added {GUEST_MAC} to enp1s0f0" in out and f"fdb: added {BR_MAC} to enp1s0f0" in out
    assert host.own() == {GUEST_MAC, BR_MAC, VETH_PEER}


# -- iproute2's real `bridge` --

def _netns_possible() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("bridge"):
        return "iproute2 (ip, bridge) is not installed"
    return None


@pytest.mark.skipif(_netns_possible() is not None, reason=_netns_possible() or "")
def test_real_bridge_command_in_a_namespace():
    """BridgeTool against the kernel: add, see, add again (EEXIST), delete, delete again
    (ENOENT) on a veth, and what a bridge over it learnt, in a namespace of the test's own."""
    ns = f"vfalloc-test-{uuidlib.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
    try:
        for cmd in (["link", "add", "d0", "type", "veth", "peer", "name", "d1"], ["link", "add", "b0", "type", "bridge"],
                    ["link", "set", "d0", "master", "b0"], ["link", "set", "b0", "up"], ["link", "set", "d0", "up"],
                    ["link", "set", "d1", "up"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        # what the bridge would learn from a container behind d0
        subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "add", "52:54:00:00:00:42", "dev", "d0", "master",
                        "dynamic"], check=True)
        script = (
            "import json; from vfalloc.fdb.bridge import BridgeTool\n"
            "t = BridgeTool()\n"
            "m = '52:54:00:12:34:56'\n"
            "out = [t.add('d0', m), m in t.own('d0'), t.add('d0', m), t.delete('d0', m), m in t.own('d0'),"
            " t.delete('d0', m), ['d0', '52:54:00:00:00:42'] in [list(x) for x in t.learned('b0')],"
            " all(p == 'd0' for p, _ in t.learned('b0'))]\n"
            "print(json.dumps(out))\n")
        res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                             text=True, timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == [True, True, False, True, False, False, True, True]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
