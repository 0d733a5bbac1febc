"""e2e steps of the Debian package: the second host (boot 3, scenario.py) installs the .deb that
`make deb` built (dpkg, into the VM's throw-away overlay; its dependencies python3-lxml,
python3-filelock and python3-libvirt are Debian's, found on the shared root), the packaged
`vfalloc install-hook` replaces the hook with one that runs /usr/bin/python3, libvirtd restarts
to see it, and a plain `virsh start` gets its VF through that hook; the packaged `vfalloc
metrics` agrees with the packaged `vfalloc list --json`. Last of all, `dpkg -r` takes the
hook away while a guest runs, and libvirtd restarts without it.

Imported by scenario.py after its second-host step (steps run in the order they are registered);
deb-remove is registered by scenario.py after the bridges' steps, which use the packaged hook.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from inside import (
    Context,
    domain_xml,
    expect,
    libvirtd_pid,
    metadata_request,
    qemu_pid,
    read_sysfs,
    sriov_pfs,
    start_libvirt,
    start_libvirtd,
    vfs_of,
)
from scenario import CONFIG, HOOK, NUM_VFS, POOL, Listing, check_vf_in_guest, guest_mac, step, syslog

DEB_VFALLOC = Path("/usr/bin/vfalloc")
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"
GUEST = "guest9"  # a guest of this step's own (the scenario's are guest1 to guest8)
PLAIN = "e2e-plain"  # deb-remove's: no VF, no request
INSTALLED = {  # what the package must put where an admin's tools look for it
    "/usr/bin/vfalloc": "the command",
    "/usr/share/man/man8/vfalloc.8.gz": "the man page",
    "/usr/share/bash-completion/completions/vfalloc": "the bash completion",
    "/usr/share/zsh/vendor-completions/_vfalloc": "the zsh completion",
    "/usr/share/vfalloc/hooks/qemu": "the hook's template",
}


def deb_path() -> Path:
    found = re.search(r"(?:^|\s)e2e\.deb=(\S+)", read_sysfs(Path("/proc/cmdline")))
    expect(found, "no e2e.deb= on the kernel command line: build the package and pass it "
                  "(`make e2e` does both; by hand: make deb, then VFALLOC_E2E_DEB=dist/vfalloc_VERSION_all.deb)")
    path = Path(found[1])
    expect(path.is_file(), f"{path} does not exist: run `make deb`")
    return path


def packaged(ctx: Context, *args: str, check: bool = True, split: bool = False):
    """The packaged vfalloc, with the e2e config (the unit and hook name it; a shell would too)."""
    return ctx.run(str(DEB_VFALLOC), *args, check=check, split=split, env={"VFALLOC_CONFIG": str(CONFIG)},
                   shown="/usr/bin/vfalloc " + " ".join(args))


def packaged_json(ctx: Context, *args: str):
    proc = packaged(ctx, *args, "--json", split=True)
    return json.loads(proc.stdout)


@step("deb-install", timeout=600, needs=("second-host",), boot=3)
def deb_install(ctx: Context) -> None:
    """dpkg installs the package over Debian's own python3-lxml, python3-filelock and
    python3-libvirt; its files are where they belong and /usr/bin/vfalloc runs on Debian's
    python3, importing vfalloc and those libraries from Debian's dist-packages."""
    deb = deb_path()
    ctx.run("dpkg-deb", "--field", str(deb), "Package", "Version", "Depends")
    ctx.run("dpkg", "-i", str(deb))  # man-db's trigger reindexes every page of the shared root: minutes under TCG
    files = set(ctx.run("dpkg", "-L", "vfalloc", quiet=True).stdout.split())
    for path, what in INSTALLED.items():
        expect(path in files and Path(path).exists(), f"the package does not install {what} at {path}")
    expect(DEB_VFALLOC.read_text().startswith("#!/usr/bin/python3"), "/usr/bin/vfalloc does not run /usr/bin/python3")
    probe = ctx.run("/usr/bin/python3", "-I", "-c",
                    "import vfalloc, lxml, filelock, libvirt; "
                    "print('\\n'.join(m.__file__ for m in (vfalloc, lxml, filelock, libvirt)))").stdout
    for line in probe.split():
        expect(line.startswith(DIST_PACKAGES), f"{line} is not in Debian's {DIST_PACKAGES}")
    packaged(ctx, "--version")
    page = ctx.run("man", "8", "vfalloc", env={"MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}, quiet=True).stdout
    expect("vfalloc metrics" in page and "vfalloc host numvfs" in page, "`man 8 vfalloc` does not show the commands")
    bash = ctx.run("bash", "--norc", "-c", "source /usr/share/bash-completion/completions/vfalloc; complete -p vfalloc")
    expect("_vfalloc vfalloc" in bash.stdout, "the installed bash completion does not register")


@step("deb-hook", timeout=900, needs=("deb-install",), boot=3)
def deb_hook(ctx: Context) -> None:
    """The packaged `vfalloc install-hook` writes a hook that runs /usr/bin/python3 (which can
    import vfalloc only from the package); libvirtd (re)starts to see it, and answers `reconnect
    begin` for the guest second-host started; a guest of its own, defined here with a request in
    its XML, gets its VF through that hook at a plain `virsh start`, hot-plugged; `virsh destroy`
    gives it back. It uses second-host's config and VFs; should that step have left no config or
    no VFs, it makes them (with the packaged vfalloc)."""
    if not CONFIG.exists():
        pf0, pf1 = sriov_pfs()
        CONFIG.parent.mkdir(parents=True, exist_ok=True)
        CONFIG.write_text(f'[pools.{POOL}]\npfs = ["{pf0.netdev}#0-3", "{pf1.netdev}#0-2"]\n')
        ctx.log(f"(boot 1 left no {CONFIG}; written:)\n{CONFIG.read_text()}")
    for pf in sriov_pfs():
        if not vfs_of(pf):
            packaged(ctx, "host", "numvfs", pf.netdev, str(NUM_VFS))
    packaged(ctx, "install-hook", "--config", str(CONFIG))
    text = HOOK.read_text()
    ctx.log(f"# cat {HOOK}\n{text}")
    expect(text.startswith("#!/bin/sh\n") and "\npython=/usr/bin/python3\n" in text,
           "the packaged install-hook did not write a hook that runs /usr/bin/python3")
    packaged(ctx, "gc")  # leases of guests that stopped, should any be left
    before = {r["domain"]: r["vf"] for r in packaged_json(ctx, "list") if r["state"] == "leased"}
    pid = libvirtd_pid()
    if pid:
        ctx.log(f"# kill {pid}  (libvirtd, so that it finds the new hook when it starts)")
        os.kill(pid, signal.SIGTERM)
        ctx.wait_for("libvirtd to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=120)
        start_libvirtd(ctx)
    else:
        start_libvirt(ctx)
    for name, vf in before.items():
        ctx.wait_for(f"the packaged hook's reconnect line for {name}",
                     lambda name=name, vf=vf: f"{name} reconnect begin: holds {vf}" in syslog(ctx),
                     timeout=300, interval=1)
    path = Path("/tmp") / f"{GUEST}.xml"
    path.write_text(domain_xml(GUEST, metadata=metadata_request(POOL, guest_mac(GUEST))))
    ctx.run("virsh", "define", str(path))
    ctx.run("virsh", "start", "--paused", GUEST)

    def attached() -> bool:
        rows = packaged_json(ctx, "list")
        return any(r["domain"] == GUEST and r["phase"] == "attached" for r in rows)

    ctx.wait_for(f"the lease of {GUEST} attached", attached, timeout=600, interval=2)
    rows = packaged_json(ctx, "list")
    view = Listing(rows, packaged_json(ctx, "pools"))
    expect(set(view.held()) == {*before, GUEST}, f"leased: {view.held()}")
    check_vf_in_guest(ctx, view, GUEST, hotplugged=True)
    check_metrics(ctx, rows)
    ctx.run("virsh", "destroy", GUEST)
    after = {r["domain"] for r in packaged_json(ctx, "list") if r["state"] == "leased"}
    expect(after == set(before), f"after destroying {GUEST}, leased: {after}")
    expect(f"{GUEST} release end: released {view.held()[GUEST]}" in syslog(ctx), "the hook logged no release")


def check_metrics(ctx: Context, rows: list[dict]) -> None:
    """The packaged `vfalloc metrics`: the pool's counts are those of `vfalloc list --json`."""
    text = packaged(ctx, "metrics", split=True).stdout
    pattern = rf'^vfalloc_pool_vfs\{{pool="{POOL}",state="(?P<state>\w+)"\}} (?P<value>\S+)$'
    found = {m["state"]: float(m["value"]) for m in re.finditer(pattern, text, re.M)}
    want = {state: float(sum(1 for r in rows if r["pool"] == POOL and r["state"] == state))
            for state in ("free", "leased", "stale")}
    expect(found == want, f"vfalloc metrics says {found} for pool {POOL}, vfalloc list --json {want}")


def deb_remove(ctx: Context) -> None:
    """`dpkg -r vfalloc` while a guest runs with its VF: the package's prerm takes the hook file
    away (vfalloc wrote it). With libvirtd still running, a plain domain starts and stops (libvirt
    lists qemu.d at each call: the file gone is not run). libvirtd restarts: `reconnect begin`
    finds no hook, so the guest keeps running (paused, as it was), in the same QEMU; a plain domain
    starts and stops.
    Left installed, the hook would run a vfalloc that is gone and fail there, and libvirt kills
    a domain whose hook fails at `reconnect begin`."""
    running = ctx.run("virsh", "list", "--name").stdout.split()
    expect(running, "no domain runs: nothing would show the restart keeping it")
    before = {name: (domstate(ctx, name), qemu_pid(name)) for name in running}  # the guests run paused
    expect(HOOK.is_file(), f"{HOOK} is not there to be removed")
    # man-db's trigger would reindex every page of the shared root (minutes under TCG); man-db's
    # own switch for that (debconf man-db/auto-update) turns it off in this throw-away root
    Path("/var/lib/man-db/auto-update").unlink(missing_ok=True)
    removal = ctx.run("dpkg", "-r", "vfalloc").stdout
    expect(f"vfalloc: removed {HOOK}" in removal, "dpkg -r did not say it removed the hook")
    expect(not HOOK.exists() and not DEB_VFALLOC.exists(), f"after dpkg -r: hook {HOOK.exists()}, "
           f"{DEB_VFALLOC} {DEB_VFALLOC.exists()}")
    path = Path("/tmp") / f"{PLAIN}.xml"
    path.write_text(domain_xml(PLAIN))
    ctx.run("virsh", "define", str(path))
    ctx.run("virsh", "start", "--paused", PLAIN)
    ctx.run("virsh", "destroy", PLAIN)
    pid = libvirtd_pid()
    expect(pid, "libvirtd does not run")
    ctx.log(f"# kill {pid}  (libvirtd: it runs the hooks at `reconnect begin` when it starts)")
    os.kill(pid, signal.SIGTERM)
    ctx.wait_for("libvirtd to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=120)
    start_libvirtd(ctx)
    for name, (state, qemu) in before.items():
        now = domstate(ctx, name)
        expect(now == state, f"{name} is {now!r} after libvirtd restarted without the hook, was {state!r}")
        expect(qemu_pid(name) == qemu, f"{name}'s QEMU was {qemu}, is {qemu_pid(name)}")
    ctx.run("virsh", "start", "--paused", PLAIN)
    ctx.run("virsh", "destroy", PLAIN)


def domstate(ctx: Context, name: str) -> str:
    return ctx.run("virsh", "domstate", name).stdout.strip()


def register_remove() -> None:
    """scenario.py calls this after the bridges' steps: it is boot 3's last step."""
    step("deb-remove", timeout=300, needs=("deb-hook",), boot=3)(deb_remove)
