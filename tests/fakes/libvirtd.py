"""A real libvirt daemon (libvirtd + virtlogd, QEMU driver) started by the tests themselves, with
vfalloc's hook installed, on a fake SR-IOV host.

`libvirt_daemon` (session scope) starts it once; `lab` (function scope) hands a test the daemon
with an empty lease table, empty logs and no domains left from an earlier test.

Isolation: the daemons run in a private mount namespace (unshare(1), then nsenter(1) for each
daemon) in which the directories compiled into libvirt are bind-mounted from this session's
temp dir, so the host's libvirt state is never touched and two test sessions can run at once:
    /run/libvirt       <- TMP/run      sockets, and qemu/NAME.xml + NAME.pid while NAME runs
    /etc/libvirt/qemu  <- TMP/etc-qemu persistent domain definitions
    /etc/libvirt/hooks <- TMP/hooks    where `vfalloc install-hook --hooks-dir` puts qemu.d/vfalloc
    /var/lib/libvirt   <- TMP/lib
    /var/log/libvirt   <- TMP/log      QEMU's per-domain logs (written by virtlogd)
    /run/vfalloc       <- TMP/run-vfalloc  the hook's parsed-config memo (vfalloc.config_cache)
Outside the namespace the same directories are reachable under TMP: the tests connect to
qemu:///system?socket=TMP/run/libvirt-sock. QEMU's capability cache (/var/cache/libvirt) is
shared with the host: it only makes the daemon start faster.

The hook is installed by `vfalloc install-hook --config CONFIG` before the daemon starts (libvirt
looks for hook files at start). libvirt hands a hook a minimal environment (HOME, PATH, LC_ALL
with libvirt 11.3), so everything the hook needs is in CONFIG's [settings]: the fake sysfs and
/proc, the state file, libvirt_run = TMP/run/qemu (the same directory inside and outside), and
hook_log, the file the hook and the hot-plug worker append their log lines to. A second hook,
qemu.d/zz-record (libvirt runs qemu.d/* in name order), records every call's argv and stdin.

The fake VFs do not exist as PCI devices, so libvirt refuses to pass them through ("host doesn't
support passthrough of host PCI devices" here): enough for the refusal, release, hot-plug failure
and gc paths. Devices that need a real VF are proven on the emulated SR-IOV host (tests/e2e).

Skips (with the reason) only when the daemon cannot be installed or started: not root, a binary
missing (tools/setup-debian installs them), no mount namespaces, or no answer within 60 s.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Result
from fakehost import FakeSys, i350

BINARIES = ("libvirtd", "virtlogd", "qemu-system-x86_64", "unshare", "nsenter", "mount")
BIND = {"run": "/run/libvirt", "etc-qemu": "/etc/libvirt/qemu", "hooks": "/etc/libvirt/hooks",
        "lib": "/var/lib/libvirt", "log": "/var/log/libvirt", "run-vfalloc": "/run/vfalloc"}
START_TIMEOUT = 60.0
# Not "vfalloc-...": a name with that word sends every call of the domain to Python (hook file).
PREFIX = "vfa-lab-"
NS = "urn:vfalloc:1"
BOOT_ID = "5e551011-0000-4000-8000-000000000001"
POOLS = ('[pools.lan0]\npfs = ["enp1s0f0"]\n'        # 7 VFs
         '[pools.one]\npfs = ["enp1s0f1#0"]\n'       # 1 VF
         '[pools.qat]\npfs = ["enp1s0f3"]\n')

# Runs inside the new mount namespace: bind the directories, say so, live until stdin closes.
_KEEPER = """
import subprocess, sys
for source, target in zip(sys.argv[1::2], sys.argv[2::2]):
    subprocess.run(["mount", "--bind", source, target], check=True)
print("ready", flush=True)
sys.stdin.read()
"""

# A hook that records what libvirt hands every hook: argv, and stdin into a numbered file.
_RECORDER = """#!/bin/sh
dir={dir}
n=$(ls "$dir" | grep -c '\\.xml$')
echo "$*" >> "$dir/calls"
cat > "$dir/$(printf %03d "$n")-$2-$3.xml"
"""


def _die_with_parent() -> None:
    """preexec_fn: the daemon gets SIGTERM if the test session dies without cleaning up."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Daemon:
    tmp: Path
    keeper: subprocess.Popen | None = None
    virtlogd: subprocess.Popen | None = None
    libvirtd: subprocess.Popen | None = None
    conn: object = None
    fs: FakeSys | None = None
    domains: list[str] = field(default_factory=list)

    # -- paths --
    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def status_dir(self) -> Path:
        return self.run_dir / "qemu"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.run_dir / 'libvirt-sock'}"

    @property
    def config(self) -> Path:
        return self.tmp / "lab" / "vfalloc.toml"

    @property
    def state(self) -> Path:
        return self.tmp / "lab" / "state.json"

    @property
    def hook_log(self) -> Path:
        return self.tmp / "lab" / "hook.log"

    @property
    def calls_dir(self) -> Path:
        return self.tmp / "calls"

    # -- set-up --
    def build_lab(self) -> None:
        lab = self.tmp / "lab"
        self.fs = FakeSys(lab / "sys")
        i350(self.fs)
        boot = lab / "proc" / "sys" / "kernel" / "random" / "boot_id"
        boot.parent.mkdir(parents=True)
        boot.write_text(BOOT_ID + "\n")
        self.config.write_text(
            "[settings]\n"
            f'state = "{self.state}"\nsysfs_root = "{lab / "sys"}"\nproc_root = "{lab / "proc"}"\n'
            f'libvirt_run = "{self.status_dir}"\nhook_log = "{self.hook_log}"\nlock_timeout = 20\n' + POOLS)
        for name in BIND:
            # /run/vfalloc as vfalloc makes it (vfalloc.rundir): root's, 0700, or it is not used
            (self.tmp / name).mkdir(mode=0o700 if name == "run-vfalloc" else 0o755)
        self.calls_dir.mkdir()
        recorder = self.tmp / "hooks" / "qemu.d" / "zz-record"
        recorder.parent.mkdir(mode=0o755)
        recorder.write_text(_RECORDER.format(dir=self.calls_dir))
        recorder.chmod(0o755)
        r = self.vfalloc("install-hook", "--hooks-dir", str(self.tmp / "hooks"))
        if r.code != 0:
            raise RuntimeError(f"vfalloc install-hook failed: {r.err}")

    def enter_namespace(self) -> None:
        args = []
        for name, target in BIND.items():
            Path(target).mkdir(parents=True, exist_ok=True)  # a mount point must exist (empty dir)
            args += [str(self.tmp / name), target]
        self.keeper = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", _KEEPER, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent)
        line = self.keeper.stdout.readline()
        if line.strip() != "ready":
            err = self.keeper.stderr.read() if self.keeper.poll() is not None else ""
            raise RuntimeError(f"cannot make a private mount namespace: {err.strip() or line.strip() or 'no answer'}")

    def _nsenter(self, argv: list[str], log: str) -> subprocess.Popen:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        out = open(self.tmp / log, "ab")
        return subprocess.Popen(["nsenter", "--target", str(self.keeper.pid), "--mount", "--", *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd="/",
                                preexec_fn=_die_with_parent)

    def start_daemons(self) -> None:
        import libvirt

        if self.virtlogd is None or self.virtlogd.poll() is not None:
            self.virtlogd = self._nsenter(["virtlogd", "--pid-file", str(self.tmp / "virtlogd.pid")], "virtlogd.out")
            self._wait_for(self.run_dir / "virtlogd-sock", self.virtlogd, "virtlogd")
        # the pid files are outside /run/libvirt: private ones, or a second session cannot start
        self.libvirtd = self._nsenter(["libvirtd", "--pid-file", str(self.tmp / "libvirtd.pid")], "libvirtd.out")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.libvirtd.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self.libvirtd.returncode}: {self._tail('libvirtd.out')}")
            try:
                self.conn = libvirt.open(self.uri)
                self.conn.getVersion()
                return
            except libvirt.libvirtError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"libvirtd did not answer within {START_TIMEOUT:g} s: "
                                       f"{self._tail('libvirtd.out')}") from exc
                time.sleep(0.1)

    def _wait_for(self, path: Path, proc: subprocess.Popen, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {self._tail(what + '.out')}")
            time.sleep(0.05)

    def _tail(self, log: str) -> str:
        try:
            lines = (self.tmp / log).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return " | ".join(lines[-3:]) or "no output"

    def restart_libvirtd(self, kill: bool = True) -> None:
        """Kill libvirtd (SIGKILL: no clean shutdown; the domains keep running) and start it
        again: it reconnects to each running domain and calls `reconnect begin` for it."""
        self.conn = None
        self.libvirtd.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.libvirtd.wait(timeout=30)
        self.start_daemons()

    def stop(self) -> None:
        if self.conn is not None:
            self.clear_domains()
        for proc in (self.libvirtd, self.virtlogd):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.keeper is not None and self.keeper.poll() is None:
            self.keeper.stdin.close()
            self.keeper.wait(timeout=30)

    # -- per test --
    def reset(self) -> None:
        self.clear_domains()
        self.state.unlink(missing_ok=True)
        self.hook_log.unlink(missing_ok=True)
        shutil.rmtree(self.calls_dir)
        self.calls_dir.mkdir()

    def clear_domains(self) -> None:
        import libvirt

        for dom in self.conn.listAllDomains():
            if not dom.name().startswith(PREFIX):
                continue
            if dom.isActive():
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass
            if dom.isPersistent():
                dom.undefine()

    def define(self, name: str, requests: str = "", devices: str = "", machine: str = "q35") -> object:
        """A guest that needs nothing: TCG, 64 MiB, no disk, no OS; q35 keeps one free
        pcie-root-port (a hot-plugged VF needs one)."""
        name = PREFIX + name
        meta = f'<metadata><vfalloc:vfs xmlns:vfalloc="{NS}">{requests}</vfalloc:vfs></metadata>' if requests else ""
        pci = ("<controller type='pci' index='0' model='pcie-root'/><controller type='pci' model='pcie-root-port'/>"
               if machine == "q35" else "")
        xml = (f"<domain type='qemu'><name>{name}</name><uuid>{uuidlib.uuid4()}</uuid>{meta}"
               f"<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
               f"<os><type arch='x86_64' machine='{machine}'>hvm</type></os>"
               f"<devices><emulator>{shutil.which('qemu-system-x86_64')}</emulator>{pci}"
               f"<controller type='usb' model='none'/><memballoon model='none'/>{devices}</devices></domain>")
        return self.conn.defineXML(xml)

    # -- looking --
    def vfalloc(self, *argv: str, connect: bool = True) -> Result:
        """`vfalloc ARGV` in-process with this lab's config (and --connect to this daemon)."""
        from vfalloc.cli import main

        out, err = io.StringIO(), io.StringIO()
        extra = ["--config", str(self.config)]
        if connect and argv[0] in ("request", "start", "gc"):
            extra += ["--connect", self.uri]
        code = main([argv[0], *extra, *argv[1:]], out=out, err=err)
        return Result(code, out.getvalue(), err.getvalue())

    def leases(self) -> list[dict]:
        return json.loads(self.state.read_text())["leases"] if self.state.exists() else []

    def log_lines(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def calls(self) -> list[str]:
        path = self.calls_dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def stdin_of(self, op: str, subop: str) -> str:
        """What libvirt gave the hooks on stdin for the first call `op subop`."""
        return next(p for p in sorted(self.calls_dir.glob(f"*-{op}-{subop}.xml"))).read_text()

    def wait_until(self, what, timeout: float = 30.0, message: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s: {message}; hook log: {self.log_lines()}")
            time.sleep(0.05)


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the libvirt tests start libvirtd, which needs root"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (run tools/setup-debian as root)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed in this venv (make setup)"
    return None


@pytest.fixture(scope="session")
def libvirt_daemon(tmp_path_factory):
    reason = _cannot_run()
    if reason:
        pytest.skip(f"no libvirt daemon: {reason}")
    daemon = Daemon(tmp_path_factory.mktemp("libvirtd"))
    try:
        daemon.build_lab()
        daemon.enter_namespace()
        daemon.start_daemons()
    except RuntimeError as exc:
        daemon.stop()
        pytest.skip(f"no libvirt daemon: {exc}")
    yield daemon
    daemon.stop()


@pytest.fixture
def lab(libvirt_daemon):
    libvirt_daemon.reset()
    yield libvirt_daemon
