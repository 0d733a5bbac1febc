"""What vfalloc accepts is what it checked: a MAC or UUID with a trailing newline, names that
would forge a log line or a `list` row, a hostdev request with a VLAN or MAC, a vfalloc request
written with character references or in UTF-16/32, a lease table that breaks its own rules, and a
hook_log that is a symlink or would be created writable by everyone."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from fakehost import i350
from hookfiles import hook_file
from test_hook import Hook, domain_xml, uuid
from test_one_line import files_of, one_line, run_exe

from vfalloc.errors import StateError
from vfalloc.model import Lease, LeaseTable
from vfalloc.state import StateStore

UUID = "00000000-0000-0000-0000-000000000001"
ALLOC = ["alloc", "--domain", "vm1", "--uuid", UUID, "--pool", "lan"]


@pytest.fixture
def host(scratch):
    i350(scratch.fs, numvfs=4, ports=2)
    scratch.write_config('[pools.lan]\npfs = ["enp1s0f0"]\n')
    return scratch


def refused_everywhere(host, argv: list[str]) -> str:
    """`vfalloc ARGV` through main() and the executable: one line each, no file changed."""
    before = files_of(host.root)
    r = host.run(*argv)
    line = one_line(r.code, r.err)
    code, err = run_exe(host, *argv)
    assert one_line(code, err) == line
    assert files_of(host.root) == before
    return line


# -- the command line --

ALLOC_REFUSED = {
    "mac-newline": (["--mac", "52:54:00:12:34:56\n"], "mac="),
    "uuid-newline": (["--uuid", UUID + "\n"], "UUID"),
    "domain-newline": (["--domain", "vm1\nvfalloc: vm2 prepare begin: leased 0000:01:10.1"], "domain name"),
    "domain-escape": (["--domain", "vm1\x1b[2J"], "domain name"),
    "domain-empty": (["--domain", ""], "domain name"),
    "hostdev-vlan": (["--type", "hostdev", "--vlan", "10"], "vlan"),
    "hostdev-mac": (["--type", "hostdev", "--mac", "52:54:00:12:34:56"], "mac"),
}


@pytest.mark.parametrize("extra, words", ALLOC_REFUSED.values(), ids=ALLOC_REFUSED.keys())
def test_alloc_refuses(host, extra, words):
    assert words in refused_everywhere(host, [*ALLOC, *extra])


def test_release_refuses_a_uuid_with_a_newline(host):
    assert host.run(*ALLOC).code == 0
    assert "UUID" in refused_everywhere(host, ["release", "--uuid", UUID + "\n"])


def test_hostdev_alloc_without_vlan_or_mac_is_leased(host):
    r = host.run(*ALLOC, "--type", "hostdev", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["type"] == "hostdev" and json.loads(r.out)["vlan"] is None


# -- the hook --

@pytest.fixture
def hook(host, tmp_path):
    return Hook(host, tmp_path)


@pytest.mark.parametrize("attrs, words", [
    ('mac="52:54:00:12:34:56&#10;"', "mac="),
    ('mac="52:54:00:12:34:56&#13;"', "mac="),
], ids=["mac-newline", "mac-return"])
def test_hook_refuses_a_request_with_a_trailing_newline(hook, attrs, words):
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, f'<vfalloc:vf pool="lan" {attrs}/>'))
    assert words in one_line(r.returncode, r.stderr.decode())
    assert hook.leases() == []


def test_hook_refuses_a_domain_name_with_a_control_character(hook):
    xml = domain_xml(1, '<vfalloc:vf pool="lan"/>').replace("<name>vm1</name>", "<name>vm1&#9;x</name>")
    r = hook.run("vm1", "prepare", "begin", xml=xml)
    assert "name" in one_line(r.returncode, r.stderr.decode())
    assert hook.leases() == []


def test_a_forged_name_on_the_hook_command_line_stays_one_log_line(hook):
    """libvirt passes the domain name as argv[1]; whatever it holds, the log gets one line."""
    forged = "vm1 prepare begin: nothing to do\nvm2 release end: released 0000:01:10.0"
    r = hook.run(forged, "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan"/>'))
    assert r.returncode == 0, r.stderr
    lines = hook.log.read_text().splitlines()
    assert len(lines) == 1 and "\\n" in lines[0] and lines[0].endswith("(lan, pending-attach)")


# The same request, written as libvirt never writes it but as XML allows: the byte pre-check must
# not take these for domains that ask for nothing.
REQUEST = '<vfalloc:vf pool="lan"/>'
DISGUISED = {
    "charref-namespace": lambda x: x.replace('xmlns:vfalloc="urn:vfalloc:1"', 'xmlns:vfalloc="&#117;rn:vfalloc:1"'),
    "hex-charref-namespace": lambda x: x.replace('xmlns:vfalloc="urn:vfalloc:1"',
                                                 'xmlns:vfalloc="urn:vf&#x61;lloc:1"'),
    "utf-16": lambda x: ('<?xml version="1.0" encoding="UTF-16"?>' + x).encode("utf-16"),
    "utf-16-be": lambda x: ('<?xml version="1.0" encoding="UTF-16BE"?>' + x).encode("utf-16-be"),
    "utf-32": lambda x: ('<?xml version="1.0" encoding="UTF-32"?>' + x).encode("utf-32"),
    "latin-1-declared": lambda x: ('<?xml version="1.0" encoding="ISO-8859-1"?>' + x).encode("latin-1"),
}


@pytest.mark.parametrize("disguise", DISGUISED.values(), ids=DISGUISED.keys())
def test_hook_sees_a_request_however_it_is_written(hook, disguise):
    xml = disguise(domain_xml(1, REQUEST))
    data = xml if isinstance(xml, bytes) else xml.encode()
    proc = subprocess.run(hook_argv(hook, "vm1", "prepare", "begin"), input=data, env=hook.env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [(x["domain"], x["pool"]) for x in hook.leases()] == [("vm1", "lan")]


def test_xml_in_an_encoding_the_byte_test_cannot_see_is_read_or_refused_not_skipped(hook):
    """EBCDIC (IBM037): the bytes of the namespace do not show. Where lxml's libxml2 cannot read
    the encoding (PyPI's wheels), the start is refused in one line; where it can (Debian's
    python3-lxml over the system's iconv), the request is read and its VF leased. Never let
    through as a domain that asks for nothing."""
    xml = ('<?xml version="1.0" encoding="IBM037"?>' + domain_xml(1, REQUEST)).encode("cp037")
    proc = subprocess.run(hook_argv(hook, "vm1", "prepare", "begin"), input=xml, env=hook.env,
                          capture_output=True, timeout=60)
    if proc.returncode == 0:
        assert [x["domain"] for x in hook.leases()] == ["vm1"], proc.stderr
    else:
        assert "vm1" in one_line(proc.returncode, proc.stderr.decode())
        assert hook.leases() == []


def test_hook_sees_a_device_alias_written_with_character_references(hook):
    """A restore of a domain holding ua-vfalloc-0, its alias written as &#117;a-vfalloc-0."""
    device = ("<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x01' "
              "slot='0x10' function='0x0'/></source><alias name='&#117;a-vfalloc-0'/></interface>")
    xml = domain_xml(1, devices=device)
    r = hook.run("vm1", "restore", "begin", xml=xml)
    assert r.returncode == 0, r.stderr
    assert [(x["vf"], x["pool"]) for x in hook.leases()] == [("0000:01:10.0", "lan")]


def hook_argv(hook, *args: str) -> list[str]:
    return [hook_file(), *args, "-"]


def test_plain_xml_without_vfalloc_is_still_skipped(hook):
    """The fast path stays: a domain that asks for nothing leaves no state file, not even a lock."""
    r = hook.run("web", "prepare", "begin", xml=domain_xml(7, extra="<description>a &amp; b</description>"))
    assert (r.returncode, r.stderr) == (0, b"")
    assert not hook.s.state.parent.exists()


# -- the lease table --

def lease(n: int, vf: str = "0000:01:10.0", **changes) -> dict:
    base = {"vf": vf, "pf": "0000:01:00.0", "pool": "lan", "domain": f"vm{n}", "uuid": uuid(n), "index": 0,
            "mac": None, "vlan": None, "since": "2026-01-01T00:00:00Z",
            "boot_id": "11111111-2222-3333-4444-555555555555", "phase": "reserved"}
    return base | changes


BROKEN_TABLES = {
    "two-leases-one-vf": [lease(1), lease(2)],
    "two-leases-one-request": [lease(1), lease(1, vf="0000:01:10.4")],
    "vf-not-an-address": [lease(1, vf="eth0")],
    "pf-not-an-address": [lease(1, pf="x")],
    "uuid-bad": [lease(1, uuid="nope")],
    "uuid-newline": [lease(1, uuid=uuid(1) + "\n")],
    "domain-newline": [lease(1, domain="vm1\nforged")],
    "domain-empty": [lease(1, domain="")],
    "pool-newline": [lease(1, pool="lan\n")],
    "index-negative": [lease(1, index=-1)],
    "index-text": [lease(1, index="0")],
    "index-bool": [lease(1, index=True)],
    "mac-newline": [lease(1, mac="52:54:00:12:34:56\n")],
    "mac-multicast": [lease(1, mac="01:00:5e:00:00:01")],
    "vlan-range": [lease(1, vlan=5000)],
    "vlan-text": [lease(1, vlan="10")],
    "phase-unknown": [lease(1, phase="maybe")],
    "type-unknown": [lease(1, type="vdpa")],
    "trust-bad": [lease(1, trust="yes")],
    "required-text": [lease(1, required="no")],
    "since-number": [lease(1, since=5)],
    "boot-id-list": [lease(1, boot_id=[])],
    "lease-not-object": ["0000:01:10.0"],
    "missing-field": [{k: v for k, v in lease(1).items() if k != "uuid"}],
}


@pytest.mark.parametrize("leases", BROKEN_TABLES.values(), ids=BROKEN_TABLES.keys())
def test_a_broken_table_is_refused_on_load_with_the_way_out(host, tmp_path, leases):
    host.state.parent.mkdir(parents=True)
    host.state.write_text(json.dumps({"version": 1, "leases": leases, "last": {}}))
    line = refused_everywhere(host, ["list"])
    assert str(host.state) in line and "mv " in line
    assert "mv " in refused_everywhere(host, ALLOC)
    hook = Hook(host, tmp_path)
    before = host.state.read_bytes()
    r = hook.run("vm3", "prepare", "begin", xml=domain_xml(3, '<vfalloc:vf pool="lan"/>'))
    assert "mv " in one_line(r.returncode, r.stderr.decode())
    assert host.state.read_bytes() == before


def test_a_broken_table_is_never_written(tmp_path):
    store = StateStore(tmp_path / "state.json")
    good = Lease.from_json(lease(1))
    with store.transaction() as txn:
        txn.table = LeaseTable((good,))
    before = (tmp_path / "state.json").read_bytes()
    for broken in (LeaseTable((good, Lease.from_json(lease(2)))),
                   LeaseTable((good, Lease.from_json(lease(1, vf="0000:01:10.4"))))):
        with pytest.raises(StateError, match="not written"):
            with store.transaction() as txn:
                txn.table = broken
        assert (tmp_path / "state.json").read_bytes() == before


def test_a_bad_last_map_is_refused(host):
    host.state.parent.mkdir(parents=True)
    host.state.write_text(json.dumps({"version": 1, "leases": [], "last": {uuid(1): {"0": "eth0\n"}}}))
    assert "mv " in refused_everywhere(host, ["list"])


# -- hook_log --

def test_hook_log_is_not_followed_through_a_symlink(hook, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    hook.log.symlink_to(target)
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan"/>'))
    assert (r.returncode, r.stderr) == (0, b"") and len(hook.leases()) == 1
    assert target.read_text() == "keep\n" and hook.log.is_symlink()


def test_hook_log_is_not_created_world_writable_under_umask_000(hook):
    proc = subprocess.run(hook_argv(hook, "vm1", "prepare", "begin"),
                          input=domain_xml(1, '<vfalloc:vf pool="lan"/>').encode(), env=hook.env,
                          capture_output=True, timeout=60, preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    mode = stat.S_IMODE(hook.log.stat().st_mode)
    assert mode & 0o022 == 0, oct(mode)
    assert hook.log.read_text().count("\n") == 1
