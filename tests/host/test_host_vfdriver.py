"""`vfalloc host vf-driver`: the modprobe.d blacklist and sriov_drivers_autoprobe, with warnings."""

from __future__ import annotations

import pytest
from fakehost import connectx, i350

BL = "etc/modprobe.d/vfalloc-vf-blacklist.conf"


@pytest.fixture
def host(scratch):
    i350(scratch.fs, numvfs=2, ports=2)
    scratch.target = scratch.root / "target"
    scratch.target.mkdir()
    return scratch


def run(host, *args):
    return host.run("host", "vf-driver", "--root", str(host.target), *args)


def autoprobe(host, bdf):
    return (host.fs.root / "bus/pci/devices" / bdf / "sriov_drivers_autoprobe").read_text().strip()


def test_blacklist_writes_the_file_and_warns_about_vfs_in_use(host):
    res = run(host, "--blacklist", "igbvf")
    assert res.code == 0, res.err
    assert (host.target / BL).read_text().splitlines()[1:] == ["blacklist igbvf"]
    assert res.err.count("warning: the host uses") == 4          # 4 VFs with their interface up
    assert "interface enp1s0f0v0 is up" in res.err
    assert "update-initramfs -u" in res.out


def test_blacklist_is_idempotent_and_keeps_other_lines(host):
    (host.target / "etc/modprobe.d").mkdir(parents=True)
    (host.target / BL).write_text("# mine\nblacklist iavf\n")
    run(host, "--blacklist", "igbvf")
    res = run(host, "--blacklist", "igbvf")
    assert "unchanged (igbvf already blacklisted)" in res.out
    assert (host.target / BL).read_text() == "# mine\nblacklist iavf\nblacklist igbvf\n"
    run(host, "--blacklist", "igbvf", "--remove")
    assert (host.target / BL).read_text() == "# mine\nblacklist iavf\n"


def test_remove_last_line_removes_the_file(host):
    run(host, "--blacklist", "igbvf")
    res = run(host, "--blacklist", "igbvf", "--remove")
    assert res.code == 0 and "no longer blacklisted" in res.out
    assert not (host.target / BL).exists()


def test_no_warning_when_vfs_are_unused(scratch):
    i350(scratch.fs, numvfs=2, ports=1)
    for vf in scratch.fs.root.glob("class/net/*v*"):
        (vf / "operstate").write_text("down\n")
    target = scratch.root / "t"
    target.mkdir()
    res = scratch.run("host", "vf-driver", "--root", str(target), "--blacklist", "igbvf")
    assert res.code == 0 and res.err == ""


def test_blacklisting_the_pf_driver_is_refused(scratch):
    connectx(scratch.fs)
    target = scratch.root / "t"
    target.mkdir()
    res = scratch.run("host", "vf-driver", "--root", str(target), "--blacklist", "mlx5_core")
    assert res.code == 2
    assert "mlx5_core also drives the PFs" in res.err and "--autoprobe off" in res.err
    assert list(target.iterdir()) == []


def test_dry_run_shows_the_file(host):
    res = run(host, "--blacklist", "iavf", "--dry-run")
    assert res.code == 0 and "+blacklist iavf" in res.out
    assert not (host.target / BL).exists()


def test_autoprobe_off_on_every_pool_pf_with_the_warning(host):
    res = run(host, "--autoprobe", "off")
    assert res.code == 0, res.err
    assert autoprobe(host, "0000:01:00.0") == "0" and autoprobe(host, "0000:01:00.1") == "0"
    assert "the 2 existing VFs keep their drivers; 2 of them are bound to a host driver now" in res.err
    assert "vfalloc host persist --autoprobe off" in res.err


def test_autoprobe_for_one_pf(host):
    res = run(host, "--autoprobe", "off", "enp1s0f1")
    assert res.code == 0
    assert autoprobe(host, "0000:01:00.0") == "1" and autoprobe(host, "0000:01:00.1") == "0"


def test_autoprobe_on_has_no_warning(host):
    run(host, "--autoprobe", "off")
    res = run(host, "--autoprobe", "on")
    assert res.code == 0 and res.err == "" and autoprobe(host, "0000:01:00.0") == "1"


def test_autoprobe_dry_run(host):
    res = run(host, "--autoprobe", "off", "--dry-run")
    assert res.code == 0 and "would write" in res.out
    assert autoprobe(host, "0000:01:00.0") == "1"


@pytest.mark.parametrize("args, message", [
    ([], "needs --blacklist DRIVER or --autoprobe"),
    (["--remove"], "--remove goes with --blacklist"),
    (["--blacklist", "igbvf;reboot"], "is not a kernel module name"),
    (["--autoprobe", "off", "enp9s0"], "enp9s0 is not an SR-IOV PF"),
    (["enp1s0f0", "--blacklist", "igbvf"], "PF arguments go with --autoprobe"),
    (["--autoprobe", "maybe"], "invalid choice"),
], ids=["no-action", "remove-alone", "bad-module", "unknown-pf", "pf-without-autoprobe", "bad-choice"])
def test_bad_input_is_one_line_and_changes_nothing(host, args, message):
    res = run(host, *args)
    assert res.code == 2 and res.err.count("\n") == 1 and message in res.err
    assert list(host.target.iterdir()) == []
    assert autoprobe(host, "0000:01:00.0") == "1"
