"""`vfalloc request / start` and the hot-plug worker against libvirt's own test driver
(`test:///default`: in-process, no daemon, state kept while one connection is open). The same
code against the real daemon is in test_virt_libvirtd.py; these cover the argument checks, the
metadata round trip, a successful `vfalloc start` (the test driver starts any hostdev) and the
worker's decisions, fast."""

from __future__ import annotations

import io
import json

import pytest
from fakehost import i350
from lxml import etree

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

import vfalloc.hook  # noqa: E402
from vfalloc import domxml, hotplug  # noqa: E402
from vfalloc.model import PciAddress  # noqa: E402
from vfalloc.virt import DEFAULT_URI, resolve_uri  # noqa: E402

TEST_URI = "test:///default"
NS = domxml.NS
CONFIG = ('[pools.lan0]\npfs = ["enp1s0f0"]\n[pools.one]\npfs = ["enp1s0f1#0"]\n'
          '[pools.qat]\npfs = ["enp1s0f3"]\n')


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-0000000000{n:02d}"


class FakeLibvirt:
    """Domains defined in libvirt's test driver for one test, undefined after it."""

    def __init__(self, scratch):
        self.s = scratch
        self.conn = libvirt.open(TEST_URI)  # holds the driver's state for the test
        self.names: list[str] = []

    def define(self, n: int, requests: str = "", devices: str = "") -> libvirt.virDomain:
        meta = f'<metadata><vfalloc:vfs xmlns:vfalloc="{NS}">{requests}</vfalloc:vfs></metadata>' if requests else ""
        xml = (f"<domain type='test'><name>vt{n}</name><uuid>{uuid(n)}</uuid>{meta}"
               f"<memory unit='MiB'>64</memory><os><type>hvm</type></os><devices>{devices}</devices></domain>")
        self.names.append(f"vt{n}")
        return self.conn.defineXML(xml)

    def saved(self, name: str) -> str:
        return self.conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def live(self, name: str) -> str:
        return self.conn.lookupByName(name).XMLDesc(0)

    def run(self, *argv: str):
        return self.s.run(*argv, "--connect", TEST_URI)

    def leases(self) -> list[dict]:
        return json.loads(self.s.state.read_text())["leases"] if self.s.state.exists() else []

    def close(self) -> None:
        for name in self.names:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            try:
                dom.undefine()
            except libvirt.libvirtError:
                pass
        self.conn.close()


@pytest.fixture
def drv(scratch):
    i350(scratch.fs)
    scratch.write_config(CONFIG)
    d = FakeLibvirt(scratch)
    yield d
    d.close()


# -- connection URI --

@pytest.mark.parametrize("flag,env,expected", [
    (None, {}, DEFAULT_URI),
    (None, {"LIBVIRT_DEFAULT_URI": "qemu:///session"}, "qemu:///session"),
    ("test:///default", {"LIBVIRT_DEFAULT_URI": "qemu:///session"}, "test:///default"),
    ("", {}, DEFAULT_URI),
], ids=["default", "env", "flag-beats-env", "empty-flag"])
def test_uri_resolution(flag, env, expected):
    assert resolve_uri(flag, env) == expected


def test_unreachable_libvirt_is_one_line(drv):
    r = drv.s.run("request", "vm1", "--connect", "qemu:///system?socket=/nonexistent/libvirt-sock")
    assert r.code == 1 and r.err.count("\n") == 1
    assert r.err.startswith("vfalloc: cannot connect to libvirt at qemu:///system?socket=/nonexistent/libvirt-sock: ")
    assert "libvirt: " not in r.err.split(": ", 2)[2][:9]  # libvirt's own stderr printer stays quiet


# -- request --

def test_request_round_trip_through_the_metadata_api(drv):
    drv.define(1)
    r = drv.run("request", "vt1")
    assert (r.code, r.out) == (0, "vt1 asks for no VFs; add one with `vfalloc request vt1 --pool POOL`\n")
    assert drv.run("request", "vt1", "--pool", "lan0").code == 0
    r = drv.run("request", "vt1", "--pool", "one", "--mac", "52:54:00:AA:BB:CC", "--vlan", "20",
                "--trust", "on", "--spoofchk", "off", "--required", "yes")
    assert r.code == 0, r.err
    assert r.out == ("vt1 asks for 2 VFs:\n  ua-vfalloc-0  pool=lan0\n"
                     "  ua-vfalloc-1  pool=one mac=52:54:00:aa:bb:cc vlan=20 trust=on spoofchk=off required=yes\n")
    assert drv.run("request", "vt1", "--pool", "qat", "--type", "hostdev").code == 0
    saved = domxml.read_domain(drv.saved("vt1")).requests
    assert [(q.index, q.pool, q.mac, q.vlan, q.type, q.required) for q in saved] == [
        (0, "lan0", None, None, "interface", False), (1, "one", "52:54:00:aa:bb:cc", 20, "interface", True),
        (2, "qat", None, None, "hostdev", False)]
    # the saved XML carries the element in vfalloc's namespace, with vfalloc's prefix
    meta = etree.fromstring(drv.saved("vt1").encode()).find("metadata")
    assert [el.tag for el in meta] == [f"{{{NS}}}vfs"] and meta[0].prefix == "vfalloc"
    shown = json.loads(drv.run("request", "vt1", "--json").out)
    assert [x["alias"] for x in shown] == ["ua-vfalloc-0", "ua-vfalloc-1", "ua-vfalloc-2"]
    r = drv.run("request", "vt1", "--clear", "--pool", "qat")
    assert r.out == "vt1 asks for 1 VF:\n  ua-vfalloc-0  pool=qat\n"
    r = drv.run("request", "vt1", "--clear")
    assert (r.code, r.out) == (0, "vt1 asks for no VFs\n")
    assert NS not in drv.saved("vt1")


def test_request_by_uuid(drv):
    drv.define(2)
    assert drv.run("request", uuid(2), "--pool", "lan0").code == 0
    assert domxml.read_domain(drv.saved("vt2")).requests[0].pool == "lan0"


@pytest.mark.parametrize("argv,code,message", [
    (["--pool", "lan0", "--vlan", "4095"], 2, "vlan=4095 is out of range"),
    (["--pool", "lan0", "--vlan", "x"], 2, "vlan='x' is not a number"),
    (["--pool", "lan0", "--mac", "52:54:00:aa:bb"], 2, "is not a MAC address"),
    (["--pool", "lan0", "--mac", "01:00:5e:00:00:01"], 2, "multicast"),
    (["--pool", "qat", "--type", "hostdev", "--mac", "52:54:00:aa:bb:cc"], 2, "--mac needs --type interface"),
    (["--pool", "qat", "--type", "hostdev", "--vlan", "20"], 2, "--vlan needs --type interface"),
    (["--vlan", "20"], 2, "--vlan needs --pool"),
    (["--pool", "wan"], 1, "no pool named wan for vt3 (pools: lan0, one, qat)"),
    (["--pool", "lan0", "--trust", "maybe"], 2, "invalid choice: 'maybe'"),
    (["--pool", "lan0", "--required", "1"], 2, "invalid choice: '1'"),
], ids=["vlan-range", "vlan-letters", "short-mac", "multicast-mac", "hostdev-mac", "hostdev-vlan",
        "option-without-pool", "unknown-pool", "bad-trust", "bad-required"])
def test_bad_request_changes_nothing(drv, argv, code, message):
    drv.define(3, '<vfalloc:vf pool="lan0"/>')
    before = drv.saved("vt3")
    r = drv.run("request", "vt3", *argv)
    assert r.code == code and r.err.count("\n") == 1 and message in r.err, r.err
    assert r.out == "" and drv.saved("vt3") == before


def test_unknown_domain_is_one_line(drv):
    r = drv.run("request", "nosuchvm", "--pool", "lan0")
    assert r.code == 2 and r.err == f"vfalloc: no domain named nosuchvm at {TEST_URI}; see `virsh -c {TEST_URI} list --all`\n"


def test_request_on_a_running_domain_changes_the_saved_config_only(drv):
    dom = drv.define(4, '<vfalloc:vf pool="lan0"/>')
    dom.create()
    r = drv.run("request", "vt4", "--pool", "qat", "--type", "hostdev")
    assert r.code == 0 and r.out.endswith("vt4 is running: it keeps the VFs it has; the change applies from its next start\n")
    assert len(domxml.read_domain(drv.saved("vt4")).requests) == 2
    assert len(domxml.read_domain(drv.live("vt4")).requests) == 1


def test_unreadable_request_in_saved_config(drv):
    drv.define(5, '<vfalloc:vf pool="lan0" vlan="nope"/>')
    r = drv.run("request", "vt5", "--pool", "lan0")
    assert r.code == 2 and "--clear --pool" in r.err and r.err.count("\n") == 1
    assert drv.run("request", "vt5", "--clear", "--pool", "lan0").code == 0
    assert [q.pool for q in domxml.read_domain(drv.saved("vt5")).requests] == ["lan0"]


# -- start --

def test_start_puts_the_vfs_into_the_live_xml_only(drv):
    drv.define(6, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="qat" type="hostdev"/>')
    r = drv.run("start", "vt6")
    assert r.code == 0, r.err
    live = domxml.read_domain(drv.live("vt6"))
    leases = drv.leases()
    assert [(d.index, str(d.address), d.type) for d in live.devices] == [
        (x["index"], x["vf"], x["type"]) for x in leases]
    assert [x["pool"] for x in leases] == ["lan0", "qat"] and live.devices[0].mac == leases[0]["mac"]
    assert domxml.read_domain(drv.saved("vt6")).devices == ()          # saved config keeps only the request
    assert len(domxml.read_domain(drv.saved("vt6")).requests) == 2
    assert drv.conn.lookupByName("vt6").isActive()
    # no hook runs in the test driver: vfalloc start marks the leases itself and says so
    assert [x["phase"] for x in leases] == ["attached", "attached"]
    assert "the vfalloc hook did not claim" in r.err
    assert r.out.splitlines()[-1] == "started vt6; its saved config keeps only the request"


def test_start_keeps_a_pinned_device(drv):
    vf = "0000:01:10.4"  # VF 1 of enp1s0f0
    device = ("<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x01' "
              "slot='0x10' function='0x4'/></source><alias name='ua-vfalloc-0'/></interface>")
    drv.define(7, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="lan0"/>', device)
    assert drv.run("start", "vt7").code == 0
    live = domxml.read_domain(drv.live("vt7"))
    assert str(live.devices[0].address) == vf and len(live.devices) == 2
    assert [x["vf"] for x in drv.leases()][0] == vf


def test_failed_start_gives_the_vfs_back(drv):
    """The test driver refuses VIR_DOMAIN_START_PAUSED: a real libvirt refusal after the lease."""
    drv.define(9, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="one"/>')
    assert drv.s.run("alloc", "--domain", "keep", "--uuid", uuid(98), "--pool", "qat").code == 0
    before = drv.leases()
    r = drv.run("start", "vt9", "--paused")
    assert r.code == 1 and r.err.count("\n") == 1 and r.out == ""
    assert r.err.startswith("vfalloc: cannot start vt9: libvirt: unsupported flags (0x1) in function testDomainCreateXML; "
                            "VFs 0000:01:10.0, 0000:01:10.1 given back")
    assert drv.leases() == before                                   # only the other domain's lease is left
    assert not drv.conn.lookupByName("vt9").isActive()
    assert domxml.read_domain(drv.saved("vt9")).devices == ()


@pytest.mark.parametrize("setup,argv,code,message", [
    ("running", ["vt8"], 2, "vt8 is already running"),
    ("no-request", ["vt8"], 2, "vt8 asks for no VFs"),
    ("empty-pool", ["vt8"], 1, "no free VF in pool one for vt8 (1 of 1 leased: other)"),
    ("unknown-pool", ["vt8"], 1, "no pool named wan for vt8"),
    ("none", ["nosuchvm"], 2, "no domain named nosuchvm"),
], ids=["already-running", "no-request", "empty-pool", "unknown-pool", "unknown-domain"])
def test_start_refusals_change_nothing(drv, setup, argv, code, message):
    requests = {"no-request": "", "unknown-pool": '<vfalloc:vf pool="wan"/>'}.get(setup, '<vfalloc:vf pool="one"/>')
    if setup != "none":
        dom = drv.define(8, requests)
        if setup == "running":
            dom.create()
    if setup == "empty-pool":
        assert drv.s.run("alloc", "--domain", "other", "--uuid", uuid(99), "--pool", "one").code == 0
    before = drv.leases()
    r = drv.run("start", *argv)
    assert r.code == code and r.err.count("\n") == 1 and message in r.err, r.err
    assert drv.leases() == before
    if setup not in ("none", "running"):
        assert not drv.conn.lookupByName("vt8").isActive()


# -- hot-plug worker (the test driver hot-plugs a <hostdev> but refuses <interface type='hostdev'>) --

def _prepare(drv, n: int):
    """The hook's `prepare begin`, in-process: leases in phase pending-attach."""
    xml = drv.saved(f"vt{n}")
    err = io.StringIO()
    code = vfalloc.hook.main([f"vt{n}", "prepare", "begin", "-"], stdin=io.BytesIO(xml.encode()),
                             out=io.StringIO(), err=err, environ=drv.s.env())
    assert code == 0, err.getvalue()


def _worker_env(drv, tmp_path) -> dict:
    env = drv.s.env()
    env.update(LIBVIRT_DEFAULT_URI=TEST_URI, VFALLOC_HOOK_LOG=str(tmp_path / "hook.log"))
    return env


@pytest.mark.parametrize("required", ["no", "yes"], ids=["optional", "required"])
def test_worker_attaches_what_it_can_and_destroys_only_when_required(drv, tmp_path, required):
    dom = drv.define(10, f'<vfalloc:vf pool="lan0" required="{required}"/><vfalloc:vf pool="qat" type="hostdev"/>')
    _prepare(drv, 10)
    leased = drv.leases()
    assert [x["phase"] for x in leased] == ["pending-attach", "pending-attach"]
    dom.create()
    assert hotplug.main(["vt10", uuid(10)], environ=_worker_env(drv, tmp_path)) == 1
    log = (tmp_path / "hook.log").read_text().splitlines()
    assert log[0] == ("vt10 hotplug: cannot hot-plug a VF into vt10: libvirt: Operation not supported: hotplug of "
                      f"interface type of hostdev is not implemented yet; VF {leased[0]['vf']} (lan0) given back")
    if required == "no":  # the interface failed and is back; the hostdev went in; the domain runs
        assert log[1:] == [f"vt10 hotplug: attached {leased[1]['vf']} (qat) as ua-vfalloc-1"]
        assert [(x["vf"], x["phase"]) for x in drv.leases()] == [(leased[1]["vf"], "attached")]
        live = domxml.read_domain(drv.live("vt10"))
        assert [(d.index, str(d.address), d.type) for d in live.devices] == [(1, leased[1]["vf"], "hostdev")]
        assert dom.isActive()
    else:                 # the required one failed: the domain is stopped (its release hook frees the rest)
        assert log[1:] == ['vt10 hotplug: request 0 is required="yes": destroyed vt10']
        assert not dom.isActive()


def test_worker_vf_gone(drv, tmp_path):
    dom = drv.define(11, '<vfalloc:vf pool="one"/>')
    _prepare(drv, 11)
    vf = drv.leases()[0]["vf"]
    (drv.s.sysfs / "bus" / "pci" / "devices" / vf / "physfn").unlink()
    dom.create()
    assert hotplug.main(["vt11", uuid(11)], environ=_worker_env(drv, tmp_path)) == 1
    assert f"VF {vf} no longer exists" in (tmp_path / "hook.log").read_text()
    assert drv.leases() == [] and dom.isActive()


def test_worker_domain_never_ran(drv, tmp_path):
    drv.define(12, '<vfalloc:vf pool="lan0"/>')
    _prepare(drv, 12)
    assert hotplug.main(["vt12", uuid(12)], environ=_worker_env(drv, tmp_path)) == 1
    assert "the domain stopped before its VFs were hot-plugged" in (tmp_path / "hook.log").read_text()


def test_worker_finds_a_device_already_there(drv, tmp_path):
    drv.define(13, '<vfalloc:vf pool="one"/>')
    _prepare(drv, 13)
    lease = drv.leases()[0]
    request = domxml.read_domain(drv.saved("vt13")).requests[0]
    xml = domxml.add_devices(drv.saved("vt13"), [(request, PciAddress.parse(lease["vf"]), lease["mac"])])
    drv.conn.createXML(xml.decode(), 0)
    assert hotplug.main(["vt13", uuid(13)], environ=_worker_env(drv, tmp_path)) == 0
    assert [x["phase"] for x in drv.leases()] == ["attached"]
    assert f"vt13 hotplug: found {lease['vf']} (one) as ua-vfalloc-0" in (tmp_path / "hook.log").read_text()


def test_worker_without_pending_leases_does_nothing(drv, tmp_path):
    assert hotplug.main(["vt14", uuid(14)], environ=_worker_env(drv, tmp_path)) == 0
    assert not (tmp_path / "hook.log").exists()


def test_worker_usage():
    assert hotplug.main(["only-one"], environ={}) == 2


def test_list_asks_libvirt_at_connect_which_domains_run(drv):
    drv.define(7, '<vfalloc:vf pool="lan0"/>')
    assert drv.run("start", "vt7").code == 0
    rows = json.loads(drv.run("list", "--json").out)
    assert [(r["domain"], r["state"]) for r in rows if r["domain"]] == [("vt7", "leased")]
    drv.conn.lookupByName("vt7").destroy()  # the test driver runs no hook: the lease stays behind
    rows = json.loads(drv.run("list", "--json").out)
    assert [(r["domain"], r["state"], r["reason"]) for r in rows if r["domain"]] == [
        ("vt7", "stale", "its domain is not running")]
    pools = json.loads(drv.run("pools", "--json").out)
    assert [(p["pool"], p["stale"]) for p in pools if p["stale"]] == [("lan0", 1)]
