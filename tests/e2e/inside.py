"""What runs inside the emulated SR-IOV host besides the steps: the Context that runs commands and
records them, and the readers and drivers of the host (sysfs, the disk, libvirt, QEMU, vfalloc's
own output). scenario.py (the e2e steps) and demo/session.py (the narrated demo) both use it.

Standard library only: it runs with the machine's Python before anything is known to work.
Importing it runs nothing and touches nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pace

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"  # the VM shares this machine's "/", so the project's venv is there too
VFALLOC = VENV / "bin" / "vfalloc"
LIBVIRT_ENV = {"LIBVIRT_DEFAULT_URI": "qemu:///system"}


class StepFailed(Exception):
    """A step's check did not hold; the message ends up in the record's tail."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise StepFailed(message)


# --- running commands ----------------------------------------------------------------------------


@dataclass
class Context:
    """What a running step has: its log, its deadline, and helpers that record into the log.
    `env` is added to the environment of every command (and of vfalloc: `vfalloc_env`).
    `pace` (pace.py) is how many times slower than on an idle machine the VM runs now: every
    timeout given to run() and wait_for() is multiplied by it, as the step's own bound is.
    `repace` measures the pace again (pace.Pace.remeasure): a bound that runs out calls it, and
    is extended once by how much slower the VM has become since (stretch)."""

    results: Path
    lines: list[str] = field(default_factory=list)
    deadline: float = 0.0
    vfalloc_env: dict[str, str] = field(default_factory=dict)
    boot: int = 1  # which boot of the VM this is (the kernel command line's e2e.boot)
    show_times: bool = True  # log how long each command took (from half a second on)
    pace: float = 1.0
    repace: Callable[[], float] | None = None
    started: float = field(default_factory=time.monotonic)
    step_stretched: bool = False

    def scaled(self, seconds: float) -> float:
        """A bound of `seconds` on an idle machine, as long as it must be now."""
        return seconds * self.pace

    def log(self, text: str) -> None:
        self.lines.extend(text.rstrip("\n").splitlines() or [""])

    def stretch(self, bound: str) -> float:
        """`bound` ran out: measure the pace again. When the VM runs slower than the pace the
        bounds were scaled by (a load that began inside the step, which no sample saw), the
        step's deadline grows by as much (measured from the step's start) and the answer is the
        ratio the caller extends its own bound by; 1.0: no more time. Logged either way."""
        if self.repace is None:
            return 1.0
        before, now = self.pace, self.repace()
        if now <= before:
            self.log(f"({bound} ran out; the pace measured again is {now:.1f}x, not above "
                     f"{before:.1f}x: no more time)")
            return 1.0
        ratio = now / before
        self.deadline = self.started + (self.deadline - self.started) * ratio
        self.step_stretched = True  # the step's bound grows once
        self.pace = now
        self.log(f"({bound} ran out; the pace measured again is {now:.1f}x, was {before:.1f}x: "
                 f"extended {ratio:.1f} times, once)")
        return ratio

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 and not self.step_stretched:
            self.step_stretched = True
            self.stretch("the step's bound")
            left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepFailed("step timed out")
        return left

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float | None = None, env: dict[str, str] | None = None,
            split: bool = False, shown: str | None = None,
            quiet: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command and record it and its output in the step's log. stdout and stderr
        come together in .stdout, unless split (then .stderr is separate, for JSON on stdout).
        check: a non-zero exit fails the step. shown: how the command is written in the log.
        quiet: the output is not logged (a domain XML; the step logs what it found in it)."""
        self.log(f"$ {shown or shlex.join(argv)}")
        limit = min(self.scaled(timeout) if timeout else self.remaining(), self.remaining())
        start = time.monotonic()
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE if split else subprocess.STDOUT,
                text=True, errors="replace", env={**os.environ, **LIBVIRT_ENV, **(env or {})},
            )
        except FileNotFoundError:
            raise StepFailed(f"{argv[0]}: command not found") from None
        with child:
            try:
                out, err = child.communicate(input, timeout=limit)
            except subprocess.TimeoutExpired:
                more = limit * (self.stretch(f"the bound of {limit:.0f} s on {argv[0]}") - 1)
                out, err = self._wait_more(child, argv[0], limit, more)
        proc = subprocess.CompletedProcess(argv, child.returncode, out, err)
        if proc.stdout and not quiet:
            self.output(proc.stdout)
        if split and proc.stderr:
            self.output(proc.stderr)
        took = time.monotonic() - start
        if proc.returncode != 0:
            self.log(f"(exit status {proc.returncode}"
                     + (f"; {took:.1f} s)" if self.show_times else ")"))
            if check:
                raise StepFailed(f"{shown or shlex.join(argv)} exited {proc.returncode}")
        elif took >= 0.5 and self.show_times:
            self.log(f"({took:.1f} s)")
        return proc

    def _wait_more(self, child: subprocess.Popen[str], name: str, limit: float,
                   more: float) -> tuple[str, str]:
        """A command's bound of `limit` s ran out and was extended by `more` (0: not at all): its
        output once it ends within that, else it is killed and the step fails. communicate()
        keeps what the command wrote before the retry."""
        if more > 0:
            try:
                return child.communicate(timeout=min(more, max(0.0, self.deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        child.kill()
        out, _ = child.communicate()
        self.log(_text(out))
        raise StepFailed(f"{name} did not finish within {limit + more:.0f} s (at pace {self.pace:.1f}x)")

    def output(self, text: str) -> None:
        """A command's output, as it goes into the log."""
        self.log(text)

    def vfalloc(self, *args: str, check: bool = True, input: str | None = None,
                split: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the project's CLI from its venv, recorded like run() as `vfalloc ARGS`."""
        expect(VFALLOC.exists(), f"{VFALLOC} does not exist: the package is not installed in {VENV}")
        return self.run(str(VFALLOC), *args, check=check, input=input, env=self.vfalloc_env,
                        split=split, shown=shlex.join(["vfalloc", *args]))

    def vfalloc_json(self, *args: str, check: bool = True) -> object:
        """`vfalloc ARGS --json`, parsed; a warning on stderr is logged, not parsed."""
        proc = self.vfalloc(*args, "--json", split=True, check=check)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            raise StepFailed(f"vfalloc {' '.join(args)} --json printed no JSON: {e}") from None

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
        """Poll probe() until it returns something true; fail the step after timeout seconds
        (as scaled by the pace)."""
        start = time.monotonic()
        end = min(start + self.scaled(timeout), self.deadline)
        stretched = False
        while True:
            value = probe()
            waited = time.monotonic() - start
            if value:
                self.log(f"({what}: after {waited:.1f} s)")
                return value
            if time.monotonic() > end and not stretched:
                stretched = True
                ratio = self.stretch(f"the wait of {end - start:.0f} s for {what}")
                end = min(start + (end - start) * ratio, self.deadline)
            if time.monotonic() > end:
                raise StepFailed(f"timed out after {waited:.0f} s (at pace {self.pace:.1f}x) "
                                 f"waiting for {what}")
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


# --- the host: sysfs -----------------------------------------------------------------------------

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


def vf_macs(ctx: Context, pf: PF) -> dict[int, str]:
    """The VFs' MACs as the PF reports them (`ip link show PF`: "vf N ... link/ether MAC")."""
    out = ctx.run("ip", "link", "show", pf.netdev).stdout
    return {int(n): mac for n, mac in re.findall(r"vf (\d+)\s+link/ether ([0-9a-f:]{17})", out)}


def boot_id() -> str:
    return read_sysfs(Path("/proc/sys/kernel/random/boot_id"))


# --- the host: its files -------------------------------------------------------------------------

# The VM's "/" is this machine's own, under a throwaway overlay: these directories would show this
# machine's vfalloc config and lease table, libvirt domains (autostart!) and hooks, unit files and
# udev rules. Each is covered, by an empty tmpfs or by a directory of the VM's own disk.
HOST_DIRS = (
    "/etc/vfalloc",
    "/var/lib/vfalloc",
    "/etc/libvirt/qemu",
    "/etc/libvirt/hooks",
    "/etc/systemd/system",
    "/etc/udev/rules.d",
)
# Of those, what a real host keeps on its disk across a reboot (the udev rules are written and
# then replaced by the systemd unit within one boot).
PERSISTENT_DIRS = HOST_DIRS[:-1]


def hide_host_files(ctx: Context, disk: Path | None = None) -> None:
    """Cover HOST_DIRS: with a directory of `disk` (a mounted filesystem) for PERSISTENT_DIRS,
    with an empty tmpfs for the others (and for all of them when there is no disk)."""
    for path in HOST_DIRS:
        os.makedirs(path, exist_ok=True)
        if disk is not None and path in PERSISTENT_DIRS:
            source = disk / path.strip("/").replace("/", "-")
            source.mkdir(mode=0o755, exist_ok=True)
            ctx.run("mount", "--bind", str(source), path)
        else:
            ctx.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path)


# --- libvirt and QEMU ----------------------------------------------------------------------------


def start_libvirt(ctx: Context, timeout: float = 100) -> None:
    """virtlogd and libvirtd started by hand (there is no systemd here), until libvirtd answers."""
    ctx.start_daemon("virtlogd", "-d")
    start_libvirtd(ctx, timeout)


def start_libvirtd(ctx: Context, timeout: float = 100) -> None:
    """libvirtd alone, until it answers; its own warnings and errors go to the results share."""
    log_outputs = f"3:file:{ctx.results / f'libvirtd-boot{ctx.boot}.log'}"
    ctx.start_daemon("libvirtd", "-d", env={"LIBVIRT_LOG_OUTPUTS": log_outputs})
    ctx.wait_for("libvirtd to answer", libvirtd_answers, timeout=timeout, interval=0.5)


def libvirtd_answers() -> bool:
    try:
        probe = subprocess.run(["virsh", "version"], capture_output=True, timeout=10 * pace.current(),
                               env={**os.environ, **LIBVIRT_ENV})
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def libvirtd_pid() -> int | None:
    try:
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def domain_xml(name: str, vf: str | None = None, mac: str | None = None,
               metadata: str = "", nic: str = "") -> str:
    """A tiny q35 guest with no disk: it is only ever started paused. Two pcie-root-ports: on
    q35 a PCIe device (and any hot-plug) needs a free root port. vf: an <interface
    type='hostdev'> on that VF in the saved config; metadata: put into <metadata>; nic: another
    device's XML, put after it."""
    interface = ""
    if vf:
        domain, bus, slot_fn = vf.split(":")
        slot, function = slot_fn.split(".")
        address = f"domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'"
        interface = f"""
    <interface type='hostdev' managed='yes'>
      <source><address type='pci' {address}/></source>{f"<mac address='{mac}'/>" if mac else ""}
    </interface>"""
    meta = f"\n  <metadata>{metadata}</metadata>" if metadata else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>{meta}
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'/>
    <controller type='pci' index='2' model='pcie-root-port'/>{interface}{nic}
  </devices>
</domain>
"""


def qemu_pid(domain: str) -> int | None:
    """libvirt keeps /run/libvirt/qemu/<name>.pid exactly while the domain runs (docs/architecture.md,
    "libvirt")."""
    try:
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def qemu_devices(pid: int) -> list[dict[str, str]]:
    """The -device arguments of a running QEMU, each as a dict. libvirt writes them as JSON
    (`-device {"driver":"vfio-pci","host":"0000:01:10.0",...}`); the key=value form is read too."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    devices = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag != b"-device":
            continue
        text = value.decode(errors="replace")
        if text.startswith("{"):
            devices.append({k: str(v) for k, v in json.loads(text).items()})
        else:
            driver, *props = text.split(",")
            devices.append({"driver": driver, **dict(p.partition("=")[::2] for p in props)})
    return devices


@dataclass(frozen=True)
class HostdevDevice:
    """A VF in a domain XML: <interface type='hostdev'> or <hostdev type='pci'>."""

    kind: str  # "interface" or "hostdev"
    alias: str | None
    vf: str  # PCI address of the source
    mac: str | None


def hostdev_devices(xml: str) -> list[HostdevDevice]:
    """Every PCI passthrough device of a domain XML, with its alias and source address."""
    root = ET.fromstring(xml)
    found = []
    devices = root.find("devices")
    for elem in [] if devices is None else list(devices):
        if elem.tag == "interface" and elem.get("type") == "hostdev":
            kind = "interface"
        elif elem.tag == "hostdev" and elem.get("type") == "pci":
            kind = "hostdev"
        else:
            continue
        addr = elem.find("source/address")
        if addr is None:
            continue
        vf = "{:04x}:{:02x}:{:02x}.{:x}".format(
            *(int(addr.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function"))
        )
        alias = elem.find("alias")
        mac = elem.find("mac")
        found.append(HostdevDevice(kind, None if alias is None else alias.get("name"), vf,
                                   None if mac is None else mac.get("address")))
    return found


def metadata_request(pool: str, mac: str | None = None) -> str:
    """vfalloc's request as a user writes it into a domain's <metadata> (namespace
    urn:vfalloc:1), the other way to ask besides `vfalloc request`."""
    mac_attr = f" mac='{mac}'" if mac else ""
    return (f"<vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'>"
            f"<vfalloc:vf pool='{pool}'{mac_attr}/></vfalloc:vfs>")


def read_unit_exec_start(text: str) -> list[list[str]]:
    """The ExecStart= command lines of a systemd unit, split as systemd splits them (no
    specifiers or variables are expected in vfalloc's unit)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            lines.append(shlex.split(line.removeprefix("ExecStart=")))
    return lines
