"""Every bad input gets one clear line and a non-zero exit, never "internal error", a traceback or
a hang, and leaves every file as it was: integers of thousands of digits (Python's int() refuses
past 4,300), VF ranges that would expand to millions, non-ASCII digits, a lease table nested
200,000 deep, an iommu_group link that is not a number, output to a full disk, a FIFO where a
file should be, a relative state path. Each case runs through main(argv), the installed
executable and, where the hook reads the same input, the real hook."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fakehost import i350
from test_hook import Hook, domain_xml

BIG = "9" * 5000  # int() refuses more than 4,300 digits (CPython 3.11, sys.int_info)
UUID = "00000000-0000-0000-0000-000000000001"
POOL_CONFIG = '[pools.lan]\npfs = ["enp1s0f0"]\n'
VFALLOC = Path(sys.executable).parent / "vfalloc"


def one_line(code: int, err: str) -> str:
    """The refusal as a user sees it: one line, non-zero, no internal error, no traceback."""
    assert code != 0, f"accepted: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert lines[0].startswith("vfalloc: ") and "internal error" not in err and "Traceback" not in err, err
    assert len(lines[0]) < 1000, f"a line of {len(lines[0])} characters: {lines[0][:200]!r}..."
    return lines[0]


def files_of(root: Path) -> dict[str, bytes | str]:
    """Every file under root with its content (a FIFO or a link by kind), to see nothing changed.
    The lock file beside the state file is left out: taking the lock (which creates it, empty)
    comes before reading the table it guards."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("sys", "run")]
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(".json.lock") and path.is_file() and not path.stat().st_size:
                continue
            if path.is_symlink():
                found[str(path)] = "link -> " + os.readlink(path)
            elif path.is_fifo():
                found[str(path)] = "fifo"
            else:
                found[str(path)] = path.read_bytes()
    return found


def run_exe(scratch, *argv: str, stdout=subprocess.PIPE, env: dict | None = None) -> tuple[int, str]:
    """The installed `vfalloc` executable with the scratch host's settings in its environment."""
    proc = subprocess.run([str(VFALLOC), *argv], env={**scratch.env(), **(env or {})}, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60, cwd=scratch.root)
    return proc.returncode, proc.stderr


@pytest.fixture
def host(scratch, monkeypatch):
    monkeypatch.chdir(scratch.root)  # where a relative path would land, were it taken
    i350(scratch.fs, numvfs=4, ports=2)
    scratch.write_config(POOL_CONFIG)
    return scratch


# -- the command line: (config text or None for POOL_CONFIG, state text or None, argv, words the line has)
CLI_CASES = {
    "vlan-digits": (None, None, ["alloc", "--domain", "a", "--uuid", UUID, "--pool", "lan", "--vlan", BIG],
                    "vlan="),
    "index-digits": (None, None, ["alloc", "--domain", "a", "--uuid", UUID, "--pool", "lan", "--index", BIG],
                     "--index"),
    "index-superscript": (None, None, ["alloc", "--domain", "a", "--uuid", UUID, "--pool", "lan", "--index", "²"],
                          "--index"),
    "numvfs-digits": (None, None, ["host", "numvfs", "enp1s0f0", BIG], "count"),
    "persist-digits": (None, None, ["host", "persist", "--dry-run", f"enp1s0f0={BIG}"], "PF=N"),
    "persist-superscript": (None, None, ["host", "persist", "--dry-run", "enp1s0f0=²"], "PF=N"),
    "timeout-digits": (None, None, ["host", "numvfs", "enp1s0f0", "2", "--timeout", BIG], "--timeout"),
    "config-vlan-digits": (POOL_CONFIG + f"vlan = {BIG}\n", None, ["list"], "vfalloc.toml"),
    "config-numvfs-digits": (POOL_CONFIG + f"numvfs = {BIG}\n", None, ["list"], "vfalloc.toml"),
    "config-numvfs-huge": (POOL_CONFIG + f"numvfs = {'9' * 4000}\n", None, ["pools"], "numvfs"),
    "config-lock-timeout-digits": (f"[settings]\nlock_timeout = {BIG}\n" + POOL_CONFIG, None, ["list"],
                                   "vfalloc.toml"),
    "config-lock-timeout-text": (f'[settings]\nlock_timeout = "{BIG}"\n' + POOL_CONFIG, None, ["list"],
                                 "lock timeout"),
    "config-range-huge": ('[pools.lan]\npfs = ["enp1s0f0#0-20000000"]\n', None, ["list"], "VF range"),
    "config-range-digits": (f'[pools.lan]\npfs = ["enp1s0f0#{BIG}"]\n', None, ["list"], "VF range"),
    "config-range-superscript": ('[pools.lan]\npfs = ["enp1s0f0#²"]\n', None, ["list"], "VF range"),
    "config-range-arabic-indic": ('[pools.lan]\npfs = ["enp1s0f0#\u0661-\u0663"]\n', None, ["list"], "VF range"),
    "config-pf-numvfs-digits": (POOL_CONFIG + f"[pf.enp1s0f0]\nnumvfs = {BIG}\n", None, ["pools"], "vfalloc.toml"),
    "config-state-relative": ('[settings]\nstate = "state.json"\n' + POOL_CONFIG, None, ["list"], "absolute"),
    "config-hook-log-relative": ('[settings]\nhook_log = "hook.log"\n' + POOL_CONFIG, None, ["list"], "absolute"),
    "state-nested": (None, '{"version": 1, "leases": ' + "[" * 200_000 + "]" * 200_000 + "}", ["list"],
                     "state file"),
    "state-index-digits": (None, '{"version": 1, "leases": [{"vf": "0000:01:10.0", "pf": "0000:01:00.0", '
                           '"pool": "lan", "domain": "a", "uuid": "' + UUID + '", "index": ' + BIG + ', "mac": null, '
                           '"vlan": null, "since": "2026-01-01T00:00:00Z", "boot_id": "b", "phase": "reserved"}]}',
                           ["list"], "state file"),
    "state-version-digits": (None, '{"version": ' + BIG + ', "leases": []}', ["list"], "state file"),
}


@pytest.mark.parametrize("config, state, argv, words", CLI_CASES.values(), ids=CLI_CASES.keys())
@pytest.mark.parametrize("how", ["main", "executable"])
def test_command_refuses_in_one_line(host, config, state, argv, words, how):
    if config is not None:
        host.write_config(config)
    if state is not None:
        host.state.parent.mkdir(parents=True, exist_ok=True)
        host.state.write_text(state)
    before = files_of(host.root)
    if how == "main":
        r = host.run(*argv)
        code, err = r.code, r.err
    else:
        code, err = run_exe(host, *argv)
    line = one_line(code, err)
    assert words in line
    assert files_of(host.root) == before


@pytest.mark.parametrize("how", ["main", "executable"])
def test_relative_state_flag_is_refused(host, how):
    argv = ["alloc", "--domain", "a", "--uuid", UUID, "--pool", "lan", "--state", "state.json"]
    before = files_of(host.root)
    if how == "main":
        r = host.run(*argv)  # the scratch flags come first; the last --state wins
        code, err = r.code, r.err
    else:
        code, err = run_exe(host, *argv)
    assert "absolute" in one_line(code, err)
    assert files_of(host.root) == before


def test_iommu_group_link_that_is_no_number(host):
    vf = host.sysfs / "bus" / "pci" / "devices" / "0000:01:10.0"
    group = vf / "iommu_group"
    os.unlink(group)
    os.symlink("../../../kernel/iommu_groups/not-a-number", group)
    for code, err in (astuple(host.run("list")), run_exe(host, "list")):
        line = one_line(code, err)
        assert "iommu_group" in line and "not-a-number" in line


def astuple(r) -> tuple[int, str]:
    return r.code, r.err


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["pools"], ["host", "iommu-groups"]],
                         ids=["list", "list-json", "pools", "iommu-groups"])
def test_output_to_a_full_disk(host, argv):
    """`vfalloc list > /dev/full`: the write fails with ENOSPC; one line, exit non-zero."""
    with open("/dev/full", "w") as full:
        code, err = run_exe(host, *argv, stdout=full)
    assert "output" in one_line(code, err)


# -- FIFOs (and other files that are not regular) where vfalloc reads or writes a file. Opening a
# FIFO blocks until the other end opens; a reader (or writer) is opened from a watchdog thread
# after a while so that a vfalloc that blocks is released, and the test then fails on the time.

FIFO_AT = {
    "state": lambda s: s.state,
    "lock": lambda s: Path(str(s.state) + ".lock"),
    "config": lambda s: s.config,
}


class Watchdog:
    """Unblocks whoever opened `path` (a FIFO) after `after` seconds, and says whether it had to."""

    def __init__(self, path: Path, after: float = 15.0) -> None:
        self.path, self.fired = path, False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(after,), daemon=True)
        self.thread.start()

    def _run(self, after: float) -> None:
        if self.done.wait(after):
            return
        self.fired = True
        fd = os.open(self.path, os.O_RDWR)  # both ends: a blocked reader or writer goes on
        os.close(fd)

    def stop(self) -> bool:
        self.done.set()
        self.thread.join()
        return self.fired


@pytest.mark.parametrize("where", FIFO_AT.keys())
def test_fifo_is_refused_without_a_hang(host, where):
    path = FIFO_AT[where](host)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    argv = ["alloc", "--domain", "a", "--uuid", UUID, "--pool", "lan"]
    dog = Watchdog(path)
    r = host.run(*argv)
    assert not dog.stop(), "main() blocked on the FIFO"
    assert "regular file" in one_line(r.code, r.err)
    code, err = run_exe(host, *argv)  # a hang here fails on subprocess's timeout
    assert "regular file" in one_line(code, err)
    assert path.is_fifo()


@pytest.mark.parametrize("where", FIFO_AT.keys())
def test_hook_refuses_a_fifo_without_a_hang(host, tmp_path, where):
    path = FIFO_AT[where](host)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    hook = Hook(host, tmp_path)
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan"/>'))
    assert "regular file" in one_line(r.returncode, r.stderr.decode())


def test_hook_log_fifo_neither_hangs_nor_refuses(host, tmp_path):
    """The log is a copy of syslog's line: a FIFO there is reported to syslog and skipped."""
    hook = Hook(host, tmp_path)
    os.mkfifo(hook.log)
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan"/>'))
    assert (r.returncode, r.stderr) == (0, b"")
    assert len(hook.leases()) == 1 and hook.log.is_fifo()


@pytest.mark.parametrize("case", ["vlan-digits", "state-nested", "config-range-huge", "config-range-superscript",
                                  "config-numvfs-digits", "config-state-relative"])
def test_hook_refuses_in_one_line(host, tmp_path, case):
    hook = Hook(host, tmp_path)
    request = '<vfalloc:vf pool="lan"/>'
    if case == "vlan-digits":
        request = f'<vfalloc:vf pool="lan" vlan="{BIG}"/>'
    elif case.startswith("config-"):
        host.write_config(CLI_CASES[case][0])
    else:
        host.state.parent.mkdir(parents=True, exist_ok=True)
        host.state.write_text(CLI_CASES[case][1])
    before = files_of(host.root)
    r = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, request))
    one_line(r.returncode, r.stderr.decode())
    after = files_of(host.root)
    after.pop(str(hook.log), None)
    before.pop(str(hook.log), None)
    assert after == before

