"""The start path through the real hook: a start runs with what the domain's XML asks now, one
verdict on the config wherever it is read, claims checked before the lock, and a lease reserved
by hand reaching a domain whose XML asks for no VF."""

import fcntl
import subprocess
import sys

import pytest
from fakehost import i350
from test_hook import Hook, _wait_for, domain_xml, iface, uuid

CONFIG = ('[pools.lan0]\npfs = ["enp1s0f0", "enp1s0f1#0-1"]\n'
          '[pools.san]\npfs = ["enp1s0f2#0"]\nvlan = 20\n')


@pytest.fixture
def hook(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config(CONFIG)
    return Hook(scratch, tmp_path)


def _hold_it(hook, how: str) -> str:
    """Leave vm1 holding a lease for request 0 of lan0 taken with VLAN 10, MAC ...:0a and trust
    off; returns its VF."""
    if how == "reserved-by-hand":
        r = hook.s.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "lan0", "--vlan", "10",
                       "--mac", "52:54:00:00:00:0a", "--trust", "off")
        assert r.code == 0, r.err
    else:  # taken by a start before the host crashed and rebooted
        xml = domain_xml(1, '<vfalloc:vf pool="lan0" vlan="10" mac="52:54:00:00:00:0a" trust="off"/>')
        assert hook.run("vm1", "prepare", "begin", xml=xml).returncode == 0
        hook.s.set_boot_id("99999999-2222-3333-4444-555555555555")
    (lease,) = hook.leases()
    assert (lease["vlan"], lease["mac"], lease["trust"]) == (10, "52:54:00:00:00:0a", "off")
    return lease["vf"]


@pytest.mark.parametrize("how", ["reserved-by-hand", "earlier-boot"])
def test_a_held_lease_takes_what_the_xml_asks_now(hook, how):
    vf = _hold_it(hook, how)
    hook.iplog.unlink(missing_ok=True)
    xml = domain_xml(1, '<vfalloc:vf pool="lan0" vlan="30" mac="52:54:00:00:00:0b" trust="on" required="yes"/>')
    r = hook.run("vm1", "prepare", "begin", xml=xml)
    assert r.returncode == 0, r.stderr
    (lease,) = hook.leases()
    assert lease["vf"] == vf  # the same VF ...
    assert (lease["vlan"], lease["mac"], lease["trust"], lease["required"], lease["phase"]) == (
        30, "52:54:00:00:00:0b", "on", True, "pending-attach")  # ... with what the domain asks now
    assert hook.iplog.read_text().splitlines() == ["link set dev enp1s0f0 vf 0 trust on"]
    # at every start, not only the first: stop, start again
    assert hook.run("vm1", "release", "end", "destroyed", xml=xml).returncode == 0
    assert hook.run("vm1", "prepare", "begin", xml=xml).returncode == 0
    assert hook.iplog.read_text().splitlines() == ["link set dev enp1s0f0 vf 0 trust on"] * 2


def test_a_request_without_settings_drops_the_old_ones(hook):
    _hold_it(hook, "reserved-by-hand")
    xml = domain_xml(1, '<vfalloc:vf pool="lan0"/>')
    assert hook.run("vm1", "prepare", "begin", xml=xml).returncode == 0
    (lease,) = hook.leases()
    assert lease["vlan"] is None and lease["trust"] is None and lease["mac"] != "52:54:00:00:00:0a"


def _refusal_of(hook, *argv) -> str:
    r = hook.s.run(*argv)
    assert r.code != 0 and r.err.count("\n") == 1, r
    return r.err


@pytest.mark.parametrize("config, names", [
    pytest.param(CONFIG + '[pools.other]\npfs = ["enp1s0f1#1-2"]\n', "VF 1 of 0000:01:00.1", id="overlapping-pools"),
    pytest.param(CONFIG + '[pools.ghost]\npfs = ["enp9s0"]\n', "enp9s0", id="missing-pf-in-another-pool"),
    pytest.param(CONFIG + '[pools.far]\npfs = ["enp1s0f3#5-9"]\n', "sriov_totalvfs", id="range-past-totalvfs"),
])
def test_the_hook_gives_a_config_the_verdict_every_command_gives(hook, config, names):
    """A start asking only for a sound pool is refused like every command refuses the config."""
    hook.s.write_config(config)
    listed = _refusal_of(hook, "list")
    assert names in listed
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert (r.returncode, r.stderr.decode()) == (1, listed)
    assert not hook.s.state.exists()


def test_two_devices_naming_one_vf_are_refused(hook):
    xml = domain_xml(1, devices=iface(0, "0000:01:10.0") + iface(3, "0000:01:10.0"))
    r = hook.run("vm1", "prepare", "begin", xml=xml)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1
    assert "names VF 0000:01:10.0 in two devices (ua-vfalloc-0 and ua-vfalloc-3)" in err
    assert hook.leases() == []


def test_more_devices_than_the_host_has_vfs_are_refused(hook):
    """28 VFs on the host; 29 devices on distinct addresses, the last ones no VF at all."""
    devices = "".join(iface(n, f"0000:01:{0x10 + n // 8:02x}.{n % 8}") for n in range(29))
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, devices=devices))
    err = r.stderr.decode()
    assert r.returncode == 1 and "names 29 VF devices, more than the 28 VFs" in err and err.count("\n") == 1
    assert hook.leases() == []


def test_a_huge_pinned_domain_is_refused_without_taking_the_lock(hook, tmp_path):
    """60,000 devices pinned to one VF: refused before the lease table's lock is taken. Another
    process holds the lock until the hook is done; had the hook waited for it, it would wait for
    its whole lock_timeout and the run would time out."""
    hook.s.write_config(CONFIG + "[settings]\nlock_timeout = 600\n")
    hook.s.state.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys\nfd = open(sys.argv[1], 'a')\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\nsys.stdin.read()\n", f"{hook.s.state}.lock"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        devices = iface(0, "0000:01:10.0") * 60_000
        xml = domain_xml(1, devices=devices.replace("ua-vfalloc-0", "ua-vfalloc-N"))
        xml = xml.replace("ua-vfalloc-N", "ua-vfalloc-{}").format(*range(60_000))
        r = hook.run("vm1", "prepare", "begin", xml=xml)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1 and "in two devices (ua-vfalloc-0 and ua-vfalloc-1)" in err, err
    with open(f"{hook.s.state}.lock") as fd:  # the lock is free again, and was never ours
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not hook.s.state.exists()


def test_a_lease_reserved_by_hand_reaches_a_domain_that_asks_for_no_vf(hook):
    r = hook.s.run("alloc", "--domain", "vm5", "--uuid", uuid(5), "--pool", "san")
    assert r.code == 0, r.err
    (reserved,) = hook.leases()
    listed = hook.s.run("list").out
    assert f"reserved: {reserved['vf']} for vm5, given to it at its next start" in listed
    plain = domain_xml(5)  # no vfalloc metadata, no vfalloc device
    r = hook.run("vm5", "prepare", "begin", xml=plain)
    assert r.returncode == 0, r.stderr
    (lease,) = hook.leases()
    assert (lease["vf"], lease["phase"], lease["vlan"]) == (reserved["vf"], "pending-attach", 20)
    assert hook.run("vm5", "started", "begin", xml=plain).returncode == 0
    assert _wait_for(hook.spawned)["argv"][-2:] == ["vm5", uuid(5)]
    r = hook.run("vm5", "release", "end", "shutdown", xml=plain)
    assert r.returncode == 0 and hook.leases() == []
    assert f"vm5 release end: released {reserved['vf']} (reason shutdown)" in hook.log.read_text()


def test_a_domain_named_by_no_lease_is_not_parsed(hook):
    """The table names vm5 only: another domain's plain XML, even unparsable, is not looked at."""
    assert hook.s.run("alloc", "--domain", "vm5", "--uuid", uuid(5), "--pool", "san").code == 0
    before = hook.s.state.read_bytes()
    for op, sub in (("prepare", "begin"), ("started", "begin"), ("release", "end")):
        r = hook.run("vm6", op, sub, xml="<domain><name>vm6</name><uuid>not parsed")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert hook.s.state.read_bytes() == before


def test_a_pf_table_for_a_pf_in_no_pool_does_not_refuse_a_start(hook):
    """[pf.NAME] may name a PF in no pool (its numvfs is for `host persist`): the hook reads
    that PF too, and gives the config the verdict `vfalloc list` gives, which accepts it."""
    hook.s.write_config(CONFIG + '[pf.enp1s0f3]\nnumvfs = 4\n')
    assert hook.s.run("list").code == 0
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert r.returncode == 0, r.stderr
    assert [x["pool"] for x in hook.leases()] == ["lan0"]
