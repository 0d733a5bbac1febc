"""The e2e scenario: named steps run inside the emulated SR-IOV host, one result record each.

stage2.sh (PID 1 of the VM) runs this file with the machine's own Python; only the standard
library is used. It owns the steps, what each one proves, and the record format: one JSON line
per step in <results>/steps-<boot>.jsonl ({"step", "ok", "seconds", "tail", "log", "boot"}) plus
the step's full output in <results>/step-<name>.log. The host side (rig.py, test_e2e.py) imports
this module for step_boots(), LANES and DISK_MIB only; importing it runs nothing.

Two VMs run at the same time (rig.py, LANES; stage2 passes e2e.boot=N as --boot N). The first
boots twice: boot 1 sets the host up and runs the guests, boot 2 is the same host after a
reboot, with what boot 1 left on its disk (/dev/vda: vfalloc's config and lease table, libvirt's
domains and hooks, the systemd unit) and a new kernel boot_id. The second, boot 3, is another
host set up in one step (second-host) for the steps that need no reboot: `vfalloc host check`
after set-up, a VF in a plain libvirt domain, the Debian package and the bridges (steps_deb.py,
steps_fdb.py).

Adding a step: write a function taking the Context (inside.py), decorate it with
@step("name", needs=..., boot=N), place it where it belongs in the file (steps run in the order
they are defined, boot 1's before boot 2's before boot 3's), check things with expect(), run
commands with ctx.run() / ctx.vfalloc() (their output goes into the record) and fail by raising
StepFailed. A step needs only steps of its own lane; one whose `needs` did not pass (in this boot
or an earlier one of its lane) is recorded as failed without running. Each step is bounded by its
timeout; commands get what is left of it.

Timeouts are what a step needs on an idle machine: the VM measures how much slower it runs at
boot and before each step (pace.py), and the step's bound and every timeout of ctx.run() and
ctx.wait_for() are multiplied by that factor. Each record says the pace its step ran at.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pace  # noqa: E402
from inside import (  # noqa: E402
    HOST_DIRS,
    LIBVIRT_ENV,
    PF,
    SYS_PCI,
    VENV,
    VFALLOC,
    Context,
    StepFailed,
    boot_id,
    domain_xml,
    driver_of,
    expect,
    group_members,
    hide_host_files,
    hostdev_devices,
    iommu_group_of,
    libvirtd_pid,
    metadata_request,
    module_loaded,
    qemu_devices,
    qemu_pid,
    read_sysfs,
    read_unit_exec_start,
    sriov_pfs,
    start_libvirt,
    start_libvirtd,
    vf_macs,
    vfs_of,
    write_sysfs,
)

TAIL_LINES = 30

NUM_VFS = 4  # per PF; each VF costs about half a second of TCG time to create
# The pool: VFs 0-3 of PF 0 and 0-2 of PF 1, seven VFs over two PFs. VF 3 of PF 1 is in no pool
# ("unusable" for vfalloc): the raw vfio and libvirt steps use it.
POOL = "lan"
POOL_SIZE = 7
CONFIG = Path("/etc/vfalloc/e2e.toml")  # not the default path: install-hook must write it in
GUESTS = tuple(f"guest{i}" for i in range(1, 9))
RACERS = GUESTS[:7]  # started at the same moment; the eighth finds the pool empty
LATE = GUESTS[7]  # refused first, then started by `vfalloc start` into a freed VF
DERIVED_MAC_GUEST = "guest5"  # asks for no MAC: vfalloc derives one from its UUID
VICTIM = "guest2"  # its QEMU dies while libvirtd is down
DOMAIN_WITH_VF = "e2e-a"  # raw libvirt: <interface type='hostdev'> on VF 3 of PF 1 in its config
VF_MAC = "52:54:00:e2:e0:a0"
DISK_MIB = 64  # the host's disk (rig.py); the first boot of each lane formats it
# rig.RigConfig.lanes: boots 1 and 2 are one VM rebooted, boot 3 a second VM beside it.
LANES = ((1, 2), (3,))
DISK_DEV = Path("/dev/vda")
DISK_MOUNT = Path("/mnt/e2e-disk")
UNIT = Path("/etc/systemd/system/vfalloc-numvfs.service")
UNIT_WANTS = Path("/etc/systemd/system/multi-user.target.wants/vfalloc-numvfs.service")
RULES = Path("/etc/udev/rules.d/70-vfalloc-numvfs.rules")
HOOK = Path("/etc/libvirt/hooks/qemu.d/vfalloc")


def guest_mac(name: str) -> str | None:
    """The MAC a guest asks for (None: derived by vfalloc)."""
    if name == DERIVED_MAC_GUEST:
        return None
    return f"52:54:00:e2:10:{int(name.removeprefix('guest')):02x}"


# --- steps and running them -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    func: Callable[[Context], None]
    timeout: float
    needs: tuple[str, ...]
    boot: int


STEPS: list[Step] = []


def step(name: str, *, timeout: float = 30, needs: tuple[str, ...] = (),
         boot: int = 1) -> Callable:
    """Register a step of boot `boot`; steps run in the order they are defined."""

    def register(func: Callable[[Context], None]) -> Callable[[Context], None]:
        if any(s.name == name for s in STEPS):
            raise ValueError(f"step {name!r} defined twice")
        unknown = [n for n in needs if n not in {s.name for s in STEPS}]
        if unknown:
            raise ValueError(f"step {name!r} needs {unknown}, which are not defined before it")
        elsewhere = [s.name for s in STEPS if s.name in needs and s.boot not in lane_of(boot)]
        if elsewhere:
            raise ValueError(f"step {name!r} of boot {boot} needs {elsewhere}, which run in another VM")
        if STEPS and boot < STEPS[-1].boot:
            raise ValueError(f"step {name!r} of boot {boot} comes after a step of a later boot")
        STEPS.append(Step(name, func, timeout, needs, boot))
        return func

    return register


def lane_of(boot: int) -> tuple[int, ...]:
    """The boots of the VM that runs boot `boot` (LANES)."""
    return next(lane for lane in LANES if boot in lane)


def step_names() -> list[str]:
    return [s.name for s in STEPS]


def step_boots() -> list[tuple[str, int]]:
    """(name, boot) of every step, in order."""
    return [(s.name, s.boot) for s in STEPS]


def new_context(results: Path, timeout: float, boot: int, factor: float = 1.0) -> Context:
    return Context(results, deadline=time.monotonic() + timeout * factor, boot=boot,
                   vfalloc_env={"VFALLOC_CONFIG": str(CONFIG)}, pace=factor)


def run_step(s: Step, results: Path, passed: set[str], speed: pace.Pace | None = None) -> dict:
    factor = speed.again() if speed is not None else 1.0
    ctx = new_context(results, s.timeout, s.boot, factor)
    ctx.repace = speed.remeasure if speed is not None else None  # a bound that runs out asks again
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
    return {"step": s.name, "ok": ok, "seconds": seconds, "tail": tail, "log": log_name,
            "boot": s.boot, "pace": round(ctx.pace, 2)}


def append_record(results: Path, record: dict) -> None:
    """One file per boot: the VMs of two lanes write to the results share at the same time."""
    with (results / f"steps-{record['boot']}.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def passed_before(results: Path, boot: int) -> set[str]:
    """Steps that passed in the earlier boots of this boot's lane in this run."""
    lane = lane_of(boot)
    passed = set()
    for earlier in lane[:lane.index(boot)]:
        path = results / f"steps-{earlier}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("ok"):
                passed.add(record["step"])
    return passed


def run_all(results: Path, boot: int = 1) -> int:
    passed = passed_before(results, boot)
    mine = [s for s in STEPS if s.boot == boot]
    speed = pace.Pace.at_boot()
    # rig.py reads this line: its own bound on the boot grows by the same factor.
    print(f"e2e pace: boot {boot} runs {speed.describe()}", flush=True)
    for s in mine:
        record = run_step(s, results, passed, speed)
        append_record(results, record)
        if record["ok"]:
            passed.add(s.name)
        status = "ok" if record["ok"] else "FAIL"
        print(f"e2e step {s.name}: {status} ({record['seconds']:.2f} s, pace {record['pace']:.1f}x)",
              flush=True)
        if not record["ok"]:
            print("  " + record["tail"].replace("\n", "\n  "), flush=True)
    return 0 if all(s.name in passed for s in mine) else 1


# --- facts handed from boot 1 to boot 2 (on the results share) ---------------------------------


def remember(ctx: Context, key: str, value: object) -> None:
    path = ctx.results / "facts.json"
    facts = json.loads(path.read_text()) if path.exists() else {}
    facts[key] = value
    path.write_text(json.dumps(facts, indent=1) + "\n")


def recall(ctx: Context, key: str) -> object:
    path = ctx.results / "facts.json"
    facts = json.loads(path.read_text()) if path.exists() else {}
    expect(key in facts, f"boot 1 left no {key!r} in {path.name}")
    return facts[key]


# --- vfalloc's view: `vfalloc list` and `vfalloc pools`, human and JSON ---------------------------


@dataclass(frozen=True)
class Listing:
    rows: list[dict]  # vfalloc list --json
    pools: list[dict]  # vfalloc pools --json
    text: str = ""  # vfalloc list, when asked for

    def pool_rows(self) -> list[dict]:
        return [r for r in self.rows if r["pool"] == POOL]

    def held(self, state: str = "leased") -> dict[str, str]:
        """domain -> VF of the pool's rows in that state."""
        return {r["domain"]: r["vf"] for r in self.pool_rows() if r["state"] == state}

    def row(self, vf: str) -> dict:
        found = [r for r in self.rows if r["vf"] == vf]
        expect(len(found) == 1, f"vfalloc list has {len(found)} rows for {vf}")
        return found[0]

    def pool(self) -> dict:
        found = [p for p in self.pools if p["pool"] == POOL]
        expect(len(found) == 1, f"vfalloc pools has {len(found)} entries for pool {POOL}")
        return found[0]


def columns(text: str) -> list[dict[str, str]]:
    """The rows of a table vfalloc prints for people (header line, then one line per row, cells
    without spaces), as dicts; lines after the table (notes) are left out."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split()
    table = []
    for line in lines[1:]:
        cells = line.split()
        if len(cells) != len(header) or line.startswith(("stale:", "no ")):
            continue
        table.append(dict(zip(header, cells, strict=False)))
    return table


def listing(ctx: Context, *, leased: set[str] | None = None, stale: set[str] = frozenset(),
            free: int | None = None, total: int | None = POOL_SIZE, human: bool = False) -> Listing:
    """`vfalloc list --json` and `vfalloc pools --json` checked against what the step expects:
    which domains hold the pool's VFs (leased, stale), how many of its VFs are free, how many
    it has. human: also `vfalloc list` and `vfalloc pools` as people read them, checked against
    the JSON (each vfalloc command costs about 2 s of TCG time, so only where a table shows a
    case of its own: no VFs, every VF leased, stale leases without their VFs and with them;
    tests/test_listing_output.py pins both, byte for byte, on a host with every kind of row)."""
    rows = ctx.vfalloc_json("list")
    pools = ctx.vfalloc_json("pools")
    view = Listing(rows, pools)
    if human:
        view = Listing(rows, pools, check_tables(ctx, view))
    counts = {k: view.pool()[k] for k in ("total", "free", "leased", "stale")}
    ctx.log(f"(pool {POOL}: {counts}; leased: {view.held()}; stale: {view.held('stale')})")
    check_view(view, leased, stale, free, total)
    return view


def check_tables(ctx: Context, view: Listing) -> str:
    """`vfalloc list` and `vfalloc pools` say what their --json says; the first's text."""
    rows = view.rows
    text = ctx.vfalloc("list", split=True).stdout
    pools_text = ctx.vfalloc("pools", split=True).stdout
    # the table for people says what the JSON says
    shown = {r["VF"]: r for r in columns(text)}
    for r in rows:
        line = shown.get(r["vf"])
        expect(line is not None, f"`vfalloc list` shows no line for {r['vf']}")
        expect(line["STATE"] == r["state"] and line["DOMAIN"] == (r["domain"] or "-"),
               f"`vfalloc list` says {line['STATE']}/{line['DOMAIN']} for {r['vf']}, "
               f"--json says {r['state']}/{r['domain']}")
    for r in rows:
        if r["state"] == "stale":
            expect(f"stale: {r['vf']} leased to {r['domain']}" in text,
                   f"`vfalloc list` does not explain the stale lease of {r['vf']}")
    pool = view.pool()
    line = next((c for c in columns(pools_text) if c["POOL"] == POOL), None)
    expect(line is not None, f"`vfalloc pools` shows no line for pool {POOL}")
    for key in ("total", "free", "leased", "stale"):
        expect(line[key.upper()] == str(pool[key]),
               f"`vfalloc pools` says {key} {line[key.upper()]}, --json says {pool[key]}")
    return text


def check_view(view: Listing, leased: set[str] | None, stale: set[str], free: int | None,
               total: int | None) -> None:
    pool = view.pool()
    if leased is not None:
        expect(set(view.held()) == set(leased),
               f"leased to {sorted(view.held())}, expected {sorted(leased)}")
        expect(pool["leased"] == len(leased), f"pool {POOL} counts {pool['leased']} leased")
    expect(set(view.held("stale")) == set(stale),
           f"stale leases of {sorted(view.held('stale'))}, expected {sorted(stale)}")
    expect(pool["stale"] == len(stale), f"pool {POOL} counts {pool['stale']} stale")
    held = [*view.held().values(), *view.held("stale").values()]
    expect(len(held) == len(set(held)), f"a VF is held twice: {held}")
    if free is not None:
        expect(pool["free"] == free, f"pool {POOL} has {pool['free']} free VFs, expected {free}")
    if total is not None:
        expect(pool["total"] == total, f"pool {POOL} has {pool['total']} VFs, expected {total}")


def quiet_rows() -> list[dict]:
    """`vfalloc list --json` for polling: not logged (the step logs the listing it ends with)."""
    proc = subprocess.run([str(VFALLOC), "list", "--json"], capture_output=True, text=True,
                          timeout=30 * pace.current(),
                          env={**os.environ, "VFALLOC_CONFIG": str(CONFIG)})
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else []
    except json.JSONDecodeError:
        return []


def host_checks(ctx: Context, want_rc: int) -> dict[tuple[str, str], str]:
    """`vfalloc host check` for people and as JSON: {(check, subject): status}."""
    proc = ctx.vfalloc("host", "check", check=False)
    expect(proc.returncode == want_rc, f"vfalloc host check exited {proc.returncode}, "
                                       f"expected {want_rc}")
    data = ctx.vfalloc_json("host", "check", check=False)
    return {(c["check"], c["subject"]): c["status"] for c in data["checks"]}


def pf_check(checks: dict[tuple[str, str], str], name: str, pf: PF) -> str | None:
    return checks.get((name, pf.netdev), checks.get((name, pf.address)))


def syslog(ctx: Context) -> str:
    """What the hook and the hot-plug worker logged in this boot (stage2.sh's syslogd)."""
    path = ctx.results / f"syslog-boot{ctx.boot}.log"
    return path.read_text(errors="replace") if path.exists() else ""


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


def mount_disk(ctx: Context, fresh: bool) -> None:
    """The host's disk at DISK_MOUNT, and its directories over this machine's vfalloc, libvirt,
    systemd and udev files (inside.hide_host_files)."""
    ctx.run("modprobe", "virtio_blk")
    ctx.wait_for(str(DISK_DEV), DISK_DEV.exists, timeout=10)
    if fresh:
        ctx.run("mkfs.ext4", "-q", "-F", "-L", "e2e-disk", str(DISK_DEV))
    DISK_MOUNT.mkdir(parents=True, exist_ok=True)
    ctx.run("mount", "-t", "ext4", str(DISK_DEV), str(DISK_MOUNT))
    hide_host_files(ctx, DISK_MOUNT)
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1] in HOST_DIRS or line.split()[1] == str(DISK_MOUNT)]
    ctx.log("# grep /proc/self/mounts\n" + "\n".join(mounts))
    ctx.log(f"boot_id {boot_id()}")


@step("disk", timeout=60, needs=("vm",))
def disk(ctx: Context) -> None:
    """A fresh ext4 disk holds the host's own /etc/vfalloc, /var/lib/vfalloc, /etc/libvirt/qemu,
    /etc/libvirt/hooks and /etc/systemd/system; nothing of this machine's shows through."""
    mount_disk(ctx, fresh=True)
    for path in ("/etc/vfalloc", "/var/lib/vfalloc", "/etc/libvirt/hooks", "/etc/libvirt/qemu"):
        expect(not os.listdir(path), f"{path} is not empty: this machine's files show through")
    remember(ctx, "boot_id", boot_id())


@step("config", needs=("disk", "pfs"))
def config(ctx: Context) -> None:
    """vfalloc's config at a non-default path: one pool of 7 VFs over both PFs, 4 VFs per PF.
    Before any VF exists, `vfalloc pools` lists the pool and its PFs with nothing in them."""
    pf0, pf1 = sriov_pfs()
    text = write_config(ctx)
    ctx.log(f"# cat {CONFIG}\n{text}")
    view = listing(ctx, leased=set(), free=0, total=0, human=True)
    pfs = {p["pf_netdev"] for p in view.pool()["pfs"]}
    expect(pfs == {pf0.netdev, pf1.netdev}, f"pool {POOL} lists PFs {pfs}")
    expect("no SR-IOV VFs found" in view.text, "`vfalloc list` on a host without VFs does not say so")


def write_config(ctx: Context) -> str:
    """CONFIG as the config step writes it; its text."""
    pf0, pf1 = sriov_pfs()
    text = (
        "# The e2e host's vfalloc config. Not at the default path on purpose: `vfalloc\n"
        "# install-hook --config` has to write the path into the hook (libvirt gives hooks\n"
        "# no environment).\n"
        "[settings]\n"
        'state = "/var/lib/vfalloc/state.json"\n'
        # vfalloc's own wait for the lease table's lock (10 s by default) is a wait inside the
        # emulated host too: seven hooks racing for the lock at 20x slowness queue longer.
        f"lock_timeout = {round(10 * ctx.pace)}\n"
        "\n"
        f"[pools.{POOL}]\n"
        f'pfs = ["{pf0.netdev}#0-3", "{pf1.netdev}#0-2"]\n'
        f"numvfs = {NUM_VFS}\n"
    )
    CONFIG.write_text(text)
    return text


@step("host-check-before", needs=("config",))
def host_check_before(ctx: Context) -> None:
    """`vfalloc host check` on the bare host fails, and says why: no VFs on the PFs the config
    wants 4 on, no hook; what is already right (IOMMU, links) is ok."""
    checks = host_checks(ctx, want_rc=1)
    expect(checks.get(("iommu", "host")) == "ok", "the IOMMU check is not ok")
    expect(checks.get(("hook", "host")) == "fail", "no hook is installed, yet the check passes")
    for pf in sriov_pfs():
        expect(pf_check(checks, "sr-iov", pf) == "fail", f"{pf.netdev} has no VFs, yet sr-iov passes")
        expect(pf_check(checks, "link", pf) == "ok", f"{pf.netdev}: link is not ok")


@step("persist-udev", timeout=90, needs=("config",))
def persist_udev(ctx: Context) -> None:
    """`vfalloc host persist --method udev`: one rule per PF, matched by its PCI address, acting
    only while the PF has no VFs. `udevadm test` replays the second PF's add event and applies
    the rules (udev 252 writes the attributes): its own rule, and no other, creates its 4 VFs."""
    pfs = sriov_pfs()
    pf = pfs[1]
    ctx.vfalloc("host", "persist", "--method", "udev")
    rules = RULES.read_text()
    ctx.log(f"# cat {RULES}\n{rules}")
    for each in pfs:
        expect(f'KERNEL=="{each.address}"' in rules, f"no rule matches {each.address}")
    expect(rules.count('ATTR{sriov_numvfs}="' + str(NUM_VFS) + '"') == len(pfs),
           f"the rules do not set sriov_numvfs to {NUM_VFS} on each PF")
    writes = udev_writes(ctx, pf)
    expect(len(writes) == 1 and pf.address in writes[0] and f"writing '{NUM_VFS}'" in writes[0],
           f"udevadm test {pf.address}: the rules wrote {writes}")
    ctx.wait_for(f"{NUM_VFS} VFs on {pf.netdev}", lambda: len(vfs_of(pf)) == NUM_VFS, timeout=20)
    ctx.log(f"{pf.netdev}: virtfn -> {vfs_of(pf)}")


def udev_writes(ctx: Context, pf: PF) -> list[str]:
    """`udevadm test` of the PF's add event: the attribute writes of vfalloc's rules."""
    out = ctx.run("udevadm", "test", "--action=add", f"/sys/bus/pci/devices/{pf.address}",
                  check=False).stdout
    return [line for line in out.splitlines() if RULES.name in line and "writing" in line]


@step("numvfs", timeout=90, needs=("persist-udev",))
def numvfs(ctx: Context) -> None:
    """`vfalloc host numvfs PF 4` on both PFs: the first PF's VFs appear; the second has its 4
    from the udev rule already, and numvfs says so and changes nothing. The pool's 7 VFs are
    free in `vfalloc list`, the eighth VF is in no pool."""
    for pf in sriov_pfs():
        start = time.monotonic()
        ctx.vfalloc("host", "numvfs", pf.netdev, str(NUM_VFS))
        ctx.log(f"({pf.netdev}: {NUM_VFS} VFs in {time.monotonic() - start:.1f} s)")
        expect(read_sysfs(pf.sysfs / "sriov_numvfs") == str(NUM_VFS), "sriov_numvfs did not take")
        vfs = vfs_of(pf)
        ctx.log(f"{pf.netdev}: virtfn -> {vfs}")
        expect(len(vfs) == NUM_VFS, f"{pf.netdev}: {len(vfs)} virtfn links, expected {NUM_VFS}")
    view = listing(ctx, leased=set(), free=POOL_SIZE)
    unusable = [r["vf"] for r in view.rows if r["state"] == "unusable"]
    expect(unusable == [spare_vf()], f"VFs in no pool: {unusable}, expected {spare_vf()}")


@step("udev-guard", needs=("numvfs",))
def udev_guard(ctx: Context) -> None:
    """On a PF that has VFs, vfalloc's udev rule writes nothing (that write would be EBUSY)."""
    pf = sriov_pfs()[0]
    writes = udev_writes(ctx, pf)
    expect(not writes, f"the rule wrote to {pf.netdev}, which has VFs: {writes}")


@step("numvfs-busy", needs=("numvfs",))
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


@step("vfs-igbvf", needs=("numvfs",))
def vfs_on_igbvf(ctx: Context) -> None:
    """Every VF is bound to igbvf and has a network interface."""
    for pf in sriov_pfs():
        for vf in vfs_of(pf):
            ctx.wait_for(f"{vf} bound to igbvf", lambda vf=vf: driver_of(vf) == "igbvf", timeout=10)
            netdevs = os.listdir(SYS_PCI / vf / "net") if (SYS_PCI / vf / "net").exists() else []
            ctx.log(f"{pf.netdev} {vf}: driver={driver_of(vf)} net={netdevs}")
            expect(netdevs, f"{vf} has no network interface")


@step("vf-iommu-groups", needs=("numvfs",))
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


def spare_vf() -> str:
    """The VF in no pool (VF 3 of PF 1): the raw vfio and libvirt steps use it."""
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
    vf = spare_vf()
    write_sysfs(ctx, SYS_PCI / vf / "driver_override", "vfio-pci")
    reprobe(ctx, vf)
    ctx.log(f"{vf}: driver={driver_of(vf)}")
    expect(driver_of(vf) == "vfio-pci", f"{vf} is on {driver_of(vf)}, not vfio-pci")
    group = iommu_group_of(vf)
    ctx.wait_for(f"/dev/vfio/{group}", lambda: Path(f"/dev/vfio/{group}").exists(), timeout=5)


@step("vfio-release", needs=("vfio-bind",))
def vfio_release(ctx: Context) -> None:
    """Clearing driver_override and reprobing gives the VF back to igbvf."""
    vf = spare_vf()
    write_sysfs(ctx, SYS_PCI / vf / "driver_override", "\n")
    reprobe(ctx, vf)
    ctx.wait_for(f"{vf} back on igbvf", lambda: driver_of(vf) == "igbvf", timeout=10)
    expect(read_sysfs(SYS_PCI / vf / "driver_override") == "(null)", "driver_override not cleared")


# --- steps: making it survive a reboot, the hook, libvirt --------------------------------------


@step("persist-systemd", timeout=60, needs=("udev-guard",))
def persist_systemd(ctx: Context) -> None:
    """`vfalloc host persist --enable`: a oneshot unit ordered before libvirtd whose ExecStart
    lines run `vfalloc host numvfs` for each PF of the config; it replaces the udev rules.
    The ExecStart lines, run by hand (there is no systemd here), change nothing now: boot 2 runs
    them for real."""
    pfs = sriov_pfs()
    ctx.vfalloc("host", "persist", "--exec", str(VFALLOC), "--enable")
    unit = UNIT.read_text()
    ctx.log(f"# cat {UNIT}\n{unit}")
    expect(not RULES.exists(), f"{RULES} (the other method) is still there")
    expect(UNIT_WANTS.is_symlink(), f"{UNIT_WANTS} is missing: the unit is not enabled")
    expect("Before=libvirtd.service" in unit, "the unit is not ordered before libvirtd")
    execs = read_unit_exec_start(unit)
    # CONFIG is not the default path, and a unit gets no VFALLOC_* environment: it names it
    want = [[str(VFALLOC), "host", "numvfs", pf.address, str(NUM_VFS), "--config", str(CONFIG)] for pf in pfs]
    expect(execs == want, f"ExecStart lines {execs}, expected {want}")
    ctx.run("systemd-analyze", "verify", str(UNIT), check=False)
    for argv in execs:
        ctx.run(*argv)
    for pf in pfs:
        expect(len(vfs_of(pf)) == NUM_VFS, f"{pf.netdev}: the VF count changed")


@step("install-hook", needs=("config",))
def install_hook(ctx: Context) -> None:
    """`vfalloc install-hook --config FILE` before libvirtd starts (libvirtd looks for hooks only
    at start): qemu.d/vfalloc, executable, running the venv's Python, with the config path in it."""
    ctx.vfalloc("install-hook", "--config", str(CONFIG))
    expect(os.access(HOOK, os.X_OK), f"{HOOK} is missing or not executable")
    text = HOOK.read_text()
    ctx.log(f"# cat {HOOK}\n{text}")
    expect(text.startswith("#!/bin/sh\n") and f"\npython={VENV}/bin/python" in text,
           "the hook does not run vfalloc's Python")
    expect(str(CONFIG) in text, f"the hook does not name {CONFIG}")
    again = ctx.vfalloc("install-hook", "--config", str(CONFIG)).stdout
    expect("already installed" in again, "installing the same hook twice is not a no-op")


@step("libvirtd", timeout=120, needs=("disk",))
def libvirtd(ctx: Context) -> None:
    """virtlogd and libvirtd started by hand (no systemd here) answer on the unix socket."""
    start_libvirt(ctx)
    ctx.run("virsh", "version")


# --- steps: vfalloc hands out VFs ----------------------------------------------------------------


@step("define-guests", timeout=90, needs=("libvirtd", "numvfs"))
def define_guests(ctx: Context) -> None:
    """Eight tiny q35 guests (two spare pcie-root-ports each), each asking for a VF of the pool,
    both ways a user can: guests 1-4 with `vfalloc request` (libvirt's metadata API), guests 5-8
    with the request written into the domain XML they are defined from. Either way the request
    sits in the saved config's <metadata>, and `vfalloc request NAME` shows it."""
    by_command, in_xml = GUESTS[:4], GUESTS[4:]
    commands = []
    for name in GUESTS:
        path = Path("/tmp") / f"{name}.xml"
        metadata = metadata_request(POOL, guest_mac(name)) if name in in_xml else ""
        path.write_text(domain_xml(name, metadata=metadata))
        commands.append(f"define {path}")
    ctx.log(f"# cat /tmp/{in_xml[0]}.xml\n{(Path('/tmp') / f'{in_xml[0]}.xml').read_text()}")
    ctx.run("virsh", " ; ".join(commands))
    for name in by_command:
        mac = guest_mac(name)
        ctx.vfalloc("request", name, "--pool", POOL, *(["--mac", mac] if mac else []))
    for name in (by_command[0], in_xml[1]):
        shown = ctx.vfalloc_json("request", name)
        expect(len(shown) == 1 and shown[0]["pool"] == POOL and shown[0]["mac"] == guest_mac(name),
               f"`vfalloc request {name}` shows {shown}")
        saved = ctx.run("virsh", "dumpxml", "--inactive", name, quiet=True).stdout
        ctx.log("\n".join(line for line in saved.splitlines() if "vfalloc" in line))
        expect("urn:vfalloc:1" in saved and f'pool="{POOL}"' in saved.replace("'", '"'),
               f"{name}: the request is not in the saved config's metadata")


@step("race-start", timeout=240, needs=("define-guests", "install-hook"))
def race_start(ctx: Context) -> None:
    """Seven plain `virsh start --paused`, let go at the same moment: seven hooks race for the
    pool's seven VFs under the lease table's lock; every start succeeds with a VF of its own."""
    read_end, write_end = os.pipe()
    procs = []
    for name in RACERS:
        # Each waits for the pipe to close, then starts its domain: all are let go at once.
        procs.append((name, subprocess.Popen(
            ["sh", "-c", 'read _; exec virsh start --paused "$0"', name], stdin=read_end,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **LIBVIRT_ENV})))
    os.close(read_end)
    ctx.log(f"$ virsh start --paused NAME  (for {', '.join(RACERS)}, all at once)")
    start = time.monotonic()
    os.close(write_end)
    failed = []
    for name, proc in procs:
        try:
            out, _ = proc.communicate(timeout=ctx.remaining())
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        ctx.log(f"{name}: exit {proc.returncode} after {time.monotonic() - start:.1f} s: "
                f"{out.strip()}")
        if proc.returncode != 0:
            failed.append(name)
    expect(not failed, f"starts failed: {failed}")
    view = listing(ctx, leased=set(RACERS), free=0, human=True)
    remember(ctx, "vf_of", view.held())
    running = ctx.run("virsh", "list", "--name").stdout.split()
    expect(set(RACERS) <= set(running), f"running: {running}")


def expected_mac(view: Listing, name: str) -> str:
    """The MAC a guest asked for, or the one vfalloc derived (locally administered, unicast)."""
    mac = guest_mac(name)
    if mac is not None:
        return mac
    vf = view.held()[name]
    derived = view.row(vf)["mac"]
    expect(derived, f"the lease of {name} has no MAC")
    first = int(derived.split(":")[0], 16)
    expect(first & 2 and not first & 1, f"derived MAC {derived} is not locally administered unicast")
    return derived


def qmp(ctx: Context, domain: str, command: str, **arguments: object) -> object:
    """One QMP command to the domain's QEMU through libvirt; its "return"."""
    message = {"execute": command, **({"arguments": arguments} if arguments else {})}
    out = ctx.run("virsh", "qemu-monitor-command", domain, json.dumps(message)).stdout
    return json.loads(out)["return"]


def check_vf_in_guest(ctx: Context, view: Listing, name: str, hotplugged: bool) -> None:
    """The guest's live XML holds its VF as ua-vfalloc-0 with its MAC, its saved config holds no
    device, QEMU has it (QMP for a hot-plug, the command line for a start with it), the VF is on
    vfio-pci and the PF reports the MAC on it."""
    vf = view.held()[name]
    row = view.row(vf)
    mac = expected_mac(view, name)
    live = hostdev_devices(ctx.run("virsh", "dumpxml", name, quiet=True).stdout)
    ctx.log(f"{name}: live devices {live}")
    expect(len(live) == 1, f"{name} has {len(live)} passthrough devices live, expected 1")
    dev = live[0]
    expect(dev.kind == "interface" and dev.alias == "ua-vfalloc-0" and dev.vf == vf,
           f"{name}: live device {dev}, expected interface ua-vfalloc-0 on {vf}")
    expect(dev.mac == mac, f"{name}: live MAC {dev.mac}, expected {mac}")
    saved = hostdev_devices(ctx.run("virsh", "dumpxml", "--inactive", name, quiet=True).stdout)
    expect(not saved, f"{name}: the saved config holds {saved}")
    if hotplugged:
        # QMP: the device QEMU created by the hot-plug, its type and its host VF. (query-pci does
        # not show it: no firmware ran in a paused guest, so its root ports have no bus numbers.)
        peripherals = qmp(ctx, name, "qom-list", path="/machine/peripheral")
        kinds = {p["name"]: p["type"] for p in peripherals}
        expect(kinds.get("ua-vfalloc-0") == "child<vfio-pci>",
               f"{name}: QEMU has no vfio-pci device ua-vfalloc-0 ({kinds})")
        host = qmp(ctx, name, "qom-get", path="/machine/peripheral/ua-vfalloc-0", property="host")
        expect(host == vf, f"{name}: QEMU's ua-vfalloc-0 is VF {host}, not {vf}")
    else:
        pid = qemu_pid(name)
        expect(pid, f"no /run/libvirt/qemu/{name}.pid")
        vfio = [d for d in qemu_devices(pid) if d.get("driver") == "vfio-pci"]
        ctx.log(f"{name}: QEMU pid {pid}, vfio-pci devices on its command line: {vfio}")
        expect([(d.get("host"), d.get("id")) for d in vfio] == [(vf, "ua-vfalloc-0")],
               f"{name}: QEMU's command line does not hold {vf} as ua-vfalloc-0")
    expect(driver_of(vf) == "vfio-pci", f"{vf} is on {driver_of(vf)}")
    pf = next(p for p in sriov_pfs() if p.address == row["pf"])
    macs = vf_macs(ctx, pf)
    expect(macs.get(row["vf_index"]) == mac,
           f"{pf.netdev} vf {row['vf_index']} has MAC {macs.get(row['vf_index'])}, expected {mac}")


@step("hotplug", timeout=240, needs=("race-start",))
def hotplug(ctx: Context) -> None:
    """The hot-plug worker each hook launched at `started begin` puts each VF into its running
    guest: lease phase "attached", the VF in the live XML and in QEMU, the MAC set as asked."""

    def all_attached() -> bool:
        rows = [r for r in quiet_rows() if r["domain"] in RACERS]
        return len(rows) == len(RACERS) and all(r["phase"] == "attached" for r in rows)

    try:
        ctx.wait_for("every lease attached", all_attached, timeout=180, interval=2)
    finally:
        ctx.log("--- syslog (hook and hot-plug worker):")
        ctx.log(syslog(ctx) or "(empty)")
    view = listing(ctx, leased=set(RACERS), free=0)
    for name in RACERS:
        check_vf_in_guest(ctx, view, name, hotplugged=True)


@step("eighth-refused", timeout=60, needs=("race-start",))
def eighth_refused(ctx: Context) -> None:
    """The eighth guest's start is refused with vfalloc's message, which names the pool."""
    proc = ctx.run("virsh", "start", "--paused", LATE, check=False)
    expect(proc.returncode != 0, f"{LATE} started with the pool empty")
    message = f"no free VF in pool {POOL} for {LATE}"
    expect(message in proc.stdout, f"the error does not say {message!r}")
    state = ctx.run("virsh", "domstate", LATE).stdout.strip()
    expect(state == "shut off", f"{LATE} is {state}")
    listing(ctx, leased=set(RACERS), free=0)


@step("numvfs-leased", timeout=60, needs=("race-start",))
def numvfs_leased(ctx: Context) -> None:
    """`vfalloc host numvfs` refuses to remove VFs that guests hold; nothing changes."""
    pf = sriov_pfs()[0]
    proc = ctx.vfalloc("host", "numvfs", pf.netdev, "2", check=False)
    expect(proc.returncode != 0, "numvfs removed leased VFs")
    expect("leased" in proc.stdout, "the refusal does not say the VFs are leased")
    expect(len(vfs_of(pf)) == NUM_VFS, f"{pf.netdev} has {len(vfs_of(pf))} VFs now")


@step("destroy-frees", timeout=60, needs=("race-start",))
def destroy_frees(ctx: Context) -> None:
    """`virsh destroy`: the hook's `release end` gives the VF back; it is free in `vfalloc list`
    and libvirt returns it to igbvf."""
    name = RACERS[0]
    vf = recall(ctx, "vf_of")[name]
    ctx.run("virsh", "destroy", name)
    view = listing(ctx, leased=set(RACERS) - {name}, free=1)
    expect(view.row(vf)["state"] == "free", f"{vf} is {view.row(vf)['state']}")
    ctx.wait_for(f"{vf} back on igbvf", lambda: driver_of(vf) == "igbvf", timeout=15)
    log = syslog(ctx)
    expect(f"{name} release end: released {vf}" in log, "the hook logged no release")


@step("vfalloc-start", timeout=90, needs=("destroy-frees",))
def vfalloc_start(ctx: Context) -> None:
    """`vfalloc start` starts the refused guest with the freed VF in its live XML and on QEMU's
    command line; `virsh dumpxml --inactive` still has no device, only the request. It did the
    work of `prepare begin` itself: the hook file took its stamp, and vfalloc.hook logged nothing
    for that call."""
    freed = recall(ctx, "vf_of")[RACERS[0]]
    state = ctx.run("virsh", "domstate", LATE).stdout.strip()
    expect(state == "shut off", f"{LATE} is {state} before `vfalloc start`")
    prepared = syslog(ctx).count(f"{LATE} prepare begin")
    out = ctx.vfalloc("start", LATE, "--paused").stdout
    expect(freed in out, f"`vfalloc start` does not name {freed}")
    expect(syslog(ctx).count(f"{LATE} prepare begin") == prepared, "vfalloc.hook ran at `prepare begin`")
    expect(not list(Path("/run/vfalloc").glob("start.*")), "a start stamp was left in /run/vfalloc")
    view = listing(ctx, leased=(set(RACERS) - {RACERS[0]}) | {LATE}, free=0)
    expect(view.held()[LATE] == freed, f"{LATE} holds {view.held()[LATE]}, not {freed}")
    expect(view.row(freed)["phase"] == "attached", f"phase {view.row(freed)['phase']}")
    check_vf_in_guest(ctx, view, LATE, hotplugged=False)
    saved = ctx.run("virsh", "dumpxml", "--inactive", LATE, quiet=True).stdout
    expect("urn:vfalloc:1" in saved, "the saved config lost the request")


@step("daemon-restart", timeout=180, needs=("race-start",))
def daemon_restart(ctx: Context) -> None:
    """libvirtd stops; one guest's QEMU dies while it is down; libvirtd starts again. The hook's
    `reconnect begin` keeps the leases of the guests that run, and the dead guest's VF is given
    back. (Whatever the steps before left running: the guests of the race, less the one
    destroyed, plus the late one when `vfalloc start` worked.)"""
    running = set(ctx.run("virsh", "list", "--name").stdout.split())
    shown = listing(ctx, leased=running & set(GUESTS))
    before, free_before = shown.held(), shown.pool()["free"]
    expect(VICTIM in before, f"{VICTIM} holds no VF before the restart")
    pid = libvirtd_pid()
    expect(pid, "libvirtd is not running")
    ctx.log(f"# kill {pid}  (libvirtd)")
    os.kill(pid, signal.SIGTERM)
    ctx.wait_for("libvirtd to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=30)
    victim_pid = qemu_pid(VICTIM)
    expect(victim_pid, f"{VICTIM} is not running")
    ctx.log(f"# kill -9 {victim_pid}  (QEMU of {VICTIM}, while libvirtd is down)")
    os.kill(victim_pid, signal.SIGKILL)
    ctx.wait_for(f"QEMU of {VICTIM} to die",
                 lambda: not Path(f"/proc/{victim_pid}").exists(), timeout=15)
    start_libvirtd(ctx)
    alive = set(before) - {VICTIM}
    ctx.wait_for("a reconnect line for each running guest", lambda: all(
        f"{name} reconnect begin: holds {before[name]}" in syslog(ctx) for name in alive),
        timeout=60, interval=1)
    ctx.wait_for(f"the lease of {VICTIM} to go", lambda: VICTIM not in
                 {r["domain"] for r in quiet_rows()}, timeout=60, interval=1)
    ctx.log("--- syslog (hook):")
    ctx.log("\n".join(line for line in syslog(ctx).splitlines() if "reconnect" in line or
                      VICTIM in line))
    view = listing(ctx, leased=alive, free=free_before + 1)
    expect({n: view.held()[n] for n in alive} == {n: before[n] for n in alive},
           "a running guest's VF changed over the restart")
    vf = before[VICTIM]
    ctx.wait_for(f"{vf} back on igbvf", lambda: driver_of(vf) == "igbvf", timeout=15)
    running = set(ctx.run("virsh", "list", "--name").stdout.split())
    expect(running & set(GUESTS) == alive, f"running after the restart: {sorted(running)}")


@step("leases-at-power-off", needs=("config",))
def leases_at_power_off(ctx: Context) -> None:
    """The last step of boot 1, whatever passed before it: the leases the lease table holds as
    the host goes down, which boot 2 finds stale."""
    rows = [r for r in ctx.vfalloc_json("list") if r["pool"] == POOL]
    held = {r["domain"]: r["vf"] for r in rows if r["state"] in ("leased", "stale")}
    ctx.log(f"(held at power-off: {held})")
    expect(len(set(held.values())) == len(held), f"a VF is held twice: {held}")
    remember(ctx, "held_at_power_off", held)


# --- steps: the same host after a reboot (boot 2) -----------------------------------------------


@step("disk-again", timeout=60, needs=("disk",), boot=2)
def disk_again(ctx: Context) -> None:
    """The second boot mounts what the first left on the disk; the kernel's boot_id is new."""
    mount_disk(ctx, fresh=False)
    old = recall(ctx, "boot_id")
    expect(boot_id() != old, f"boot_id {old} did not change")
    expect(CONFIG.exists() and UNIT.exists() and HOOK.exists(), "boot 1's files are not on the disk")


@step("reboot-no-vfs", needs=("disk-again", "leases-at-power-off"), boot=2)
def reboot_no_vfs(ctx: Context) -> None:
    """Right after the reboot the PFs have no VFs (systemd would run the unit now): `vfalloc
    host check` fails on that, and `vfalloc list` reports boot 1's leases as stale."""
    held = recall(ctx, "held_at_power_off")
    for pf in sriov_pfs():
        expect(read_sysfs(pf.sysfs / "sriov_numvfs") == "0", f"{pf.netdev} has VFs at boot")
    checks = host_checks(ctx, want_rc=1)
    for pf in sriov_pfs():
        expect(pf_check(checks, "sr-iov", pf) == "fail", f"{pf.netdev}: no VFs, yet sr-iov passes")
    view = listing(ctx, leased=set(), stale=set(held), free=0, total=None, human=True)
    expect(view.held("stale") == held, f"stale leases {view.held('stale')}, expected {held}")


@step("persist-at-boot", timeout=90, needs=("disk-again",), boot=2)
def persist_at_boot(ctx: Context) -> None:
    """The unit boot 1 wrote, its ExecStart lines run as systemd runs them at boot (before
    libvirtd): both PFs get their 4 VFs back, on igbvf."""
    unit = UNIT.read_text()
    ctx.log(f"# cat {UNIT}\n{unit}")
    execs = read_unit_exec_start(unit)
    expect(len(execs) == 2, f"ExecStart lines: {execs}")
    for argv in execs:
        ctx.run(*argv)
    for pf in sriov_pfs():
        vfs = vfs_of(pf)
        expect(len(vfs) == NUM_VFS, f"{pf.netdev}: {len(vfs)} VFs after the unit ran")
        for vf in vfs:
            ctx.wait_for(f"{vf} on igbvf", lambda vf=vf: driver_of(vf) == "igbvf", timeout=10)


@step("stale-listed", needs=("persist-at-boot", "reboot-no-vfs"), boot=2)
def stale_listed(ctx: Context) -> None:
    """With the VFs back, boot 1's leases are stale ("taken in an earlier boot") on the very VFs
    they held; the VF given back in boot 1 is free."""
    held = recall(ctx, "held_at_power_off")
    view = listing(ctx, leased=set(), stale=set(held), free=POOL_SIZE - len(held), human=True)
    expect(view.held("stale") == held, f"stale leases {view.held('stale')}, expected {held}")
    for vf in held.values():
        reason = view.row(vf)["reason"] or ""
        expect("earlier boot" in reason, f"{vf}: stale because {reason!r}")


@step("gc", timeout=60, needs=("stale-listed",), boot=2)
def gc(ctx: Context) -> None:
    """`vfalloc gc --dry-run` names every stale lease and frees none; `vfalloc gc` frees them,
    one line each; then every VF of the pool is free and a second gc finds nothing."""
    held = recall(ctx, "held_at_power_off")
    dry = ctx.vfalloc("gc", "--dry-run").stdout
    for name, vf in held.items():
        expect(f"would free {vf} from {name}" in dry, f"the dry run does not name {vf} of {name}")
    listing(ctx, leased=set(), stale=set(held), free=POOL_SIZE - len(held))
    out = ctx.vfalloc("gc").stdout
    for name, vf in held.items():
        expect(f"freed {vf} from {name}" in out, f"gc does not report freeing {vf} of {name}")
    listing(ctx, leased=set(), free=POOL_SIZE)
    again = ctx.vfalloc("gc").stdout
    expect("no stale leases" in again, "a second gc still found stale leases")


@step("start-after-reboot", timeout=180, needs=("gc", "libvirtd"), boot=2)
def start_after_reboot(ctx: Context) -> None:
    """libvirtd comes up with boot 1's domains and hook from the disk; a plain start of a guest
    gets the VF it held before the reboot (sticky), hot-plugged; `vfalloc host check` passes."""
    name = RACERS[2]
    before = recall(ctx, "vf_of")[name]
    start_libvirt(ctx)
    ctx.run("virsh", "start", "--paused", name)
    ctx.wait_for(f"the lease of {name} attached", lambda: any(
        r["domain"] == name and r["phase"] == "attached" for r in quiet_rows()),
        timeout=90, interval=2)
    view = listing(ctx, leased={name}, free=POOL_SIZE - 1)
    expect(view.held()[name] == before, f"{name} got {view.held()[name]}, held {before} before")
    check_vf_in_guest(ctx, view, name, hotplugged=True)
    host_checks(ctx, want_rc=0)


# --- steps: a second host beside the first (boot 3) ---------------------------------------------

SECOND_GUEST = "guest10"  # runs with its VF while the Debian package's steps restart libvirtd


@step("second-host", timeout=300, boot=3)
def second_host(ctx: Context) -> None:
    """A host set up as boot 1 sets its own up, in one step, for the steps that need no reboot:
    a fresh disk, the config, 4 VFs on each PF, the boot unit, the hook, libvirtd, and one guest
    running with a VF of the pool, hot-plugged at a plain `virsh start`. Boot 1 proves these one
    by one; here they are checked to have taken, and host-check-after checks the whole."""
    mount_disk(ctx, fresh=True)
    write_config(ctx)
    for pf in sriov_pfs():
        ctx.vfalloc("host", "numvfs", pf.netdev, str(NUM_VFS))
        expect(len(vfs_of(pf)) == NUM_VFS, f"{pf.netdev}: {len(vfs_of(pf))} VFs")
    ctx.vfalloc("host", "persist", "--exec", str(VFALLOC), "--enable")
    ctx.vfalloc("install-hook", "--config", str(CONFIG))
    expect(UNIT.exists() and HOOK.exists(), "the boot unit or the hook is missing")
    start_libvirt(ctx)
    path = Path("/tmp") / f"{SECOND_GUEST}.xml"
    path.write_text(domain_xml(SECOND_GUEST, metadata=metadata_request(POOL, guest_mac(SECOND_GUEST))))
    ctx.run("virsh", "define", str(path))
    ctx.run("virsh", "start", "--paused", SECOND_GUEST)
    ctx.wait_for(f"the lease of {SECOND_GUEST} attached", lambda: any(
        r["domain"] == SECOND_GUEST and r["phase"] == "attached" for r in quiet_rows()),
        timeout=90, interval=2)


@step("host-check-after", needs=("second-host",), boot=3)
def host_check_after(ctx: Context) -> None:
    """After set-up, `vfalloc host check` passes: VFs as configured, each alone in its IOMMU
    group, the count made at boot, the hook installed (warnings allowed, e.g. no iommu=pt)."""
    checks = host_checks(ctx, want_rc=0)
    expect("fail" not in checks.values(), f"failed checks: {checks}")
    expect(checks.get(("hook", "host")) == "ok", "the hook check is not ok")
    for pf in sriov_pfs():
        for name in ("sr-iov", "isolation", "persist", "link"):
            expect(pf_check(checks, name, pf) == "ok", f"{pf.netdev}: {name} is not ok")


@step("define-domains", timeout=60, needs=("second-host",), boot=3)
def define_domains(ctx: Context) -> None:
    """e2e-a, a tiny q35 domain with <interface type='hostdev' managed='yes'> on the VF in no
    pool, and no vfalloc request: plain libvirt, which the hook leaves alone."""
    path = Path("/tmp") / f"{DOMAIN_WITH_VF}.xml"
    path.write_text(domain_xml(DOMAIN_WITH_VF, spare_vf(), VF_MAC))
    ctx.run("virsh", "define", str(path))
    out = ctx.run("virsh", "list", "--all", "--name").stdout
    expect(DOMAIN_WITH_VF in out.split(), "domain not defined")


@step("start-paused", timeout=60, needs=("define-domains",), boot=3)
def start_paused(ctx: Context) -> None:
    """`virsh start --paused` with the VF: libvirt moves the VF to vfio-pci and sets its MAC."""
    vf = spare_vf()
    try:
        ctx.run("virsh", "start", "--paused", DOMAIN_WITH_VF)
    except StepFailed:
        ctx.attach_file(Path(f"/var/log/libvirt/qemu/{DOMAIN_WITH_VF}.log"))
        ctx.attach_file(ctx.results / f"libvirtd-boot{ctx.boot}.log")
        raise
    ctx.run("virsh", "domstate", DOMAIN_WITH_VF)
    expect(driver_of(vf) == "vfio-pci", f"{vf} is on {driver_of(vf)} while {DOMAIN_WITH_VF} runs")


@step("qemu-cmdline", needs=("start-paused",), boot=3)
def qemu_cmdline(ctx: Context) -> None:
    """The guest's QEMU holds the VF as a vfio-pci device; the PF reports the VF's new MAC.
    vfalloc leased nothing: the domain asks for no VF."""
    pf = sriov_pfs()[1]
    vf = spare_vf()
    pid = qemu_pid(DOMAIN_WITH_VF)
    expect(pid, f"no /run/libvirt/qemu/{DOMAIN_WITH_VF}.pid")
    vfio = [d for d in qemu_devices(pid) if d.get("driver") == "vfio-pci"]
    ctx.log(f"QEMU pid {pid}, vfio-pci devices: {vfio}")
    expect([d.get("host") for d in vfio] == [vf], f"expected one vfio-pci device with host={vf}")
    macs = vf_macs(ctx, pf)
    index = vfs_of(pf).index(vf)
    expect(macs.get(index) == VF_MAC, f"VF {index} MAC is {macs.get(index)}, expected {VF_MAC}")
    listing(ctx, leased={SECOND_GUEST}, free=POOL_SIZE - 1)  # second-host's guest holds one


@step("destroy", needs=("start-paused",), boot=3)
def destroy(ctx: Context) -> None:
    """After destroy, QEMU is gone and libvirt gives the VF back to igbvf."""
    vf = spare_vf()
    ctx.run("virsh", "destroy", DOMAIN_WITH_VF)
    expect(qemu_pid(DOMAIN_WITH_VF) is None, "the pid file is still there")
    ctx.wait_for(f"{vf} back on igbvf", lambda: driver_of(vf) == "igbvf", timeout=10)


# Steps kept in modules of their own register here, in this order. Run as a script this module
# is __main__: it is put in sys.modules as "scenario" too, so theirs is this module, not a copy.
sys.modules.setdefault("scenario", sys.modules[__name__])
import steps_deb  # noqa: E402,F401  (boot 3: the Debian package)
import steps_fdb  # noqa: E402,F401  (boot 3: bridged guests and VFs on one port, docs/bridges.md)

steps_deb.register_remove()  # boot 3's last: dpkg -r takes away the hook the bridges' steps use


def inside_the_rig() -> bool:
    """This scenario writes sriov_numvfs and rebinds drivers: never on a real host."""
    return "e2e.scenario=" in Path("/proc/cmdline").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="the results share")
    parser.add_argument("--boot", type=int, default=1, help="which boot of the VM this is")
    args = parser.parse_args(argv)
    if not inside_the_rig():
        print("scenario.py runs only inside the e2e VM (see rig.py); refusing", file=sys.stderr)
        return 2
    return run_all(args.results, args.boot)


if __name__ == "__main__":
    sys.exit(main())
