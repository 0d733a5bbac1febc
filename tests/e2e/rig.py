"""The emulated SR-IOV host: builds its initramfs, boots it under QEMU and reads what it reported.

This file owns the host side of the hardware test layer (DESIGN.md, "Test layers"):
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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
STAGE1 = HERE / "stage1.sh"
STAGE2 = HERE / "stage2.sh"
SCENARIO = HERE / "scenario.py"

DEFAULT_WORK_DIR = Path(os.environ.get("VFALLOC_E2E_WORKDIR", "/var/tmp/vfalloc-e2e"))
# Wall-clock bound for one whole boot (QEMU is killed after it). A green run takes 40-65 s.
DEFAULT_TIMEOUT_S = float(os.environ.get("VFALLOC_E2E_TIMEOUT", "240"))
QEMU = os.environ.get("VFALLOC_E2E_QEMU", "qemu-system-x86_64")
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))

# What stage1.sh needs before it can mount the shared root: 9p over virtio and overlayfs.
# virtio and virtio_pci are built in on Debian (CONFIG_VIRTIO_PCI=y); listed so that a kernel
# that has them as modules still boots. Dependencies (netfs, 9pnet, ...) come from modules.dep.
INITRAMFS_MODULES = ("virtio", "virtio_ring", "virtio_pci", "9pnet_virtio", "9p", "overlay")

# 9p mount tags; stage1.sh and stage2.sh mount these names.
ROOT_TAG = "hostroot"
RESULTS_TAG = "results"


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
    memory_mib: int = 2048
    cpus: int = 2
    # The interpreter that runs scenario.py inside the VM. The VM shares this machine's "/",
    # so this very interpreter (venv or not) is there at the same path.
    python: str = sys.executable
    scenario: Path = SCENARIO

    @property
    def results_dir(self) -> Path:
        return self.work_dir / "results"

    @property
    def console_log(self) -> Path:
        return self.work_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.work_dir / "qemu.log"

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


@dataclass(frozen=True)
class Boot:
    returncode: int | None  # None when QEMU was killed on timeout
    timed_out: bool
    seconds: float


@dataclass(frozen=True)
class RigRun:
    config: RigConfig
    boot: Boot
    results: dict[str, StepResult] = field(default_factory=dict)
    # The ends of the console log and of QEMU's own output, read while the run held the work dir.
    console: str = ""
    qemu_output: str = ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def describe_boot(self) -> str:
        b = self.boot
        if b.timed_out:
            how = f"QEMU killed after the {self.config.timeout_s:.0f} s bound"
        else:
            how = f"QEMU exited {b.returncode} after {b.seconds:.1f} s"
        text = f"{how}; console: {self.config.console_log}, results: {self.config.results_dir}"
        if self.qemu_output.strip():
            text += f"\n--- QEMU said:\n{self.qemu_output}"
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


def kernel_cmdline(config: RigConfig) -> str:
    paths = {"e2e.stage2": STAGE2, "e2e.python": config.python, "e2e.scenario": config.scenario}
    for key, value in paths.items():
        if re.search(r"\s", str(value)):
            raise ValueError(f"{key}={value}: the kernel command line cannot carry spaces")
    return " ".join(
        [
            "console=ttyS0",
            "intel_iommu=on",  # the vIOMMU gives every VF its own IOMMU group
            "panic=-1",  # a panic reboots at once, and -no-reboot turns that into QEMU exiting
            "loglevel=4",
            *(f"{k}={v}" for k, v in paths.items()),
        ]
    )


def pf_devices(count: int) -> list[str]:
    """Each igb PF behind its own pcie-root-port. QEMU's root port has the ACS capability (the
    igb PF has none), so every PF and every VF lands in an IOMMU group of its own
    (shared/rig/README.md). restrict=on: the user netdev has no way out."""
    args = []
    for i in range(1, count + 1):
        args += [
            "-device", f"pcie-root-port,id=rp{i},chassis={i},slot={i},bus=pcie.0,addr={0x3 + i:#x}",
            "-netdev", f"user,id=net{i},restrict=on",
            "-device", f"igb,id=pf{i},bus=rp{i},netdev=net{i},mac=52:54:00:e2:e0:{i:02x}",
        ]
    return args


def shares(config: RigConfig) -> list[str]:
    """The machine's "/" read-only (stage1 puts a tmpfs overlay on it) and the results dir
    writable. multidevs=remap keeps inode numbers unique across the host's filesystems."""
    return [
        "-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=fsroot,mount_tag={ROOT_TAG},bus=pcie.0,addr=0x2",
        "-fsdev", f"local,id=fsresults,path={config.results_dir},security_model=none",
        "-device", f"virtio-9p-pci,fsdev=fsresults,mount_tag={RESULTS_TAG},bus=pcie.0,addr=0x3",
    ]


def qemu_argv(config: RigConfig) -> list[str]:
    return [
        QEMU,
        # TCG: /dev/kvm here is kvm_pvm and cannot run a stock kernel (shared/rig/README.md).
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-smp", str(config.cpus),
        "-m", str(config.memory_mib),
        # kernel-irqchip=split: intel-iommu refuses intremap=on with an in-kernel irqchip under
        # KVM; a no-op under TCG, kept so the line stays the known-good one of DESIGN.md.
        "-M", "q35,kernel-irqchip=split",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        # The vIOMMU comes before the devices it translates. caching-mode=on (VT-d CM bit: the
        # guest also reports new mappings) as in DESIGN.md's known-good configuration.
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        *pf_devices(config.pfs),
        *shares(config),
        "-serial", f"file:{config.console_log}",
        "-kernel", str(config.kernel.image),
        "-initrd", str(config.initramfs),
        "-append", kernel_cmdline(config),
    ]


def run_qemu(config: RigConfig) -> Boot:
    """Run QEMU to its end (the guest powers off) or kill it at the time bound. The command
    line is kept next to the logs, for running it by hand."""
    argv = qemu_argv(config)
    (config.work_dir / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
    start = time.monotonic()
    with config.qemu_log.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            rc = proc.wait(timeout=config.timeout_s)
            return Boot(rc, False, time.monotonic() - start)
        except subprocess.TimeoutExpired:
            return Boot(None, True, time.monotonic() - start)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


# --- results --------------------------------------------------------------------------------


def read_results(results_dir: Path) -> dict[str, StepResult]:
    """steps.jsonl, one JSON object per line; a torn last line (VM killed mid-write) is dropped."""
    path = results_dir / "steps.jsonl"
    results: dict[str, StepResult] = {}
    if not path.exists():
        return results
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        results[record["step"]] = StepResult(
            record["step"], bool(record["ok"]), float(record["seconds"]), record.get("tail", ""),
            record.get("log", ""),
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


def prepare_work_dir(config: RigConfig) -> None:
    shutil.rmtree(config.results_dir, ignore_errors=True)
    config.results_dir.mkdir()
    for log in (config.console_log, config.qemu_log):
        log.unlink(missing_ok=True)


def run_rig(config: RigConfig) -> RigRun:
    busybox = find_busybox()
    if busybox is None:
        raise RuntimeError("no static busybox")
    config.work_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(config.work_dir, wait_s=config.timeout_s):
        prepare_work_dir(config)
        build_initramfs(config, busybox)
        boot = run_qemu(config)
        return RigRun(
            config, boot, read_results(config.results_dir),
            console=_tail_file(config.console_log, 200),
            qemu_output=_tail_file(config.qemu_log, 20),
        )


def default_config() -> RigConfig:
    kernel = find_kernel()
    if kernel is None:
        raise RuntimeError("no kernel found")
    return RigConfig(kernel=kernel)


def format_results(run: RigRun, step_names: list[str]) -> str:
    lines = [f"{'step':<24} {'result':<7} {'seconds':>8}"]
    for name in step_names:
        r = run.results.get(name)
        result = "absent" if r is None else ("ok" if r.ok else "FAIL")
        seconds = "" if r is None else f"{r.seconds:8.2f}"
        lines.append(f"{name:<24} {result:<7} {seconds:>8}")
    in_steps = sum(r.seconds for r in run.results.values())
    lines.append(f"steps {in_steps:.1f} s inside the VM; {run.describe_boot()}")
    return "\n".join(lines)


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
    config = RigConfig(default_config().kernel, work_dir=args.work_dir, timeout_s=args.timeout)
    run = run_rig(config)
    sys.path.insert(0, str(HERE))
    import scenario  # the step names, in order; importing it runs nothing

    names = scenario.step_names()
    print(format_results(run, names))
    all_ok = all(name in run.results and run.results[name].ok for name in names)
    if not all_ok:
        print("\nconsole tail:\n" + run.console_tail(), file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
