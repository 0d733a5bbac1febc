"""The e2e scenario: named steps run inside the emulated SR-IOV host, one result record each.

stage2.sh (PID 1 of the VM) runs this file with the machine's own Python; only the standard
library is used. It owns the steps, what each one proves, and the record format: one JSON line
per step in <results>/steps.jsonl ({"step", "ok", "seconds", "tail", "log"}) plus the step's
full output in <results>/step-<name>.log. The host side (rig.py, test_e2e.py) imports this
module for step_names() only; importing it runs nothing.

Adding a step: write a function taking the Context, decorate it with @step("name", needs=...),
place it where it belongs in the file (steps run in the order they are defined), check things
with expect(), run commands with ctx.run() / ctx.vfalloc() (their output goes into the record)
and fail by raising StepFailed. A step whose `needs` did not pass is recorded as failed without
running. Each step is bounded by its timeout; commands get what is left of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"  # the VM shares this machine's "/", so the project's venv is there too

NUM_VFS = 2  # per PF; each VF costs about a second of TCG time to create
DOMAIN_WITH_VF = "e2e-a"  # started with <interface type='hostdev'> on the first VF of PF 0
DOMAIN_SPARE = "e2e-b"  # no VF, two free root ports: a target for later steps
VF_MAC = "52:54:00:e2:e0:a0"
LIBVIRT_ENV = {"LIBVIRT_DEFAULT_URI": "qemu:///system"}
TAIL_LINES = 30


class StepFailed(Exception):
    """A step's check did not hold; the message ends up in the record's tail."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise StepFailed(message)


# --- steps and running them -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    func: Callable[["Context"], None]
    timeout: float
    needs: tuple[str, ...]


STEPS: list[Step] = []


def step(name: str, *, timeout: float = 30, needs: tuple[str, ...] = ()) -> Callable:
    """Register a step; steps run in the order they are defined."""

    def register(func: Callable[["Context"], None]) -> Callable[["Context"], None]:
        if any(s.name == name for s in STEPS):
            raise ValueError(f"step {name!r} defined twice")
        unknown = [n for n in needs if n not in {s.name for s in STEPS}]
        if unknown:
            raise ValueError(f"step {name!r} needs {unknown}, which are not defined before it")
        STEPS.append(Step(name, func, timeout, needs))
        return func

    return register


def step_names() -> list[str]:
    return [s.name for s in STEPS]


@dataclass
class Context:
    """What a running step has: its log, its deadline, and helpers that record into the log."""

    results: Path
    lines: list[str] = field(default_factory=list)
    deadline: float = 0.0

    def log(self, text: str) -> None:
        self.lines.extend(text.rstrip("\n").splitlines() or [""])

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepFailed("step timed out")
        return left

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command and record it and its output (stdout and stderr together, in .stdout)
        in the step's log. check: a non-zero exit fails the step."""
        self.log(f"$ {shlex.join(argv)}")
        limit = min(timeout or self.remaining(), self.remaining())
        try:
            proc = subprocess.run(
                argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                timeout=limit, env={**os.environ, **LIBVIRT_ENV},
            )
        except subprocess.TimeoutExpired as e:
            self.log(_text(e.output))
            raise StepFailed(f"{argv[0]} did not finish within {limit:.0f} s") from None
        except FileNotFoundError:
            raise StepFailed(f"{argv[0]}: command not found") from None
        if proc.stdout:
            self.log(proc.stdout)
        if proc.returncode != 0:
            self.log(f"(exit status {proc.returncode})")
            if check:
                raise StepFailed(f"{shlex.join(argv)} exited {proc.returncode}")
        return proc

    def vfalloc(self, *args: str, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the project's CLI from its venv, recorded like run()."""
        exe = VENV / "bin" / "vfalloc"
        expect(exe.exists(), f"{exe} does not exist: the package is not installed in {VENV}")
        return self.run(str(exe), *args, check=check, input=input)

    def start_daemon(self, *argv: str, env: dict[str, str] | None = None) -> None:
        """Start a daemon that forks itself away (`-d`). Its output goes to a file in the
        results dir, not to a pipe: a pipe held open by the daemon would never reach EOF."""
        log = self.results / f"{Path(argv[0]).name}.out"
        self.log(f"$ {shlex.join(argv)}  (output: {log.name})")
        try:
            with log.open("ab") as out:
                rc = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    timeout=self.remaining(), env={**os.environ, **(env or {})},
                ).returncode
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{argv[0]} did not detach in time; see {log.name}") from None
        except FileNotFoundError:
            raise StepFailed(f"{argv[0]}: command not found") from None
        expect(rc == 0, f"{argv[0]} exited {rc}; see {log.name}")

    def wait_for(
        self, what: str, probe: Callable[[], object], timeout: float, interval: float = 0.2
    ) -> object:
        """Poll probe() until it returns something true; fail the step after timeout seconds."""
        start = time.monotonic()
        end = min(start + timeout, self.deadline)
        while True:
            value = probe()
            waited = time.monotonic() - start
            if value:
                self.log(f"({what}: after {waited:.1f} s)")
                return value
            if time.monotonic() > end:
                raise StepFailed(f"timed out after {waited:.0f} s waiting for {what}")
            time.sleep(interval)

    def attach_file(self, path: Path, lines: int = 20) -> None:
        """Copy the end of a file (a daemon's or a domain's log) into the step's log."""
        try:
            text = path.read_text(errors="replace")
        except OSError as e:
            self.log(f"({path}: {e.strerror})")
            return
        self.log(f"--- last {lines} lines of {path}")
        self.log("\n".join(text.splitlines()[-lines:]))


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def run_step(s: Step, results: Path, passed: set[str]) -> dict:
    ctx = Context(results, deadline=time.monotonic() + s.timeout)
    start = time.monotonic()
    failed_needs = [n for n in s.needs if n not in passed]
    ok = False
    if failed_needs:
        ctx.log(f"not run: needs {', '.join(failed_needs)}, which did not pass")
    else:
        try:
            s.func(ctx)
            ok = True
        except StepFailed as e:
            ctx.log(f"FAILED: {e}")
        except Exception:
            ctx.log("FAILED with an exception:\n" + traceback.format_exc())
    log_name = f"step-{s.name}.log"
    (results / log_name).write_text("\n".join(ctx.lines) + "\n")
    tail = "\n".join(ctx.lines[-TAIL_LINES:])
    seconds = round(time.monotonic() - start, 3)
    return {"step": s.name, "ok": ok, "seconds": seconds, "tail": tail, "log": log_name}


def append_record(results: Path, record: dict) -> None:
    with (results / "steps.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_all(results: Path) -> int:
    passed: set[str] = set()
    for s in STEPS:
        record = run_step(s, results, passed)
        append_record(results, record)
        if record["ok"]:
            passed.add(s.name)
        status = "ok" if record["ok"] else "FAIL"
        print(f"e2e step {s.name}: {status} ({record['seconds']:.2f} s)", flush=True)
        if not record["ok"]:
            print("  " + record["tail"].replace("\n", "\n  "), flush=True)
    return 0 if len(passed) == len(STEPS) else 1


# --- reading the host: sysfs -------------------------------------------------------------------

SYS_PCI = Path("/sys/bus/pci/devices")


@dataclass(frozen=True)
class PF:
    netdev: str
    address: str  # PCI address, e.g. 0000:01:00.0

    @property
    def sysfs(self) -> Path:
        return SYS_PCI / self.address


def sriov_pfs() -> list[PF]:
    """Network devices whose PCI function has the SR-IOV capability (sriov_totalvfs exists)."""
    pfs = []
    for total in Path("/sys/class/net").glob("*/device/sriov_totalvfs"):
        pfs.append(PF(total.parts[4], total.parent.resolve().name))
    return sorted(pfs, key=lambda p: p.address)


def vfs_of(pf: PF) -> list[str]:
    """The PF's VFs by VF number: the kernel links virtfn<N> to each (drivers/pci/iov.c)."""
    links = sorted(pf.sysfs.glob("virtfn*"), key=lambda p: int(p.name.removeprefix("virtfn")))
    return [link.resolve().name for link in links]


def driver_of(address: str) -> str | None:
    link = SYS_PCI / address / "driver"
    return link.resolve().name if link.exists() else None


def iommu_group_of(address: str) -> str | None:
    link = SYS_PCI / address / "iommu_group"
    return link.resolve().name if link.exists() else None


def group_members(group: str) -> list[str]:
    return sorted(os.listdir(f"/sys/kernel/iommu_groups/{group}/devices"))


def read_sysfs(path: Path) -> str:
    return path.read_text().strip()


def write_sysfs(ctx: Context, path: Path, value: str) -> None:
    """One write(2) of value, as `echo value > path` does; the kernel's answer is the errno."""
    shown = value.strip()
    ctx.log(f"# echo {shown} > {path}" if shown else f"# echo > {path}")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise StepFailed(f"writing {value!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def module_loaded(name: str) -> bool:
    return Path("/sys/module", name).is_dir()


# --- reading the host: libvirt and QEMU --------------------------------------------------------


def domain_xml(name: str, vf: str | None) -> str:
    """A tiny q35 guest with no disk: it is only ever started paused. Two pcie-root-ports: on
    q35 a PCIe device (and any hot-plug) needs a free root port."""
    interface = ""
    if vf:
        domain, bus, slot_fn = vf.split(":")
        slot, function = slot_fn.split(".")
        address = f"domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'"
        interface = f"""
    <interface type='hostdev' managed='yes'>
      <source><address type='pci' {address}/></source>
      <mac address='{VF_MAC}'/>
    </interface>"""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'/>
    <controller type='pci' index='2' model='pcie-root-port'/>{interface}
  </devices>
</domain>
"""


def qemu_pid(domain: str) -> int | None:
    """libvirt keeps /run/libvirt/qemu/<name>.pid exactly while the domain runs (DESIGN.md)."""
    try:
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def qemu_devices(pid: int) -> list[dict[str, str]]:
    """The -device arguments of a running QEMU, each as a dict. libvirt writes them as JSON
    (`-device {"driver":"vfio-pci","host":"0000:01:10.0",...}`); the key=value form is read too."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    devices = []
    for flag, value in zip(argv, argv[1:]):
        if flag != b"-device":
            continue
        text = value.decode(errors="replace")
        if text.startswith("{"):
            devices.append({k: str(v) for k, v in json.loads(text).items()})
        else:
            driver, *props = text.split(",")
            devices.append({"driver": driver, **dict(p.partition("=")[::2] for p in props)})
    return devices


def vf_macs(ctx: Context, pf: PF) -> dict[int, str]:
    """The VFs' MACs as the PF reports them (`ip link show PF`: "vf N ... link/ether MAC")."""
    out = ctx.run("ip", "link", "show", pf.netdev).stdout
    return {int(n): mac for n, mac in re.findall(r"vf (\d+)\s+link/ether ([0-9a-f:]{17})", out)}


# --- steps: the real kernel ---------------------------------------------------------------------


@step("vm")
def vm_booted(ctx: Context) -> None:
    """stage2 did its part: IOMMU on, NIC and vfio drivers loaded, cgroup2 mounted."""
    ctx.log(f"kernel {os.uname().release}; cmdline: {read_sysfs(Path('/proc/cmdline'))}")
    iommus = sorted(p.name for p in Path("/sys/class/iommu").glob("*"))
    ctx.log(f"IOMMUs: {iommus}")
    expect(any(i.startswith("dmar") for i in iommus), "no DMAR unit: the vIOMMU is not active")
    for module in ("igb", "igbvf", "vfio_pci"):
        expect(module_loaded(module), f"module {module} is not loaded (stage2.sh modprobes it)")
    expect(Path("/sys/fs/cgroup/cgroup.controllers").exists(), "cgroup2 is not mounted")


@step("pfs", needs=("vm",))
def pfs_present(ctx: Context) -> None:
    """Two igb PFs, link up, SR-IOV capable, no VFs yet, each in its own IOMMU group."""
    pfs = sriov_pfs()
    for pf in pfs:
        ctx.log(
            f"PF {pf.netdev} {pf.address} driver={driver_of(pf.address)} "
            f"totalvfs={read_sysfs(pf.sysfs / 'sriov_totalvfs')} "
            f"numvfs={read_sysfs(pf.sysfs / 'sriov_numvfs')} group={iommu_group_of(pf.address)}"
        )
    expect(len(pfs) == 2, f"expected 2 SR-IOV PFs, found {len(pfs)}")
    for pf in pfs:
        expect(driver_of(pf.address) == "igb", f"{pf.address} is not driven by igb")
        total = int(read_sysfs(pf.sysfs / "sriov_totalvfs"))
        expect(total >= NUM_VFS, f"{pf.netdev}: sriov_totalvfs is {total}, need {NUM_VFS}")
        expect(read_sysfs(pf.sysfs / "sriov_numvfs") == "0", f"{pf.netdev} has VFs already")
        # IFF_UP is bit 0 of the interface flags (include/uapi/linux/if.h).
        flags = int(read_sysfs(Path(f"/sys/class/net/{pf.netdev}/flags")), 16)
        expect(flags & 1, f"{pf.netdev} is down")
    groups = [iommu_group_of(pf.address) for pf in pfs]
    expect(None not in groups and len(set(groups)) == len(pfs), f"PFs share IOMMU groups: {groups}")


@step("sriov-numvfs", timeout=60, needs=("pfs",))
def sriov_numvfs(ctx: Context) -> None:
    """0 then NUM_VFS into sriov_numvfs on both PFs; the virtfn links appear."""
    for pf in sriov_pfs():
        write_sysfs(ctx, pf.sysfs / "sriov_numvfs", "0")
        start = time.monotonic()
        write_sysfs(ctx, pf.sysfs / "sriov_numvfs", str(NUM_VFS))
        ctx.log(f"{pf.netdev}: {NUM_VFS} VFs in {time.monotonic() - start:.1f} s")
        expect(read_sysfs(pf.sysfs / "sriov_numvfs") == str(NUM_VFS), "sriov_numvfs did not take")
        vfs = vfs_of(pf)
        ctx.log(f"{pf.netdev}: virtfn -> {vfs}")
        expect(len(vfs) == NUM_VFS, f"{pf.netdev}: {len(vfs)} virtfn links, expected {NUM_VFS}")


@step("numvfs-busy", needs=("sriov-numvfs",))
def numvfs_busy(ctx: Context) -> None:
    """Changing a non-zero VF count to another non-zero one is refused with EBUSY; it has to go
    through 0 (drivers/pci/iov.c, sriov_numvfs_store). Writing the same count is a no-op."""
    pf = sriov_pfs()[0]
    try:
        write_sysfs(ctx, pf.sysfs / "sriov_numvfs", str(NUM_VFS + 1))
    except StepFailed as e:
        ctx.log(f"refused as expected: {e}")
        expect("busy" in str(e).lower(), f"refused, but not with EBUSY: {e}")
    else:
        raise StepFailed("the kernel accepted a change between two non-zero VF counts")
    write_sysfs(ctx, pf.sysfs / "sriov_numvfs", str(NUM_VFS))
    expect(len(vfs_of(pf)) == NUM_VFS, "the VF count changed")


@step("vfs-igbvf", needs=("sriov-numvfs",))
def vfs_on_igbvf(ctx: Context) -> None:
    """Every VF is bound to igbvf and has a network interface."""
    for pf in sriov_pfs():
        for vf in vfs_of(pf):
            ctx.wait_for(f"{vf} bound to igbvf", lambda: driver_of(vf) == "igbvf", timeout=10)
            netdevs = os.listdir(SYS_PCI / vf / "net") if (SYS_PCI / vf / "net").exists() else []
            ctx.log(f"{pf.netdev} {vf}: driver={driver_of(vf)} net={netdevs}")
            expect(netdevs, f"{vf} has no network interface")


@step("vf-iommu-groups", needs=("sriov-numvfs",))
def vf_iommu_groups(ctx: Context) -> None:
    """Each VF sits alone in an IOMMU group of its own (the PFs' root ports have ACS)."""
    seen: dict[str, str] = {}
    for pf in sriov_pfs():
        for vf in vfs_of(pf):
            group = iommu_group_of(vf)
            expect(group is not None, f"{vf} has no IOMMU group")
            members = group_members(group)
            ctx.log(f"{vf}: group {group}: {members}")
            expect(members == [vf], f"{vf} shares group {group} with {members}")
            expect(group not in seen, f"{vf} and {seen.get(group)} share group {group}")
            seen[group] = vf


def vfio_vf() -> str:
    """The VF the vfio steps move around: the last VF of the second PF."""
    return vfs_of(sriov_pfs()[1])[-1]


def reprobe(ctx: Context, vf: str) -> None:
    """Unbind the VF and let the kernel pick its driver again, honouring driver_override
    (Documentation/ABI/testing/sysfs-bus-pci: driver_override, drivers_probe)."""
    if driver_of(vf):
        write_sysfs(ctx, SYS_PCI / vf / "driver" / "unbind", vf)
    write_sysfs(ctx, Path("/sys/bus/pci/drivers_probe"), vf)


@step("vfio-bind", needs=("vfs-igbvf", "vf-iommu-groups"))
def vfio_bind(ctx: Context) -> None:
    """driver_override=vfio-pci + reprobe puts a VF on vfio-pci; /dev/vfio/<group> appears."""
    vf = vfio_vf()
    write_sysfs(ctx, SYS_PCI / vf / "driver_override", "vfio-pci")
    reprobe(ctx, vf)
    ctx.log(f"{vf}: driver={driver_of(vf)}")
    expect(driver_of(vf) == "vfio-pci", f"{vf} is on {driver_of(vf)}, not vfio-pci")
    group = iommu_group_of(vf)
    ctx.wait_for(f"/dev/vfio/{group}", lambda: Path(f"/dev/vfio/{group}").exists(), timeout=5)


@step("vfio-release", needs=("vfio-bind",))
def vfio_release(ctx: Context) -> None:
    """Clearing driver_override and reprobing gives the VF back to igbvf."""
    vf = vfio_vf()
    write_sysfs(ctx, SYS_PCI / vf / "driver_override", "\n")
    reprobe(ctx, vf)
    ctx.wait_for(f"{vf} back on igbvf", lambda: driver_of(vf) == "igbvf", timeout=10)
    expect(read_sysfs(SYS_PCI / vf / "driver_override") == "(null)", "driver_override not cleared")


# --- steps: libvirt ----------------------------------------------------------------------------


def hermetic_libvirt_config(ctx: Context) -> None:
    """The VM sees this machine's /etc/libvirt: hide its domain definitions (autostart!) and
    hooks behind empty tmpfs mounts, so only what the scenario puts there exists."""
    for path in ("/etc/libvirt/qemu", "/etc/libvirt/hooks"):
        os.makedirs(path, exist_ok=True)
        ctx.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path)


def install_hook(ctx: Context, source: Path) -> None:
    """Make an executable /etc/libvirt/hooks/qemu (a symlink to source). Call it before
    libvirtd starts: libvirtd looks for hook scripts once, at start (src/util/virhook.c,
    virHookInitialize; again only on SIGHUP)."""
    expect(os.access(source, os.X_OK), f"{source} is missing or not executable")
    target = Path("/etc/libvirt/hooks/qemu")
    target.symlink_to(source)
    ctx.log(f"# ln -s {source} {target}")


@step("libvirtd", timeout=120, needs=("vm",))
def libvirtd(ctx: Context) -> None:
    """virtlogd and libvirtd started by hand (no systemd here) answer on the unix socket."""
    hermetic_libvirt_config(ctx)
    # >>> vfalloc: install the hook here, before libvirtd starts (it looks for hooks only then):
    # ctx.vfalloc("install-hook", ...), or install_hook(ctx, <an executable hook>).
    ctx.start_daemon("virtlogd", "-d")
    # libvirtd's own warnings and errors go to the results share.
    log_outputs = f"3:file:{ctx.results / 'libvirtd.log'}"
    ctx.start_daemon("libvirtd", "-d", env={"LIBVIRT_LOG_OUTPUTS": log_outputs})

    def answers() -> bool:
        try:
            probe = subprocess.run(["virsh", "version"], capture_output=True, timeout=10,
                                   env={**os.environ, **LIBVIRT_ENV})
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    ctx.wait_for("libvirtd to answer", answers, timeout=100, interval=0.5)
    ctx.run("virsh", "version")


@step("define-domains", timeout=60, needs=("libvirtd", "vfs-igbvf"))
def define_domains(ctx: Context) -> None:
    """Two tiny q35 domains: e2e-a with <interface type='hostdev' managed='yes'> on the first
    VF of the first PF, e2e-b with no VF."""
    vf = vfs_of(sriov_pfs()[0])[0]
    for name, with_vf in ((DOMAIN_WITH_VF, vf), (DOMAIN_SPARE, None)):
        path = Path("/tmp") / f"{name}.xml"
        path.write_text(domain_xml(name, with_vf))
        ctx.run("virsh", "define", str(path))
    out = ctx.run("virsh", "list", "--all", "--name").stdout
    expect({DOMAIN_WITH_VF, DOMAIN_SPARE} <= set(out.split()), "domains not defined")


@step("start-paused", timeout=60, needs=("define-domains",))
def start_paused(ctx: Context) -> None:
    """`virsh start --paused` with the VF: libvirt moves the VF to vfio-pci and sets its MAC."""
    vf = vfs_of(sriov_pfs()[0])[0]
    try:
        ctx.run("virsh", "start", "--paused", DOMAIN_WITH_VF)
    except StepFailed:
        ctx.attach_file(Path(f"/var/log/libvirt/qemu/{DOMAIN_WITH_VF}.log"))
        ctx.attach_file(ctx.results / "libvirtd.log")
        raise
    ctx.run("virsh", "domstate", DOMAIN_WITH_VF)
    expect(driver_of(vf) == "vfio-pci", f"{vf} is on {driver_of(vf)} while {DOMAIN_WITH_VF} runs")


@step("qemu-cmdline", needs=("start-paused",))
def qemu_cmdline(ctx: Context) -> None:
    """The guest's QEMU holds the VF as a vfio-pci device; the PF reports the VF's new MAC."""
    pf = sriov_pfs()[0]
    vf = vfs_of(pf)[0]
    pid = qemu_pid(DOMAIN_WITH_VF)
    expect(pid, f"no /run/libvirt/qemu/{DOMAIN_WITH_VF}.pid")
    vfio = [d for d in qemu_devices(pid) if d.get("driver") == "vfio-pci"]
    ctx.log(f"QEMU pid {pid}, vfio-pci devices: {vfio}")
    expect([d.get("host") for d in vfio] == [vf], f"expected one vfio-pci device with host={vf}")
    macs = vf_macs(ctx, pf)
    expect(macs.get(0) == VF_MAC, f"VF 0 MAC is {macs.get(0)}, expected {VF_MAC}")


@step("destroy", needs=("start-paused",))
def destroy(ctx: Context) -> None:
    """After destroy, QEMU is gone and libvirt gives the VF back to igbvf."""
    vf = vfs_of(sriov_pfs()[0])[0]
    ctx.run("virsh", "destroy", DOMAIN_WITH_VF)
    expect(qemu_pid(DOMAIN_WITH_VF) is None, "the pid file is still there")
    ctx.wait_for(f"{vf} back on igbvf", lambda: driver_of(vf) == "igbvf", timeout=10)


# ===============================================================================================
# >>> vfalloc steps go here. <<<
#
# State the steps above leave: libvirtd running (no hook unless install_hook() was added to the
# libvirtd step); on each PF NUM_VFS VFs, all on igbvf; domains e2e-a (interface VF 0 of PF 0
# in its config) and e2e-b (no VF, two free pcie-root-ports) defined and shut off.
# Run the CLI with ctx.vfalloc(...): /work/main/.venv/bin/vfalloc, output recorded. The VM's
# files are this machine's under a throwaway overlay: hide any vfalloc config or state from
# the machine the way hermetic_libvirt_config() does for libvirt. Example:
#
#   @step("vfalloc-list", needs=("destroy",))
#   def vfalloc_list(ctx: Context) -> None:
#       out = ctx.vfalloc("list").stdout
#       expect(DOMAIN_WITH_VF not in out, "a stopped domain still holds a VF")
#
# test_e2e.py picks a new step up by itself (one test per step, in order).
# ===============================================================================================


def inside_the_rig() -> bool:
    """This scenario writes sriov_numvfs and rebinds drivers: never on a real host."""
    return "e2e.scenario=" in Path("/proc/cmdline").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="the results share")
    args = parser.parse_args(argv)
    if not inside_the_rig():
        print("scenario.py runs only inside the e2e VM (see rig.py); refusing", file=sys.stderr)
        return 2
    return run_all(args.results)


if __name__ == "__main__":
    sys.exit(main())
