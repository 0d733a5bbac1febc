"""The session `make demo` narrates, run inside the emulated SR-IOV host (tests/e2e/rig.py boots
it; tests/e2e/stage2.sh runs this file as the scenario).

It types what an admin types on a real host and writes each command and its real output to
<results>/transcript.txt, which demo.py prints as it grows. What only this VM needs (hiding the
files of the machine it shares its root with, starting libvirtd by hand since there is no
systemd) happens behind the scenes and is said in one comment line.

Standard library only, like the e2e scenario; the helpers come from tests/e2e/inside.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from inside import (  # noqa: E402
    VENV,
    Context,
    StepFailed,
    domain_xml,
    hide_host_files,
    sriov_pfs,
    start_libvirt,
)

VMS = ("vm1", "vm2", "vm3")
POOL = "lan"
VFS_PER_PF = 2
CONFIG = Path("/etc/vfalloc/vfalloc.toml")  # the default path: no --config anywhere


@dataclass
class Narrator(Context):
    """A Context whose log is the transcript the user reads; behind_the_scenes() mutes it."""

    transcript: Path | None = None
    muted: bool = False

    def log(self, text: str) -> None:
        if self.muted or self.transcript is None:
            return
        with self.transcript.open("a") as f:
            f.write(text.rstrip("\n") + "\n")

    def say(self, text: str) -> None:
        """A comment for the reader, as `# ...` lines after a blank line."""
        self.log("\n" + "\n".join(f"# {line}" for line in text.splitlines()))

    @contextmanager
    def behind_the_scenes(self, what: str) -> Iterator[None]:
        self.log(f"  ({what})")
        self.muted = True
        try:
            yield
        finally:
            self.muted = False


def session(ctx: Narrator) -> None:
    pf0, pf1 = sriov_pfs()
    ctx.say("This is a VM: Debian's kernel with two emulated Intel 82576 NICs (igb, SR-IOV, up to\n"
            "7 VFs each) behind an emulated Intel IOMMU, and libvirt 11 with QEMU inside it.\n"
            "Everything below is what you would type on a real SR-IOV host, with the real output.")
    with ctx.behind_the_scenes("demo only: this VM shares its root with your machine; "
                               "your vfalloc and libvirt files are hidden from it"):
        hide_host_files(ctx)

    ctx.say("Is this host ready for SR-IOV passthrough?")
    ctx.vfalloc("host", "check", check=False)

    ctx.say(f"Create {VFS_PER_PF} VFs on each PF (vfalloc writes 0, then N, and waits for them).")
    for pf in (pf0, pf1):
        ctx.vfalloc("host", "numvfs", pf.netdev, str(VFS_PER_PF))

    ctx.say("One pool over both PFs; \"spread\" balances its VFs over them.")
    text = f'[pools.{POOL}]\npfs = ["{pf0.netdev}", "{pf1.netdev}"]\npolicy = "spread"\n'
    CONFIG.write_text(text)
    ctx.log(f"$ cat {CONFIG}\n{text}")
    ctx.vfalloc("pools")

    ctx.say("Install the libvirt hook, then restart libvirt so it sees it.")
    ctx.vfalloc("install-hook")
    with ctx.behind_the_scenes("demo only: no systemd here, so libvirtd starts by hand"):
        start_libvirt(ctx)
    ctx.vfalloc("host", "check", check=False)

    ctx.say("Three VMs, each asking for a VF of the pool (the request lives in the domain XML).\n"
            "These demo VMs have no disk and start paused; yours boot as usual.")
    with ctx.behind_the_scenes(f"demo only: virsh define {', '.join(VMS)} (tiny q35 guests with "
                               "two spare pcie-root-ports for the hot-plug)"):
        for name in VMS:
            path = Path("/tmp") / f"{name}.xml"
            path.write_text(domain_xml(name))
            ctx.run("virsh", "define", str(path))
    for name in VMS:
        ctx.vfalloc("request", name, "--pool", POOL)

    ctx.say("Start two with plain virsh: the hook leases a VF at start and hot-plugs it.")
    for name in VMS[:2]:
        ctx.run("virsh", "start", "--paused", name)
    ctx.say("Start the third with vfalloc: the VF is in QEMU from its first instruction, and\n"
            "its saved config keeps only the request.")
    ctx.vfalloc("start", VMS[2], "--paused")
    with ctx.behind_the_scenes("waiting for the hot-plugs to finish"):
        ctx.wait_for("the hot-plugs", lambda: hot_plugged(VMS[:2]), timeout=120, interval=1)

    ctx.say("Who holds what:")
    ctx.vfalloc("list")
    ctx.run("virsh", "domiflist", VMS[0])

    ctx.say(f"Stop {VMS[1]}: its VF goes back to the pool (and to its host driver).")
    ctx.run("virsh", "destroy", VMS[1])
    ctx.vfalloc("list")
    ctx.vfalloc("pools")
    ctx.say("That is the whole loop: every start takes a free VF, every stop gives it back.")


def hot_plugged(names: tuple[str, ...]) -> bool:
    import json
    import subprocess

    proc = subprocess.run([str(VENV / "bin" / "vfalloc"), "list", "--json"], capture_output=True,
                          text=True, timeout=30)
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return False
    phases = {r["domain"]: r["phase"] for r in rows if r["domain"]}
    return all(phases.get(name) == "attached" for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--boot", type=int, default=1)
    args = parser.parse_args(argv)
    if "e2e.scenario=" not in Path("/proc/cmdline").read_text():
        print("session.py runs only inside the emulated host (make demo); refusing", file=sys.stderr)
        return 2
    transcript = args.results / "transcript.txt"
    ctx = Narrator(args.results, deadline=time.monotonic() + 900, show_times=False,
                   transcript=transcript)
    try:
        session(ctx)
    except StepFailed as e:
        ctx.muted = False
        ctx.log(f"\ndemo failed: {e}")
        (args.results / "failed").write_text(str(e) + "\n")
        return 1
    (args.results / "done").write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
