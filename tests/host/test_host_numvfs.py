"""`vfalloc host numvfs`: 0 then N through the one sysfs write seam, the kernel's refusals turned
into their causes, the bounded wait, and the lease guard. The kernel is played by
tests/fakes/fakekernel.py, whose writes follow drivers/pci/iov.c and can fail with any errno."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys

import pytest
from fakehost import i350
from fakekernel import FakeKernel, command

from vfalloc.errors import UsageError
from vfalloc.host import numvfs
from vfalloc.model import Lease, PciAddress
from vfalloc.state import StateStore
from vfalloc.sysfs import Sysfs

BOOT = "11111111-2222-3333-4444-555555555555"  # the scratch fixture's boot id


def lease(vf: str, domain: str, boot: str = BOOT, pf: str = "0000:01:00.0") -> Lease:
    return Lease(vf=vf, pf=pf, pool="enp1s0f0", domain=domain, uuid="6f1b1f4e-3d5a-4d39-9c8e-1a2b3c4d5e6f",
                 index=0, mac=None, vlan=None, since="2025-01-01T00:00:00+00:00", boot_id=boot, phase="attached")


def give(scratch, *leases):
    with StateStore(scratch.state).transaction() as txn:
        txn.table = txn.table.with_leases(leases)


@pytest.fixture
def host(scratch):
    i350(scratch.fs, numvfs=0, ports=2)
    return scratch


def test_grow_from_zero_writes_n_once(host):
    kernel = FakeKernel(host.fs)
    code, out, _ = command(host, kernel, "enp1s0f0", "7")
    assert code == 0
    assert kernel.writes == [("0000:01:00.0", "sriov_numvfs", "7")]
    assert "enp1s0f0: 7 VFs (was 0): 0000:01:10.0 " in out
    assert len(Sysfs(host.fs.root).read_pf(PciAddress.parse("0000:01:00.0")).vfs) == 7


def test_change_between_nonzero_counts_writes_zero_first(host):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "4")
    code, out, _ = command(host, kernel, "0000:01:00.0", "2")
    assert code == 0
    assert kernel.writes[1:] == [("0000:01:00.0", "sriov_numvfs", "0"), ("0000:01:00.0", "sriov_numvfs", "2")]
    assert "2 VFs (was 4)" in out


def test_same_count_is_a_no_op(host):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "3")
    code, out, _ = command(host, kernel, "enp1s0f0", "3")
    assert code == 0 and len(kernel.writes) == 1 and "already 3 VFs" in out


def test_autoprobe_is_written_before_the_vfs_exist(host):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "2", "--autoprobe", "off")
    assert [w[1:] for w in kernel.writes] == [("sriov_drivers_autoprobe", "0"), ("sriov_numvfs", "2")]


def test_dry_run_writes_nothing(host):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "4")
    code, out, _ = command(host, kernel, "enp1s0f0", "5", "--dry-run")
    assert code == 0 and len(kernel.writes) == 1
    assert out.splitlines() == [f"would write {host.fs.root}/bus/pci/devices/0000:01:00.0/sriov_numvfs <- 0",
                                f"would write {host.fs.root}/bus/pci/devices/0000:01:00.0/sriov_numvfs <- 5"]


# errno -> message; each case must name the cause and the fix.
ERRNO_CASES = [
    ("ENOMEM", errno.ENOMEM, ["(ENOMEM)", "enable SR-IOV in the BIOS", "pci=realloc", "pci=assign-busses",
                              "vfalloc host kernel-args --realloc --assign-busses"]),
    ("ENOSPC", errno.ENOSPC, ["(ENOSPC)", "MSI-X interrupt vectors", "fewer VFs"]),
    ("EBUSY", errno.EBUSY, ["(EBUSY)", "already enabled", "vfalloc host check"]),
    ("ENOENT", errno.ENOENT, ["(ENOENT)", "no driver is bound to the PF", "modprobe igb"]),
    ("EACCES", errno.EACCES, ["(EACCES)", "run as root"]),
    ("EIO", errno.EIO, ["(EIO)", "Input/output error"]),
]


@pytest.mark.parametrize("code, parts", [c[1:] for c in ERRNO_CASES], ids=[c[0] for c in ERRNO_CASES])
def test_kernel_refusal_is_explained(host, code, parts):
    kernel = FakeKernel(host.fs, fail={("sriov_numvfs", "7"): code})
    with pytest.raises(numvfs.NumvfsError) as err:
        command(host, kernel, "enp1s0f0", "7")
    message = str(err.value)
    assert message.startswith("enp1s0f0 (0000:01:00.0): writing 7 to sriov_numvfs failed")
    assert err.value.errno == code
    for part in parts:
        assert part in message
    assert "\n" not in message


def test_real_ebusy_from_the_kernel_rule_when_someone_else_raced(host):
    """Another owner sets 3 VFs between our 0 and our N: the kernel's non-zero -> non-zero EBUSY."""
    class Racer(FakeKernel):
        def write_attr(self, address, attr, value):
            super().write_attr(address, attr, value)
            if value == "0":
                self.fs.set_vfs(str(address), 3, vf_device="1520")
    kernel = Racer(host.fs)
    command(host, kernel, "enp1s0f0", "2")
    with pytest.raises(numvfs.NumvfsError, match=r"\(EBUSY\).*already enabled"):
        command(host, kernel, "enp1s0f0", "5")


def test_wait_is_bounded_and_reports_what_appeared(host):
    kernel = FakeKernel(host.fs, create=False)
    ticks = iter(range(1000))
    clock = numvfs.Clock(now=lambda: next(ticks) * 0.1, sleep=lambda s: None)
    pf = kernel.read_pf(PciAddress.parse("0000:01:00.0"))
    with pytest.raises(numvfs.HostError) as err:
        numvfs.set_numvfs(kernel, pf, 4)
        numvfs.wait_for(kernel, pf, 4, 1.0, clock)
    assert "asked for 4 VFs, the kernel reports sriov_numvfs 0 and 0 VFs after 1s" in str(err.value)
    assert next(ticks) < 20  # it stopped polling


def test_wait_returns_when_the_vfs_show_up_late(host):
    kernel = FakeKernel(host.fs, create=False)
    polls = []

    def sleep(_):
        polls.append(1)
        if len(polls) == 3:
            host.fs.set_vfs("0000:01:00.0", 4, vf_device="1520")

    pf = kernel.read_pf(PciAddress.parse("0000:01:00.0"))
    numvfs.set_numvfs(kernel, pf, 4)
    after = numvfs.wait_for(kernel, pf, 4, 5, numvfs.Clock(sleep=sleep))
    assert len(after.vfs) == 4 and len(polls) == 3


@pytest.mark.parametrize("argv, message", [
    (["enp1s0f0", "8"], "enp1s0f0 offers 7 VFs (sriov_totalvfs); 8 is more"),
    (["enp1s0f0", "-1"], "is negative"),
    (["enp9s0", "2"], "enp9s0 is not an SR-IOV PF on this host (PFs: enp1s0f0, enp1s0f1)"),
    (["enp1s0f0", "two"], "'two' is not a number of VFs from 0 to 65535"),
    (["enp1s0f0", "9" * 5000], "is not a number of VFs from 0 to 65535"),
    (["enp1s0f0", "\u0663"], "is not a number of VFs from 0 to 65535"),
    (["enp1s0f0", "2", "--timeout", "0"], "--timeout 0 must be a number of seconds from 0 to 3600"),
    (["enp1s0f0", "2", "--timeout", "nan"], "--timeout nan must be a number of seconds"),
    (["enp1s0f0", "2", "--timeout", "inf"], "--timeout inf must be a number of seconds"),
], ids=["over-totalvfs", "negative", "unknown-pf", "not-a-number", "thousands-of-digits", "arabic-indic-digit",
        "zero-timeout", "nan-timeout", "inf-timeout"])
def test_bad_input_is_one_line_and_writes_nothing(host, argv, message):
    res = host.run("host", "numvfs", *argv)
    assert res.code == 2
    assert res.err.count("\n") == 1 and message in res.err
    assert Sysfs(host.fs.root).read_attr(PciAddress.parse("0000:01:00.0"), "sriov_numvfs") == "0"


# -- the lease guard --

def test_refuses_to_remove_leased_vfs(host):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "4")
    give(host, lease("0000:01:10.4", "web1"))           # VF 1
    for n in ("0", "1", "6"):
        with pytest.raises(numvfs.HostError) as err:
            command(host, kernel, "enp1s0f0", n)
        assert "leased VFs 0000:01:10.4 (web1)" in str(err.value) and "--force" in str(err.value)
    assert "would no longer exist" in numvfs.lease_refusal(
        kernel.read_pf(PciAddress.parse("0000:01:00.0")), 1, [lease("0000:01:10.4", "web1")])
    assert len(kernel.writes) == 1


def test_force_overrides_the_guard_with_a_warning(host):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "4")
    give(host, lease("0000:01:10.4", "web1"))
    code, out, err = command(host, kernel, "enp1s0f0", "1", "--force")
    assert code == 0 and "1 leased VF(s) of enp1s0f0 are removed" in err


@pytest.mark.parametrize("boot, pf_vf, blocks", [
    ("00000000-0000-0000-0000-000000000000", "0000:01:10.4", False),   # earlier boot: stale
    (BOOT, "0000:01:10.1", False),                                     # VF of the other PF
    (BOOT, "0000:01:10.4", True),
], ids=["earlier-boot", "other-pf", "this-boot"])
def test_only_live_leases_of_this_pf_block(host, boot, pf_vf, blocks):
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "4")
    command(host, kernel, "enp1s0f1", "4")
    give(host, lease(pf_vf, "db1", boot=boot))
    if blocks:
        with pytest.raises(numvfs.HostError):
            command(host, kernel, "enp1s0f0", "2")
    else:
        assert command(host, kernel, "enp1s0f0", "2")[0] == 0


def test_check_request_limits():
    pf = type("PF", (), {"totalvfs": 7, "name": "p"})()
    numvfs.check_request(pf, 7)
    with pytest.raises(UsageError):
        numvfs.check_request(pf, 8)


class LockWatchingKernel(FakeKernel):
    """Notes, at each sriov_numvfs write, whether the lease table's lock is held. flock(2) locks
    belong to open file descriptions, so a second open of the lock file in this same process
    cannot take the lock while the command's transaction holds it."""

    def __init__(self, fs, lock_path):
        super().__init__(fs)
        self.lock_path, self.locked_at_write = str(lock_path), []

    def write_attr(self, address, attr, value):
        if attr == "sriov_numvfs":
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.locked_at_write.append(False)
            except BlockingIOError:
                self.locked_at_write.append(True)
            finally:
                os.close(fd)
        super().write_attr(address, attr, value)


def test_every_numvfs_write_happens_under_the_lease_lock(host):
    kernel = LockWatchingKernel(host.fs, f"{host.state}.lock")
    command(host, kernel, "enp1s0f0", "4")
    command(host, kernel, "enp1s0f0", "2")
    assert kernel.locked_at_write == [True, True, True]  # 4; then 0 and 2


def test_a_lease_taken_while_numvfs_waits_for_the_lock_is_seen(host):
    """A hook holding the lock leases a VF of the PF: the command, which had to wait for the
    lock, must judge with that lease and refuse, not remove the VF under the new guest."""
    kernel = FakeKernel(host.fs)
    command(host, kernel, "enp1s0f0", "4")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom vfalloc.state import StateStore\nfrom vfalloc.model import Lease\n"
         "with StateStore(sys.argv[1]).transaction() as txn:\n    print('held', flush=True)\n    time.sleep(0.5)\n"
         f"    txn.table = txn.table.with_leases([Lease(**{lease('0000:01:10.4', 'late').to_json()!r})])\n",
         str(host.state)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(numvfs.HostError, match=r"leased VFs 0000:01:10.4 \(late\)"):
            command(host, kernel, "enp1s0f0", "2")
    finally:
        holder.wait(timeout=30)
    assert [w for w in kernel.writes if w[1] == "sriov_numvfs"] == [("0000:01:00.0", "sriov_numvfs", "4")]
