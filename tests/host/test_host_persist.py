"""`vfalloc host persist`: the systemd unit and udev rules that re-create the pools' VFs at boot,
checked by systemd's own verifier where it exists."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from fakehost import i350

from vfalloc.host import persist

CONFIG = """
[pools.lan0]
pfs = ["enp1s0f0", "enp1s0f1"]
numvfs = 7

[pf.enp1s0f1]
numvfs = 4
"""
UNIT = "etc/systemd/system/vfalloc-numvfs.service"
RULES = "etc/udev/rules.d/70-vfalloc-numvfs.rules"
WANTS = "etc/systemd/system/multi-user.target.wants/vfalloc-numvfs.service"


@pytest.fixture
def host(scratch):
    i350(scratch.fs, numvfs=0)
    scratch.write_config(CONFIG)
    scratch.target = scratch.root / "target"
    scratch.target.mkdir()
    scratch.exe = scratch.root / "bin" / "vfalloc"
    scratch.exe.parent.mkdir()
    scratch.exe.write_text("#!/bin/sh\nexit 0\n")
    scratch.exe.chmod(0o755)
    return scratch


def run(host, *args):
    return host.run("host", "persist", "--root", str(host.target), "--exec", str(host.exe), *args)


def files(host) -> dict[str, str]:
    return {str(p.relative_to(host.target)): p.read_text() for p in host.target.rglob("*") if p.is_file()}


def test_unit_carries_one_execstart_per_configured_pf(host):
    res = run(host)
    assert res.code == 0, res.err
    text = (host.target / UNIT).read_text()
    # the scratch config is not the default one: the unit names it (units get no VFALLOC_* env)
    assert re.findall(r"^ExecStart=.*$", text, re.M) == [
        f"ExecStart={host.exe} host numvfs 0000:01:00.0 7 --config {host.config}",
        f"ExecStart={host.exe} host numvfs 0000:01:00.1 4 --config {host.config}"]
    assert "After=network-pre.target NetworkManager.service networking.service systemd-networkd.service" in text
    assert "Before=libvirtd.service virtqemud.service" in text
    assert "After=sys-subsystem-net-devices-enp1s0f0.device sys-subsystem-net-devices-enp1s0f1.device" in text
    assert "Type=oneshot" in text and "WantedBy=multi-user.target" in text
    assert "enp1s0f0=7, enp1s0f1=4" in res.out and "systemctl enable" in res.out


def test_pf_arguments_override_the_config_and_add_pfs(host):
    res = run(host, "enp1s0f1=2", "0000:01:00.3=5", "--autoprobe", "off")
    assert res.code == 0, res.err
    text = (host.target / UNIT).read_text()
    assert f"ExecStart={host.exe} host numvfs 0000:01:00.1 2 --autoprobe off" in text
    assert f"ExecStart={host.exe} host numvfs 0000:01:00.3 5 --autoprobe off" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(host):
    assert run(host).code == 0
    assert verify_unit(host.target / UNIT) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_verifier_check_catches_a_broken_unit(host):
    """Proof that verify_unit can fail: systemd-analyze exits 0 on some errors, so the check reads
    what it says about our file."""
    assert run(host).code == 0
    broken = host.target / UNIT
    broken.write_text(broken.read_text().replace("Type=oneshot", "Type=oneshat"))
    assert any("oneshat" in line for line in verify_unit(broken))


def verify_unit(path) -> list[str]:
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if path.name in line]
    return ours + ([f"exit {proc.returncode}"] if proc.returncode else [])


def test_udev_rules_match_each_pf_by_address_after_its_driver_binds(host):
    res = run(host, "--method", "udev", "--autoprobe", "off")
    assert res.code == 0, res.err
    rules = [ln for ln in (host.target / RULES).read_text().splitlines() if ln and not ln.startswith("#")]
    assert rules == [
        'ACTION=="add|bind", SUBSYSTEM=="pci", KERNEL=="0000:01:00.0", DRIVER=="?*", ATTR{sriov_numvfs}=="0", '
        'ATTR{sriov_drivers_autoprobe}="0", ATTR{sriov_numvfs}="7"',
        'ACTION=="add|bind", SUBSYSTEM=="pci", KERNEL=="0000:01:00.1", DRIVER=="?*", ATTR{sriov_numvfs}=="0", '
        'ATTR{sriov_drivers_autoprobe}="0", ATTR{sriov_numvfs}="4"']
    for rule in rules:
        assert_udev_syntax(rule)
    assert "igb" not in "".join(rules)  # never "every igb NIC"


UDEV_KEY = re.compile(r'^(ACTION|SUBSYSTEM|KERNEL|DRIVER|ATTR\{[a-z_]+\})(==|=)"[^"]*"$')


def assert_udev_syntax(rule: str) -> None:
    """udev(7): comma-separated KEY op "value" pairs; match keys before the assignments."""
    pairs = [p.strip() for p in rule.split(",")]
    assert all(UDEV_KEY.match(p) for p in pairs), pairs
    ops = ["==" if "==" in p else "=" for p in pairs]
    assert ops == sorted(ops, key=lambda op: op != "=="), "assignments must come after the matches"


def _udevadm_verify() -> bool:
    if shutil.which("udevadm") is None:
        return False
    return subprocess.run(["udevadm", "verify", "--help"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _udevadm_verify(), reason="`udevadm verify` needs systemd >= 254 (this has an older udevadm)")
def test_udev_rules_pass_udevadm_verify(host):
    assert run(host, "--method", "udev").code == 0
    proc = subprocess.run(["udevadm", "verify", str(host.target / RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_switching_method_removes_the_other_file(host):
    assert run(host).code == 0
    res = run(host, "--method", "udev")
    assert res.code == 0
    assert set(files(host)) == {RULES}
    assert "(the other method)" in res.out


def test_second_run_is_unchanged(host):
    run(host)
    res = run(host)
    assert res.code == 0 and res.out.startswith("unchanged ")


def test_dry_run_prints_the_unit_and_writes_nothing(host):
    res = run(host, "--dry-run", "--enable")
    assert res.code == 0
    assert files(host) == {}
    assert f"+ExecStart={host.exe} host numvfs 0000:01:00.0 7" in res.out
    assert f"would run: systemctl --root={host.target} enable vfalloc-numvfs.service" in res.out


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl not installed")
def test_enable_and_remove(host):
    res = run(host, "--enable")
    assert res.code == 0, res.err
    assert (host.target / WANTS).is_symlink()
    res = run(host, "--remove")
    assert res.code == 0
    assert files(host) == {} and not (host.target / WANTS).is_symlink()
    assert run(host, "--remove").out == "nothing to remove\n"


@pytest.mark.parametrize("args, config, message", [
    ([], "", "no PF has a VF count to persist"),
    (["enp1s0f0=8"], None, "numvfs 8 is more than its sriov_totalvfs 7"),
    (["enp1s0f0"], None, "write PF=N"),
    (["enp9=2"], None, "write PF=N"),
    (["--exec", "vfalloc"], None, "systemd needs an absolute path"),
    (["--method", "udev", "--enable"], None, "--enable is for --method systemd"),
    (["--remove", "enp1s0f0=2"], None, "--remove takes no PF=N"),
    ([], '[pools.a]\npfs = ["enp1s0f0#0-2"]\nnumvfs = 3\n[pools.b]\npfs = ["enp1s0f0#3-6"]\nnumvfs = 7\n',
     "has numvfs 3 in pool a and 7 in pool b"),
], ids=["nothing-configured", "over-totalvfs", "no-count", "unknown-pf", "relative-exec",
        "enable-with-udev", "remove-with-spec", "pools-disagree"])
def test_bad_input_is_one_line_and_writes_nothing(host, args, config, message):
    run(host)
    before = files(host)
    if config is not None:
        host.write_config(config)
    res = run(host, *args)
    assert res.code == 2
    assert res.err.count("\n") == 1 and message in res.err
    assert files(host) == before


@pytest.mark.parametrize("netdev, unit", [
    ("enp1s0f0", "sys-subsystem-net-devices-enp1s0f0.device"),
    ("eth-lan.0", "sys-subsystem-net-devices-eth\\x2dlan.0.device"),
    ("ens5f0np0", "sys-subsystem-net-devices-ens5f0np0.device"),
], ids=["plain", "dash-and-dot", "mlx5-name"])
def test_device_unit_escaping(netdev, unit):
    assert persist.device_unit(netdev) == unit
    if shutil.which("systemd-escape"):
        proc = subprocess.run(["systemd-escape", netdev], capture_output=True, text=True)
        assert unit == f"sys-subsystem-net-devices-{proc.stdout.strip()}.device"


def test_persisted_reads_back_what_was_written():
    items = [persist.Target("0000:01:00.0", "enp1s0f0", 7)]
    assert persist.persisted(persist.render_unit(items, "/usr/bin/vfalloc", None), None) == {"0000:01:00.0": ("systemd", 7)}
    assert persist.persisted(None, persist.render_rules(items, False)) == {"0000:01:00.0": ("udev", 7)}


def test_pf_table_counts_for_a_pf_in_no_pool(host):
    host.write_config(CONFIG + "\n[pf.enp1s0f3]\nnumvfs = 2\n")
    res = run(host)
    assert res.code == 0, res.err
    assert re.findall(r"^ExecStart=\S+ host numvfs (\S+) (\d+)", (host.target / UNIT).read_text(), re.M) == [
        ("0000:01:00.0", "7"), ("0000:01:00.1", "4"), ("0000:01:00.3", "2")]


@pytest.mark.parametrize("command", [["host", "persist"], ["host", "check"], ["list"], ["pools"]],
                         ids=["persist", "check", "list", "pools"])
def test_pf_table_naming_no_pf_is_a_config_error(host, command):
    host.write_config(CONFIG + "\n[pf.enp9s0]\nnumvfs = 2\n")
    argv = [*command, "--root", str(host.target)] if command[0] == "host" else command
    res = host.run(*argv)
    shown = res.out if command == ["host", "check"] else res.err  # the doctor prints it as a fail line
    assert "[pf.enp9s0] names 'enp9s0', which is not an SR-IOV PF on this host" in shown
    assert "lspci -D" in shown
    assert res.code != 0
    assert files(host) == {}
