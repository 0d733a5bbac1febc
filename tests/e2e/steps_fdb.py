"""e2e steps: bridged guests and VF guests on one port reach each other because vfalloc keeps the
PF's FDB (docs/bridges.md). Registered from scenario.py for the second host (boot 3), after the
Debian package's steps: both PFs have their VFs, libvirtd runs with the hook installed.

What they prove on the real kernel, igb/igbvf and QEMU's 82576 model:
- fdb-bridge: PF 0 made a port of br0 (own MAC differing from the PF's): `vfalloc host check`
  warns that br0's MAC is missing from the PF's FDB; the boot unit's `vfalloc fdb sync` adds it;
  the check is ok.
- fdb-guest: a guest with no VF, started with plain `virsh start` on br0 (type='bridge'), gets its
  MAC into `bridge fdb show dev PF` (flag self) from the hook, and loses it at `virsh destroy`.
  (type='network' is not run here: the host's libvirtd has no network driver, Debian's
  libvirt-daemon-driver-network; tests/fdb/test_fdb_cli.py runs that path on libvirt's live XML.)
- fdb-reach: a VF (igbvf) in one namespace reaches a veth endpoint on a bridge over its PF (in
  another namespace) and the bridge's own address over IPv4 only while the entries vfalloc keeps
  are there: not before `vfalloc fdb sync`, and not after the config switch turns them off.
  The bridge and its PF live in a namespace of their own so that every address stays inside
  namespaces made here; the PF goes back to the host's namespace at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from inside import (
    SYS_PCI,
    VFALLOC,
    Context,
    domain_xml,
    driver_of,
    expect,
    libvirtd_answers,
    sriov_pfs,
    start_libvirt,
    vfs_of,
)
from scenario import CONFIG, UNIT, step, syslog

BR0, BR0_MAC = "br0", "02:e2:0f:db:00:01"
WEB, WEB_MAC = "fdb-web", "52:54:00:fd:b0:01"
SW, VFNS, EP = "fdb-sw", "fdb-vf", "fdb-ep"   # namespaces: the bridge and its PF, the VF, the endpoint
BR1, BR1_MAC = "br1", "02:e2:0f:db:00:0b"
VF_IP, EP_IP, BR1_IP = "10.15.0.1", "10.15.0.2", "10.15.0.3"


def self_entries(ctx: Context, dev: str, ns: str | None = None) -> set[str]:
    """The MACs in `dev`'s own FDB (entries flagged self), as `bridge fdb show dev DEV` prints them."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    out = ctx.run(*prefix, "bridge", "fdb", "show", "dev", dev).stdout
    return {line.split()[0] for line in out.splitlines() if " self" in f" {line}" and line.split()}


def guest_xml(name: str, mac: str) -> str:
    """A tiny q35 guest (started paused only) with one virtio NIC on br0, no VF."""
    return domain_xml(name, nic=f"""
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{BR0}'/>
      <model type='virtio'/>
    </interface>""")


def fdb_check(ctx: Context, pf: str) -> dict:
    data = ctx.vfalloc_json("host", "check", check=False)
    found = [c for c in data["checks"] if c["check"] == "fdb" and c["subject"] == pf]
    expect(len(found) == 1, f"`vfalloc host check` has {len(found)} fdb checks for {pf}")
    ctx.log(f"(fdb check: {found[0]})")
    return found[0]


@step("fdb-bridge", timeout=240, needs=("second-host",), boot=3)
def fdb_bridge(ctx: Context) -> None:
    # These steps need the VFs, the boot unit and libvirtd with the hook (second-host); not the
    # package's steps before them, so libvirtd is started here when it does not answer.
    if not libvirtd_answers():
        start_libvirt(ctx)
    ctx.run("modprobe", "-a", "bridge", "veth", "tun")
    pf = sriov_pfs()[0].netdev
    ctx.run("ip", "link", "add", BR0, "type", "bridge")
    ctx.run("ip", "link", "set", BR0, "address", BR0_MAC)
    ctx.run("ip", "link", "set", pf, "master", BR0)
    ctx.run("ip", "link", "set", BR0, "up")
    ctx.run("bridge", "link", "show")
    check = fdb_check(ctx, pf)
    expect(check["status"] == "warn" and BR0_MAC in check["message"] and "vfalloc fdb sync" in check["fix"],
           "host check does not warn that br0's MAC is missing from the PF's FDB")
    # the sync the boot unit runs once the VFs are made (ExecStartPost; "-": its failure is no
    # failure of the unit), run as systemd would
    post = [shlex.split(line.removeprefix("ExecStartPost=").lstrip("-"))
            for line in UNIT.read_text().splitlines() if line.startswith("ExecStartPost=")]
    expect(len(post) == 1 and post[0][1:3] == ["fdb", "sync"], f"the unit's ExecStartPost lines: {post}")
    out = ctx.run(*post[0]).stdout
    expect(f"add {BR0_MAC} to {pf} (for bridge {BR0})" in out, "fdb sync did not add br0's MAC")
    expect(BR0_MAC in self_entries(ctx, pf), f"`bridge fdb show dev {pf}` lacks {BR0_MAC}")
    expect(fdb_check(ctx, pf)["status"] == "ok", "host check still warns after fdb sync")


@step("fdb-guest", timeout=240, needs=("fdb-bridge",), boot=3)
def fdb_guest(ctx: Context) -> None:
    pf = sriov_pfs()[0].netdev
    path = Path("/tmp") / f"{WEB}.xml"
    path.write_text(guest_xml(WEB, WEB_MAC))
    ctx.run("virsh", "define", str(path))
    try:
        ctx.run("virsh", "start", "--paused", WEB)
    except Exception:
        ctx.attach_file(Path(f"/var/log/libvirt/qemu/{WEB}.log"))
        raise
    live = ctx.run("virsh", "dumpxml", WEB, quiet=True).stdout
    ctx.log("\n".join(line for line in live.splitlines() if "source" in line or "target dev" in line))
    expect(WEB_MAC in self_entries(ctx, pf), f"{WEB} runs, but {WEB_MAC} is not in {pf}'s FDB")
    expect(f"{WEB} started begin: fdb added {WEB_MAC} on {pf}" in syslog(ctx), f"the hook logged no entry for {WEB}")
    shown = ctx.vfalloc_json("fdb", "show")
    owners = {e["mac"]: [o["name"] for o in e["owners"]] for e in shown}
    expect(owners.get(WEB_MAC) == [WEB] and owners.get(BR0_MAC) == [BR0], f"`vfalloc fdb show` says {owners}")
    ctx.vfalloc("fdb", "show")
    ctx.run("virsh", "destroy", WEB)
    expect(WEB_MAC not in self_entries(ctx, pf), f"{WEB_MAC} stayed in {pf}'s FDB after `virsh destroy {WEB}`")
    expect(f"{WEB} release end: fdb removed {WEB_MAC} on {pf}" in syslog(ctx), f"the hook logged no removal for {WEB}")
    expect(BR0_MAC in self_entries(ctx, pf), "br0's own entry went with the guest")


def reaches(ctx: Context, address: str) -> bool:
    """One IPv4 echo from the VF's namespace (busybox ping; the host has no iputils)."""
    proc = ctx.run("ip", "netns", "exec", VFNS, "busybox", "ping", "-c", "1", "-W", "2", address, check=False)
    return proc.returncode == 0


def unreachable(ctx: Context, address: str, what: str) -> None:
    """Three echoes, none answered (the frames go out on the wire and never come back)."""
    proc = ctx.run("ip", "netns", "exec", VFNS, "busybox", "ping", "-c", "3", "-W", "3", address, check=False)
    expect(proc.returncode != 0, f"the VF reached {what} ({address}) without the FDB entry")


def sync_in(ctx: Context, config: Path) -> str:
    """`vfalloc fdb sync` where the bridge is: `ip netns exec` mounts that namespace's sysfs."""
    return ctx.run("ip", "netns", "exec", SW, str(VFALLOC), "fdb", "sync",
                   env={"VFALLOC_CONFIG": str(config)}, shown=f"ip netns exec {SW} vfalloc fdb sync").stdout


@step("fdb-reach", timeout=420, needs=("fdb-bridge",), boot=3)
def fdb_reach(ctx: Context) -> None:
    pf_rec = sriov_pfs()[1]
    pf = pf_rec.netdev
    vf = vfs_of(pf_rec)[-1]  # in no pool: nobody leases it
    expect(driver_of(vf) == "igbvf", f"{vf} is on {driver_of(vf)}, not igbvf")
    vf_net = os.listdir(SYS_PCI / vf / "net")[0]
    try:
        for ns in (SW, VFNS, EP):
            ctx.run("ip", "netns", "add", ns)
        ctx.run("ip", "link", "set", pf, "netns", SW)
        ctx.run("ip", "link", "set", vf_net, "netns", VFNS)
        sw = ("ip", "-n", SW)
        ctx.run(*sw, "link", "add", BR1, "type", "bridge")
        ctx.run(*sw, "link", "set", BR1, "address", BR1_MAC)
        ctx.run(*sw, "link", "set", pf, "master", BR1)
        ctx.run(*sw, "link", "add", "vb0", "type", "veth", "peer", "name", "vb1", "netns", EP)
        ctx.run(*sw, "link", "set", "vb0", "master", BR1)
        for dev in (pf, "vb0", BR1, "lo"):
            ctx.run(*sw, "link", "set", dev, "up")
        ctx.run(*sw, "addr", "add", f"{BR1_IP}/24", "dev", BR1)
        ctx.run("ip", "-n", EP, "addr", "add", f"{EP_IP}/24", "dev", "vb1")
        ctx.run("ip", "-n", EP, "link", "set", "vb1", "up")
        ctx.run("ip", "-n", VFNS, "addr", "add", f"{VF_IP}/24", "dev", vf_net)
        ctx.run("ip", "-n", VFNS, "link", "set", vf_net, "up")
        ep_mac = ctx.run("ip", "netns", "exec", EP, "cat", "/sys/class/net/vb1/address").stdout.strip()
        # The endpoint speaks first, so the bridge learns where its MAC is (as a container would).
        ctx.wait_for("the endpoint to reach br1", lambda: ctx.run(
            "ip", "netns", "exec", EP, "busybox", "ping", "-c", "1", "-W", "2", BR1_IP, check=False).returncode == 0,
            timeout=60, interval=1)
        ctx.run(*sw, "link", "show", pf)
        unreachable(ctx, EP_IP, "the endpoint")
        unreachable(ctx, BR1_IP, "the bridge's own address")

        out = sync_in(ctx, CONFIG)
        expect(f"add {BR1_MAC} to {pf} (for bridge {BR1})" in out, "fdb sync did not add br1's MAC")
        expect(f"add {ep_mac} to {pf} (for port vb0 on {BR1})" in out, "fdb sync did not add the endpoint's MAC")
        expect({BR1_MAC, ep_mac} <= self_entries(ctx, pf, SW), f"{pf}'s FDB lacks the entries")
        ctx.wait_for("the VF to reach the endpoint", lambda: reaches(ctx, EP_IP), timeout=60, interval=1)
        ctx.wait_for("the VF to reach the bridge's address", lambda: reaches(ctx, BR1_IP), timeout=60, interval=1)

        off = Path("/tmp/fdb-off.toml")
        off.write_text(CONFIG.read_text() + f"\n[pf.{pf}]\nfdb = false\n")
        out = sync_in(ctx, off)
        expect(f"remove {ep_mac} from {pf}" in out and f"remove {BR1_MAC} from {pf}" in out,
               "with fdb = false for the PF, sync did not remove vfalloc's entries")
        expect(not {BR1_MAC, ep_mac} & self_entries(ctx, pf, SW), f"{pf}'s FDB still holds the entries")
        time.sleep(1)
        unreachable(ctx, EP_IP, "the endpoint")
        unreachable(ctx, BR1_IP, "the bridge's own address")
        shown = json.loads(ctx.run(str(VFALLOC), "fdb", "show", "--json", env={"VFALLOC_CONFIG": str(CONFIG)},
                                   shown="vfalloc fdb show --json").stdout)
        expect(not [e for e in shown if e["pf"] == pf], f"vfalloc still records entries on {pf}: {shown}")
    finally:
        ctx.run("ip", "-n", SW, "link", "set", pf, "nomaster", check=False)
        ctx.run("ip", "-n", SW, "link", "set", pf, "netns", "1", check=False)
        for ns in (VFNS, EP, SW):
            ctx.run("ip", "netns", "del", ns, check=False)
        ctx.run("ip", "link", "set", pf, "up", check=False)
