"""The emulated SR-IOV host: builds its initramfs, boots it under QEMU and reads what it reported.

This file owns the host side of the hardware test layer (docs/testing.md, "The emulated SR-IOV
host"):
- finding the kernel, QEMU and busybox on this machine, and saying what is missing;
- the initramfs (busybox-static, stage1.sh as /init, the modules stage1 needs);
- the QEMU command line and running it under a wall-clock bound;
- reading the step records the scenario wrote to the results share.

What runs inside the VM is not here: stage1.sh (initramfs /init), stage2.sh (PID 1 on the
shared root) and scenario.py (the steps). Run `python3 tests/e2e/rig.py` to boot it by hand.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGE1 = HERE / "stage1.sh"
STAGE2 = HERE / "stage2.sh"
SCENARIO = HERE / "scenario.py"

DEFAULT_WORK_DIR = Path(os.environ.get("VFALLOC_E2E_WORKDIR", "/var/tmp/vfalloc-e2e"))
# libvirt's QEMU capability cache of the e2e runs (and of `make demo` and `make bench-host`),
# kept across runs outside the work dir, which tools/test-layers makes new for every run: only a
# speed-up (see RigConfig.libvirt_cache). VFALLOC_E2E_LIBVIRT_CACHE="" puts it in the work dir.
_CACHE = os.environ.get("VFALLOC_E2E_LIBVIRT_CACHE", "/var/tmp/vfalloc-cache/libvirt-qemu")
DEFAULT_LIBVIRT_CACHE: Path | None = Path(_CACHE) if _CACHE else None
# Wall-clock bound for each boot on an idle machine (QEMU is killed after it); every step has its
# own, shorter bound. A green scenario takes about 250 s in its first boot and 100 s in its second
# on 2 idle cores. The VM reports how much slower it runs ("e2e pace: ... N.Nx slower", "pace
# N.Nx" after each step; tests/e2e/pace.py) and the bound grows by that factor.
DEFAULT_TIMEOUT_S = float(os.environ.get("VFALLOC_E2E_TIMEOUT", "600"))
QEMU = os.environ.get("VFALLOC_E2E_QEMU", "qemu-system-x86_64")
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))

# What stage1.sh needs before it can mount the shared root: 9p over virtio and overlayfs.
# virtio and virtio_pci are built in on Debian (CONFIG_VIRTIO_PCI=y); listed so that a kernel
# that has them as modules still boots. Dependencies (netfs, 9pnet, ...) come from modules.dep.
INITRAMFS_MODULES = ("virtio", "virtio_ring", "virtio_pci", "9pnet_virtio", "9p", "overlay")

# 9p mount tags; stage1.sh and stage2.sh mount these names.
ROOT_TAG = "hostroot"
RESULTS_TAG = "results"
CACHE_TAG = "cache"


@dataclass(frozen=True)
class Kernel:
    release: str  # e.g. 6.12.95+deb12-amd64
    image: Path  # /boot/vmlinuz-<release>
    modules: Path  # /lib/modules/<release>


@dataclass(frozen=True)
class RigConfig:
    kernel: Kernel
    work_dir: Path = DEFAULT_WORK_DIR
    timeout_s: float = DEFAULT_TIMEOUT_S
    pfs: int = 2
    # Seven paused guests with vfio-pinned memory need about 800 MiB on top of the base system.
    memory_mib: int = 3072
    cpus: int = 2
    # vCPUs of the VMs of the other lanes when the lanes run together (see lanes): one, so that
    # such a VM never takes more than the core the first VM leaves. With two each, the two VMs'
    # busy phases slowed the first lane by half and the second by twice (2026-12-02), for no gain
    # over one VM at a time. Lanes that run one after another get `cpus` each.
    side_cpus: int = 1
    # Their niceness. 10 starved the second VM as soon as anything else wanted the CPUs: beside
    # two CPU-bound loops it got a tenth of a core and the run did not end in 25 minutes
    # (docs/reliability.md). At 0 it gets its fair share of whatever is there.
    side_nice: int = 0
    # Whether the lanes run at the same time. None: as VFALLOC_E2E_LANES says, by default at the
    # same time: at the same priority that finished sooner than one after another on an idle
    # machine (6 min 10 s against about 8, 2026-12-02) and beside two CPU-bound loops and other
    # test runs (12 min 24 s against 22 min 14 s, 2026-12-08; docs/reliability.md).
    together: bool | None = None
    # The interpreter that runs scenario.py inside the VM. The VM shares this machine's "/",
    # so this very interpreter (venv or not) is there at the same path.
    python: str = sys.executable
    scenario: Path = SCENARIO
    # Boots of the VM in one run, in lanes; each boot N runs the steps of boot N (e2e.boot=N).
    # The boots of a lane run one after another on one disk: boot 2 sees what boot 1 left on it,
    # with a new kernel boot_id, as a real host after a reboot. Lanes run at the same time
    # (unless `together` says otherwise), each a VM of its own with its own disk and
    # libvirt cache: a VM keeps about one of its two vCPUs busy (its steps run one command at a
    # time; 1.06 CPUs on average in a run measured 2026-12-02), so a second one uses the
    # machine's other core.
    lanes: tuple[tuple[int, ...], ...] = ((1,),)
    # The host's disk (virtio-blk, /dev/vda in the VM), blank at the start of each run and kept
    # across the boots of its lane; 0: no disk.
    disk_mib: int = 0
    # vfalloc's Debian package (`make deb`), which the VM installs with dpkg (steps_deb.py); the
    # VM sees it at the same path on the shared root. None: those steps fail and say so.
    deb: Path | None = Path(os.environ["VFALLOC_E2E_DEB"]) if os.environ.get("VFALLOC_E2E_DEB") else None

    @property
    def results_dir(self) -> Path:
        return self.work_dir / "results"

    # libvirt's QEMU capability cache (/var/cache/libvirt/qemu in the VM), kept across runs:
    # probing the QEMU binaries under TCG costs about 25 s per boot. libvirt checks each cache
    # entry against the binary, itself and the kernel, and probes again when one changed; an
    # empty or absent cache only costs that time. The first lane's; another lane's is a sibling
    # named after its first boot (two VMs never write one at once).
    # None: <work_dir>/libvirt-cache (new with the work dir).
    libvirt_cache: Path | None = None

    @property
    def boots(self) -> tuple[int, ...]:
        return tuple(sorted(n for lane in self.lanes for n in lane))

    def lane_of(self, boot: int) -> tuple[int, ...]:
        return next(lane for lane in self.lanes if boot in lane)

    def in_first_lane(self, boot: int) -> bool:
        return boot in self.lanes[0]

    def cpus_of(self, boot: int) -> int:
        return self.cpus if self.in_first_lane(boot) or self.together is False else self.side_cpus

    def nice_of(self, boot: int) -> int:
        return 0 if self.in_first_lane(boot) or self.together is False else self.side_nice

    def cache_dir(self, boot: int = 1) -> Path:
        base = self.libvirt_cache or self.work_dir / "libvirt-cache"
        if self.in_first_lane(boot):
            return base
        return base.with_name(f"{base.name}-{self.lane_of(boot)[0]}")

    def disk_image(self, boot: int = 1) -> Path:
        return self.work_dir / f"disk-{self.lane_of(boot)[0]}.img"

    def console_log(self, boot: int = 1) -> Path:
        return self.work_dir / f"console-{boot}.log"

    def qemu_log(self, boot: int = 1) -> Path:
        return self.work_dir / f"qemu-{boot}.log"

    @property
    def initramfs(self) -> Path:
        return self.work_dir / "initramfs.cpio.gz"


@dataclass(frozen=True)
class StepResult:
    """One record of results/steps.jsonl, as scenario.py writes it."""

    step: str
    ok: bool
    seconds: float
    tail: str
    log: str = ""  # file name of the step's full log in the results dir
    pace: float = 1.0  # how many times slower than on an idle machine the VM ran the step


@dataclass(frozen=True)
class Boot:
    number: int
    returncode: int | None  # None when QEMU was killed on timeout
    timed_out: bool
    seconds: float
    pace: float = 1.0  # the largest slowdown the VM reported in this boot
    # The ends of the console log and of QEMU's own output, read while the run held the work dir.
    console: str = ""
    qemu_output: str = ""

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0


@dataclass(frozen=True)
class RigRun:
    config: RigConfig
    boots: tuple[Boot, ...]
    results: dict[str, StepResult] = field(default_factory=dict)

    @property
    def last_boot(self) -> Boot:
        """The boot that failed first, or the last one."""
        return next((b for b in self.boots if not b.ok), self.boots[-1])

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.last_boot.console.splitlines()[-lines:])

    def describe_boot(self) -> str:
        texts = []
        for b in self.boots:
            if b.timed_out:
                how = (f"boot {b.number}: QEMU killed after {b.seconds:.0f} s (the "
                       f"{self.config.timeout_s:.0f} s bound at pace {b.pace:.1f}x)")
            else:
                how = f"boot {b.number}: QEMU exited {b.returncode} after {b.seconds:.1f} s"
            texts.append(f"{how} (console: {self.config.console_log(b.number)})")
        missing = len(self.config.boots) - len(self.boots)
        if missing:
            texts.append(f"{missing} later boot(s) not run: boot {self.last_boot.number} failed")
        text = "; ".join(texts) + f"; results: {self.config.results_dir}"
        for b in self.boots:
            panic = next((line.strip() for line in b.console.splitlines() if "Kernel panic" in line), None)
            if panic:
                text += f"\n--- the kernel of boot {b.number} panicked: {panic}"
        for b in self.boots:
            if b.qemu_output.strip():
                text += f"\n--- QEMU said in boot {b.number}:\n{b.qemu_output}"
        return text


# --- what this machine has ------------------------------------------------------------------


def _version_key(release: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.+~-]", release)]


def find_kernel(
    boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")
) -> Kernel | None:
    """The newest installed kernel that has both an image and its modules (linux-image-*).

    VFALLOC_E2E_KERNEL=<release> picks one by name."""
    wanted = os.environ.get("VFALLOC_E2E_KERNEL")
    found = []
    for image in boot.glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        if (modules_root / release / "modules.dep").is_file() and release == (wanted or release):
            found.append(Kernel(release, image, modules_root / release))
    return max(found, key=lambda k: _version_key(k.release), default=None)


def find_busybox() -> Path | None:
    return next((p for p in BUSYBOX_CANDIDATES if p.is_file() and _is_static_elf(p)), None)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF64 file without a PT_INTERP program header (no dynamic loader needed:
    the initramfs has no libc)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def qemu_has_igb(qemu: str = QEMU) -> bool:
    """The emulated 82576 SR-IOV NIC (`-device igb`) exists since QEMU 8.0."""
    try:
        probe = subprocess.run(
            [qemu, "-device", "igb,help"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def missing_prerequisites() -> list[str]:
    """Why this machine cannot boot the rig; empty when it can (tools/setup-debian installs
    everything it needs)."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} not found (package qemu-system-x86 from bookworm-backports)")
    elif not qemu_has_igb():
        missing.append(f"{QEMU} has no '-device igb' (needs QEMU >= 8.0, bookworm-backports)")
    kernel = find_kernel()
    if kernel is None:
        missing.append("no kernel with both /boot/vmlinuz-R and /lib/modules/R (linux-image-amd64)")
    elif not os.access(kernel.image, os.R_OK):
        missing.append(f"{kernel.image} is not readable (Debian installs it 0600: run as root)")
    if find_busybox() is None:
        missing.append("no static busybox in /bin or /usr/bin (package busybox-static)")
    return missing


# --- initramfs ------------------------------------------------------------------------------


def parse_modules_dep(modules: Path) -> dict[str, list[str]]:
    """modules.dep as {module name: [its path, then the paths of everything it needs]}."""
    deps = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[_module_name(path)] = [path, *needs.split()]
    return deps


def _module_name(path: str) -> str:
    base = Path(path).name.split(".ko")[0]
    return base.replace("-", "_")


def module_load_order(deps: dict[str, list[str]], names: tuple[str, ...]) -> list[str]:
    """Module paths in an order insmod accepts: every module after the modules it needs.
    Names absent from modules.dep are built in and skipped."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in deps:
            return
        path, *needs = deps[name]
        for need in needs:
            visit(_module_name(need))
        if path not in order:
            order.append(path)

    for name in names:
        visit(name)
    return order


def read_module(path: Path) -> bytes:
    """A module's ELF bytes: busybox insmod in the initramfs takes only uncompressed .ko."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: list[CpioEntry]) -> bytes:
    """A "newc" cpio archive, the format the kernel unpacks an initramfs from
    (Documentation/driver-api/early-userspace/buffer-format.rst). Written here so that device
    nodes need no root and no mknod."""

    def pad4(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    out = []
    for ino, e in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        fields = (ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08x" % v for v in fields)
        out.append(pad4(header + name) + pad4(e.data))
    return b"".join(out)


def initramfs_entries(kernel: Kernel, busybox: Path) -> list[CpioEntry]:
    deps = parse_modules_dep(kernel.modules)
    order = module_load_order(deps, INITRAMFS_MODULES)
    dirs = ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules")
    entries = [CpioEntry(d, 0o040755) for d in dirs]
    # /dev/console (char 5:1) must exist in the initramfs itself: the kernel opens it for
    # init's stdin/stdout/stderr before /init runs (init/main.c, console_on_rootfs).
    entries.append(CpioEntry("dev/console", 0o020600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(CpioEntry("init", 0o100755, STAGE1.read_bytes()))
    listing = []
    for rel in order:
        name = Path(rel).name.split(".ko")[0] + ".ko"
        entries.append(CpioEntry(f"modules/{name}", 0o100644, read_module(kernel.modules / rel)))
        listing.append(name)
    load_order = "".join(f"{n}\n" for n in listing).encode()
    entries.append(CpioEntry("modules/load-order", 0o100644, load_order))
    return entries


def build_initramfs(config: RigConfig, busybox: Path) -> Path:
    data = gzip.compress(cpio_newc(initramfs_entries(config.kernel, busybox)), compresslevel=1)
    config.initramfs.write_bytes(data)
    return config.initramfs


# --- QEMU -----------------------------------------------------------------------------------


def kernel_cmdline(config: RigConfig, boot: int = 1) -> str:
    paths = {"e2e.stage2": STAGE2, "e2e.python": config.python, "e2e.scenario": config.scenario,
             **({"e2e.deb": config.deb.resolve()} if config.deb else {})}
    for key, value in paths.items():
        if re.search(r"\s", str(value)):
            raise ValueError(f"{key}={value}: the kernel command line cannot carry spaces")
    return " ".join(
        [
            "console=ttyS0",
            "intel_iommu=on",  # the vIOMMU gives every VF its own IOMMU group
            # A test VM on an emulated CPU: the speculation mitigations an Intel CPU model calls
            # for cost TCG dearly on every system call and protect nothing here.
            "mitigations=off",
            # The boot-time check that the timer interrupt arrives through the remapped IO-APIC
            # (arch/x86/kernel/apic/io_apic.c, timer_irq_works) counts ticks over a fixed delay;
            # on a TCG vCPU starved by a busy machine it sees too few and panics ("timer doesn't
            # work through Interrupt-remapped IO-APIC"). The timer is QEMU's and works.
            "no_timer_check",
            # A periodic tick: each vCPU's LAPIC timer in periodic mode, which QEMU re-arms by
            # itself, so a timer interrupt or wake-up lost under TCG costs one tick (4 ms at
            # Debian's HZ=250), not the CPU. With the default one-shot timers an idle vCPU 0 was
            # seen to sleep for good ("rcu_preempt kthread timer wakeup didn't happen",
            # docs/reliability.md), three times on 2026-12-02.
            "nohz=off",
            "highres=off",
            "panic=-1",  # a panic reboots at once, and -no-reboot turns that into QEMU exiting
            "loglevel=4",
            f"e2e.boot={boot}",
            *(f"{k}={v}" for k, v in paths.items()),
        ]
    )


def pf_devices(count: int) -> list[str]:
    """Each igb PF behind its own pcie-root-port. QEMU's root port has the ACS capability (the
    igb PF has none), so every PF and every VF lands in an IOMMU group of its own (docs/testing.md,
    "The emulated SR-IOV host"). restrict=on: the user netdev has no way out."""
    args = []
    for i in range(1, count + 1):
        args += [
            "-device", f"pcie-root-port,id=rp{i},chassis={i},slot={i},bus=pcie.0,addr={0x3 + i:#x}",
            "-netdev", f"user,id=net{i},restrict=on",
            "-device", f"igb,id=pf{i},bus=rp{i},netdev=net{i},mac=52:54:00:e2:e0:{i:02x}",
        ]
    return args


def shares(config: RigConfig, boot: int = 1) -> list[str]:
    """The machine's "/" read-only (stage1 puts a tmpfs overlay on it) and the results dir
    writable. multidevs=remap keeps inode numbers unique across the host's filesystems."""
    return [
        "-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=fsroot,mount_tag={ROOT_TAG},bus=pcie.0,addr=0x2",
        "-fsdev", f"local,id=fsresults,path={config.results_dir},security_model=none",
        "-device", f"virtio-9p-pci,fsdev=fsresults,mount_tag={RESULTS_TAG},bus=pcie.0,addr=0x3",
        "-fsdev", f"local,id=fscache,path={config.cache_dir(boot)},security_model=none",
        "-device", f"virtio-9p-pci,fsdev=fscache,mount_tag={CACHE_TAG},bus=pcie.0,addr=0x8",
    ]


def disk(config: RigConfig, boot: int = 1) -> list[str]:
    """The host's disk: a raw image per lane, blank at the start of a run, /dev/vda in the VM."""
    if not config.disk_mib:
        return []
    return [
        "-drive", f"file={config.disk_image(boot)},format=raw,if=none,id=disk0",
        "-device", "virtio-blk-pci,drive=disk0,serial=e2e-disk,bus=pcie.0,addr=0x9",
    ]


def qemu_argv(config: RigConfig, boot: int = 1) -> list[str]:
    return [
        QEMU,
        # TCG: /dev/kvm here is kvm_pvm and cannot run a stock kernel
        # (docs/testing.md, "The emulated SR-IOV host").
        "-accel", "tcg,thread=multi",
        # An Intel CPU, as the Intel IOMMU below (the reference host is Intel: I350 and VT-d).
        "-cpu", "max,vendor=GenuineIntel",
        "-smp", str(config.cpus_of(boot)),
        "-m", str(config.memory_mib),
        # kernel-irqchip=split: intel-iommu refuses intremap=on with an in-kernel irqchip under
        # KVM; a no-op under TCG, kept so the line stays the known-good one of docs/testing.md.
        "-M", "q35,kernel-irqchip=split",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        # The vIOMMU comes before the devices it translates. caching-mode=on (VT-d CM bit: the
        # guest also reports new mappings), the known-good configuration of docs/testing.md.
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        *pf_devices(config.pfs),
        *shares(config, boot),
        *disk(config, boot),
        "-serial", f"file:{config.console_log(boot)}",
        "-kernel", str(config.kernel.image),
        "-initrd", str(config.initramfs),
        "-append", kernel_cmdline(config, boot),
    ]


def run_qemu(config: RigConfig, boot: int = 1,
             on_line: Callable[[str], None] | None = None) -> Boot:
    """Run QEMU to its end (the guest powers off) or kill it at the time bound. The command
    line is kept next to the logs, for running it by hand. on_line gets each line the VM's
    stage scripts and scenario print on the console ("e2e ..."), as they come."""
    argv = qemu_argv(config, boot)
    (config.work_dir / f"qemu-{boot}.cmdline").write_text(shlex.join(argv) + "\n")
    start = time.monotonic()
    speed = PaceWatcher(on_line)
    console = ConsoleFollower(config.console_log(boot), speed.line)
    with config.qemu_log(boot).open("wb") as log:
        nice = config.nice_of(boot)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        rc: int | None = None
        timed_out = False
        try:
            while rc is None:
                try:
                    rc = proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    if time.monotonic() - start > config.timeout_s * speed.factor:
                        timed_out = True
                        break
                console.poll()
            console.poll()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return Boot(boot, rc, timed_out, time.monotonic() - start, speed.factor,
                console=_tail_file(config.console_log(boot), 200),
                qemu_output=_tail_file(config.qemu_log(boot), 20))


class PaceWatcher:
    """Passes the VM's lines on and keeps the largest slowdown they report (scenario.py prints
    "e2e pace: ... N.Nx slower ..." at boot and "(..., pace N.Nx)" after each step)."""

    PATTERN = re.compile(r"\b(\d+(?:\.\d+)?)x slower\b|\bpace (\d+(?:\.\d+)?)x\b")

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self.factor = 1.0

    def line(self, text: str) -> None:
        for found in self.PATTERN.finditer(text):
            self.factor = max(self.factor, float(found.group(1) or found.group(2)))
        if self.on_line is not None:
            self.on_line(text)


class ConsoleFollower:
    """Hands the new lines of a growing file (by default only the "e2e ..." lines of the
    console log) to a callback."""

    def __init__(self, path: Path, on_line: Callable[[str], None] | None,
                 prefix: str = "e2e ") -> None:
        self.path, self.on_line, self.prefix = path, on_line, prefix
        self.offset, self.partial, self.inode = 0, "", None

    def poll(self) -> None:
        if self.on_line is None:
            return
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            st = os.fstat(f.fileno())
            if st.st_ino != self.inode or st.st_size < self.offset:  # a new file: from its start
                self.inode, self.offset, self.partial = st.st_ino, 0, ""
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data.decode(errors="replace")).split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if line.startswith(self.prefix):
                self.on_line(line)


# --- results --------------------------------------------------------------------------------


def read_results(results_dir: Path) -> dict[str, StepResult]:
    """steps-N.jsonl of each boot N, one JSON object per line; a torn last line (VM killed
    mid-write) is dropped."""
    results: dict[str, StepResult] = {}
    for path in sorted(results_dir.glob("steps-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            results[record["step"]] = StepResult(
                record["step"], bool(record["ok"]), float(record["seconds"]), record.get("tail", ""),
                record.get("log", ""), float(record.get("pace", 1.0)),
            )
    return results


def _tail_file(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# --- one whole run --------------------------------------------------------------------------


@contextmanager
def exclusive(work_dir: Path, wait_s: float) -> Iterator[None]:
    """One rig per work dir at a time: two runs would share the results dir and the logs."""
    with (work_dir / "lock").open("w") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another e2e run holds {work_dir}/lock") from None
                time.sleep(1)
        yield


# VFALLOC_E2E_LANES: the lanes at the same time (unset, "together") or one after another.
LANES_WANTED = {"": True, "together": True, "apart": False}


def free_cpus(seconds: float = 2.0) -> float:
    """How many of this machine's CPUs were idle over the next `seconds`."""
    before = Path("/proc/stat").read_text()
    time.sleep(seconds)
    return free_between(before, Path("/proc/stat").read_text(), os.cpu_count() or 1)


def free_between(before: str, after: str, cpus: int) -> float:
    """The CPUs idle between two readings of /proc/stat: its first line sums the time all CPUs
    spent in each state (proc(5): cpu user nice system idle iowait irq softirq steal ...);
    idle and iowait are free time."""

    def counters(text: str) -> tuple[int, int]:
        fields = [int(v) for v in text.splitlines()[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]

    (total0, idle0), (total1, idle1) = counters(before), counters(after)
    return cpus * (idle1 - idle0) / max(1, total1 - total0)


def describe_caches(config: RigConfig) -> str:
    """The libvirt capability caches this run starts with: there (a speed-up) or absent."""
    parts = []
    for lane in config.lanes:
        path = config.cache_dir(lane[0])
        entries = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
        parts.append(f"{path} {'there (' + str(entries) + ' files)' if entries else 'absent'}")
    return "e2e rig: libvirt capability cache: " + ", ".join(parts)


def prepare_work_dir(config: RigConfig) -> None:
    """A fresh results dir and a blank disk for this run; the libvirt cache is kept."""
    shutil.rmtree(config.results_dir, ignore_errors=True)
    config.results_dir.mkdir(parents=True)
    for old in [*config.work_dir.glob("console*.log"), *config.work_dir.glob("qemu*.log"),
                *config.work_dir.glob("disk*.img")]:
        old.unlink()
    for lane in config.lanes:
        config.cache_dir(lane[0]).mkdir(parents=True, exist_ok=True)
        if config.disk_mib:
            with config.disk_image(lane[0]).open("wb") as f:
                f.truncate(config.disk_mib * 1024 * 1024)  # sparse; the lane's first boot formats it


def run_rig(config: RigConfig, on_line: Callable[[str], None] | None = None) -> RigRun:
    """Run each lane of boots (RigConfig.lanes), the lanes at the same time; in a lane, a later
    boot only when the one before ended cleanly. on_line gets the VMs' progress lines (see
    run_qemu) and a line when each boot starts, one line at a time."""
    busybox = find_busybox()
    if busybox is None:
        raise RuntimeError("no static busybox")
    config.work_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(config.work_dir, wait_s=config.timeout_s):
        say = _one_at_a_time(on_line)
        if len(config.lanes) > 1 and config.together is None:
            wanted = os.environ.get("VFALLOC_E2E_LANES", "")
            if wanted not in LANES_WANTED:
                raise RuntimeError(f"VFALLOC_E2E_LANES={wanted}: say together or apart (unset: together)")
            config = replace(config, together=LANES_WANTED[wanted])
        if say and len(config.lanes) > 1:
            # the times of a run say more with what else the machine was doing beside
            how = "at the same time" if config.together else "one after another"
            say(f"e2e rig: {free_cpus():.1f} of {os.cpu_count()} CPUs free at the start; the "
                f"{len(config.lanes)} VMs run {how}")
        if say:
            say(describe_caches(config))
        prepare_work_dir(config)
        build_initramfs(config, busybox)
        with ThreadPoolExecutor(max_workers=len(config.lanes) if config.together else 1) as lanes:
            done = list(lanes.map(lambda lane: run_lane(config, lane, say), config.lanes))
        boots = sorted((b for lane in done for b in lane), key=lambda b: b.number)
        return RigRun(config, tuple(boots), read_results(config.results_dir))


def run_lane(config: RigConfig, lane: tuple[int, ...], on_line: Callable[[str], None] | None) -> list[Boot]:
    boots: list[Boot] = []
    for n in lane:
        if on_line:
            on_line(f"e2e rig: boot {n} of {len(config.boots)}")
        boots.append(run_qemu(config, n, on_line))
        if not boots[-1].ok:
            break
    return boots


def _one_at_a_time(on_line: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """on_line, called by one lane's thread at a time."""
    if on_line is None:
        return None
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            on_line(line)

    return say


def default_config() -> RigConfig:
    kernel = find_kernel()
    if kernel is None:
        raise RuntimeError("no kernel found")
    return RigConfig(kernel=kernel)


def scenario_config(kernel: Kernel | None = None, **overrides) -> RigConfig:
    """The rig as scenario.py needs it: its lanes of boots (scenario.LANES), and a disk."""
    import scenario

    kernel = kernel or default_config().kernel
    settings = {"libvirt_cache": DEFAULT_LIBVIRT_CACHE, **overrides}
    return RigConfig(kernel=kernel, lanes=scenario.LANES, disk_mib=scenario.DISK_MIB, **settings)


def format_results(run: RigRun, steps: list[tuple[str, int]]) -> str:
    """One line per (step name, boot): result and seconds; then the boots' wall times."""
    lines = [f"{'boot':<5} {'step':<26} {'result':<7} {'seconds':>8} {'pace':>6}"]
    for name, boot in steps:
        r = run.results.get(name)
        result = "absent" if r is None else ("ok" if r.ok else "FAIL")
        seconds = "" if r is None else f"{r.seconds:8.2f}"
        speed = "" if r is None else f"{r.pace:5.1f}x"
        lines.append(f"{boot:<5} {name:<26} {result:<7} {seconds:>8} {speed:>6}")
    in_steps = sum(r.seconds for r in run.results.values())
    lanes = [sum(b.seconds for b in run.boots if b.number in lane) for lane in run.config.lanes]
    wall, how = (sum(lanes), "one after another") if run.config.together is False else (max(lanes), "at once")
    lines.append(f"steps {in_steps:.1f} s inside the VMs, {wall:.1f} s of QEMU wall time "
                 f"(lanes {how}: {', '.join(f'{s:.1f} s' for s in lanes)}); {run.describe_boot()}")
    lines.append(describe_pace(run))
    return "\n".join(lines)


def describe_pace(run: RigRun) -> str:
    """How much slower than on an idle machine the VM ran (every wait in it was scaled so)."""
    paces = sorted(r.pace for r in run.results.values())
    if not paces:
        return "pace: the VM reported none (no step ran)"
    median = paces[len(paces) // 2]
    boots = ", ".join(f"boot {b.number} up to {b.pace:.1f}x" for b in run.boots)
    return (f"pace: the VM ran {median:.1f}x slower than on an idle machine (median over the "
            f"steps; {paces[0]:.1f}x to {paces[-1]:.1f}x; {boots}); every step's bound and wait "
            f"was scaled by its pace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Boot the emulated SR-IOV host, run the scenario.")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds before QEMU is killed"
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("cannot boot the rig:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    import scenario  # the step names, in order; importing it runs nothing

    config = scenario_config(default_config().kernel, work_dir=args.work_dir, timeout_s=args.timeout)
    run = run_rig(config, on_line=lambda line: print(line, flush=True))
    names = [name for name, _ in scenario.step_boots()]
    print(format_results(run, scenario.step_boots()))
    all_ok = all(name in run.results and run.results[name].ok for name in names)
    if not all_ok:
        print("\nconsole tail:\n" + run.console_tail(), file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
