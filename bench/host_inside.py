"""What a VM start costs on the emulated SR-IOV host, run inside it (bench/host.py boots it).

stage2.sh (PID 1 of the VM, tests/e2e) runs this file instead of the e2e scenario. It sets the
host up as an admin would (VFs on both igb PFs, a vfalloc pool over the first PF's VFs, a
libvirt hostdev network over the second PF) and times, N rounds each, every start of:
  a  `virsh start --paused` of a domain with no VF, libvirt without vfalloc's hook;
  b  the same with the hook installed (libvirtd restarted: it looks for hooks at start);
  c  a domain with a vfalloc request, `virsh start --paused`: until it runs ("running"), and
     until the hook's worker has hot-plugged its VF into the live domain ("VF attached");
  d  the same domain started by `vfalloc start --paused` (the VF is in it from the start);
  e  libvirt's own allocation: `<interface type='network'>` on a `<forward mode='hostdev'>`
     network over a PF.
b, c, d and e run interleaved round by round, so that what the machine does meanwhile hits
them alike; a runs before them (its libvirtd has no hook). A first round of each is not kept. Each start is followed by `virsh
destroy` and a wait until the VF is free again (not timed). The samples go to
<results>/bench-host.json; bench/host.py prints the table.

Standard library only, with tests/e2e/inside.py's helpers. Refuses to run outside the VM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from inside import (  # noqa: E402
    LIBVIRT_ENV,
    VFALLOC,
    Context,
    StepFailed,
    domain_xml,
    expect,
    hide_host_files,
    libvirtd_pid,
    metadata_request,
    sriov_pfs,
    start_libvirt,
    start_libvirtd,
    vfs_of,
    write_sysfs,
)

CONFIG = Path("/etc/vfalloc/vfalloc.toml")
STATE = Path("/var/lib/vfalloc/state.json")
POOL = "bench"
NETWORK = "hostnet"
VFS_PER_PF = 2  # one start at a time needs one VF; each VF costs about half a second of TCG time
PLAIN, REQUEST, NETDOM = "plain", "asks-vf", "on-network"
KINDS = ("a", "b", "c_running", "c_attached", "d", "e", "hook_a")
HOOK_FILE = Path("/etc/libvirt/hooks/qemu.d/vfalloc")
# What libvirt 11.3 gives a hook (virHookCall): its own PATH and LC_ALL, and nothing of ours.
HOOK_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
DEFAULT_ROUNDS = 7
# Bounds for a broken run only, never reached by a working one on a busy machine: each wait ends
# as soon as what it waits for is there. libvirtd probes QEMU first when its cache is cold.
LIBVIRTD_TIMEOUT_S = 600.0
ATTACH_TIMEOUT_S = 300.0


def network_xml(pf: str) -> str:
    return (f"<network><name>{NETWORK}</name><forward mode='hostdev' managed='yes'>"
            f"<pf dev='{pf}'/></forward></network>\n")


def network_domain_xml(name: str) -> str:
    return domain_xml(name).replace(
        "</devices>", f"  <interface type='network'><source network='{NETWORK}'/></interface>\n  </devices>")


def virsh(ctx: Context, *args: str) -> float:
    """Run virsh; the seconds it took."""
    start = time.monotonic()
    ctx.run("virsh", *args)
    return time.monotonic() - start


def status_xml(name: str) -> str:
    """libvirt's live state of a running domain (/run/libvirt/qemu/NAME.xml, while it runs)."""
    try:
        return Path(f"/run/libvirt/qemu/{name}.xml").read_text()
    except FileNotFoundError:
        return ""


def wait(ctx: Context, what: str, probe, timeout: float = ATTACH_TIMEOUT_S, interval: float = 0.02) -> float:
    """Poll until probe() holds; the seconds it took. Short interval: the end is what is timed."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def leases() -> list[dict]:
    try:
        return json.loads(STATE.read_text()).get("leases", [])
    except (FileNotFoundError, ValueError):
        return []


def stop(ctx: Context, name: str) -> None:
    ctx.run("virsh", "destroy", name)
    wait(ctx, f"{name}'s VF free again", lambda: not any(x["domain"] == name for x in leases()))


def setup(ctx: Context, packages: list[str]) -> None:
    hide_host_files(ctx)
    # libvirt's network driver and the nft it needs (bench/host.py, NETWORK_PACKAGES), unpacked
    # into this throwaway root (a tmpfs overlay, tests/e2e/stage1.sh) when it lacks them
    if not list(Path("/usr/lib").glob("*/libvirt/connection-driver/libvirt_driver_network.so")):
        expect(packages, "libvirt has no network driver here and bench/host.py gave no package of it")
        for deb in packages:
            # --keep-directory-symlink: a package with files under /lib (nftables' unit) must not
            # turn the merged-/usr symlink /lib -> usr/lib into a directory, as plain
            # `dpkg-deb -x` does, which takes the dynamic loader's libraries away.
            ctx.run("sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C /', "sh", deb)
        ctx.run("ldconfig")
    pf0, pf1 = sriov_pfs()
    for pf in (pf0, pf1):
        write_sysfs(ctx, pf.sysfs / "sriov_numvfs", str(VFS_PER_PF))
    ctx.log(f"VFs: {vfs_of(pf0)} (pool {POOL}), {vfs_of(pf1)} (network {NETWORK})")
    CONFIG.write_text(f'[settings]\nstate = "{STATE}"\n\n[pools.{POOL}]\npfs = ["{pf0.netdev}"]\n')
    for name, xml in ((PLAIN, domain_xml(PLAIN)), (REQUEST, domain_xml(REQUEST, metadata=metadata_request(POOL))),
                      (NETDOM, network_domain_xml(NETDOM))):
        Path(f"/tmp/{name}.xml").write_text(xml)
    Path(f"/tmp/{NETWORK}.xml").write_text(network_xml(pf1.netdev))


def run(ctx: Context, rounds: int, packages: list[str]) -> dict[str, list[float]]:
    """Round 0 of each part is a warm-up (Python's bytecode caches, libvirt's first use of a
    device) and is not kept."""
    samples: dict[str, list[float]] = {k: [] for k in KINDS}
    setup(ctx, packages)
    start_libvirt(ctx, timeout=LIBVIRTD_TIMEOUT_S)
    for name in (PLAIN, REQUEST, NETDOM):
        ctx.run("virsh", "define", f"/tmp/{name}.xml")
    ctx.run("virsh", "net-define", f"/tmp/{NETWORK}.xml")
    ctx.run("virsh", "net-start", NETWORK)
    for n in range(rounds + 1):
        took = virsh(ctx, "start", "--paused", PLAIN)
        stop(ctx, PLAIN)
        print(f"e2e bench: round {n} of a: {took:.2f} s", flush=True)
        if n:
            samples["a"].append(took)
    ctx.vfalloc("install-hook")
    pid = libvirtd_pid()
    ctx.run("kill", str(pid))  # libvirtd looks for hooks when it starts
    wait(ctx, "libvirtd gone", lambda: libvirtd_pid() is None, timeout=60, interval=0.2)
    start_libvirtd(ctx, timeout=LIBVIRTD_TIMEOUT_S)
    for n in range(rounds + 1):
        took = one_round(ctx)
        print(f"e2e bench: round {n} of b-e: " + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()), flush=True)
        if n:
            for key, value in took.items():
                samples[key].append(value)
    samples["hook_a"] = hook_alone(ctx, rounds * 3)
    print("e2e bench: the hook file's calls of a start of a, alone: "
          + ", ".join(f"{x:.3f} s" for x in samples["hook_a"]), flush=True)
    ctx.log(f"leases left: {leases()}")
    return samples


def hook_alone(ctx: Context, rounds: int) -> list[float]:
    """What the hook file adds to a start of PLAIN, without the start around it: libvirt's three
    calls (prepare, start and started begin) run as libvirt runs them, one after another, with
    the domain's live XML on stdin. The difference between b and a is this, plus noise."""
    virsh(ctx, "start", "--paused", PLAIN)
    live = ctx.run("virsh", "dumpxml", PLAIN, quiet=True).stdout.encode()
    stop(ctx, PLAIN)
    took = []
    for n in range(rounds + 1):
        begin = time.monotonic()
        for op in ("prepare", "start", "started"):
            done = subprocess.run([str(HOOK_FILE), PLAIN, op, "begin", "-"], input=live, env=HOOK_ENV,
                                  capture_output=True, cwd="/")
            expect(done.returncode == 0, f"the hook file failed at {op} begin: {done.stderr.decode().strip()}")
        if n:  # round 0: a warm-up, as for the starts
            took.append(time.monotonic() - begin)
    return took


def one_round(ctx: Context) -> dict[str, float]:
    took = {"b": virsh(ctx, "start", "--paused", PLAIN)}
    stop(ctx, PLAIN)
    begin = time.monotonic()
    took["c_running"] = virsh(ctx, "start", "--paused", REQUEST)
    wait(ctx, f"{REQUEST}'s VF in its live XML", lambda: "ua-vfalloc-0" in status_xml(REQUEST))
    took["c_attached"] = time.monotonic() - begin
    stop(ctx, REQUEST)
    begin = time.monotonic()
    ctx.vfalloc("start", "--paused", REQUEST)
    took["d"] = time.monotonic() - begin
    expect("ua-vfalloc-0" in status_xml(REQUEST), "`vfalloc start` left the VF out of the live XML")
    stop(ctx, REQUEST)
    took["e"] = virsh(ctx, "start", "--paused", NETDOM)
    live = status_xml(NETDOM)
    expect("type='hostdev'" in live or 'type="hostdev"' in live, f"{NETDOM} runs without a VF from {NETWORK}")
    ctx.run("virsh", "destroy", NETDOM)
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="the results share")
    parser.add_argument("--boot", type=int, default=1)
    args = parser.parse_args(argv)
    if "e2e.scenario=" not in Path("/proc/cmdline").read_text():
        print("host_inside.py runs only inside the emulated host (bench/host.py); refusing", file=sys.stderr)
        return 2
    params_path = args.results / "params.json"
    params = json.loads(params_path.read_text()) if params_path.exists() else {}
    rounds = int(params.get("rounds", DEFAULT_ROUNDS))
    ctx = Context(args.results, deadline=time.monotonic() + 3600, show_times=False)
    os.environ.update(LIBVIRT_ENV)
    print(f"e2e bench: {rounds} rounds of each start", flush=True)
    result: dict = {"rounds": rounds, "vfalloc": str(VFALLOC)}
    try:
        result["samples"] = run(ctx, rounds, params.get("packages", []))
        result["ok"] = True
    except StepFailed as exc:
        result.update(ok=False, error=str(exc))
        print(f"e2e bench: FAILED: {exc}", flush=True)
    except subprocess.SubprocessError as exc:
        result.update(ok=False, error=repr(exc))
    (args.results / "bench-host.log").write_text("\n".join(ctx.lines) + "\n")
    (args.results / "bench-host.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"e2e bench: done ({'ok' if result.get('ok') else 'failed'})", flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
