"""`make demo`: vfalloc on a machine without SR-IOV hardware.

Boots the emulated SR-IOV host of the e2e tests (tests/e2e/rig.py: a VM with two emulated Intel
82576 NICs and an IOMMU, libvirt inside) and prints, as it happens, the session demo/session.py
runs in it: the commands an admin types on a real host and their real output. Needs root (the
kernel image is readable by root only) and the packages of tools/setup-debian (`make demo`
installs them first).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

import rig  # noqa: E402

WORK_DIR = Path(os.environ.get("VFALLOC_DEMO_WORKDIR", "/var/tmp/vfalloc-demo"))
TIMEOUT_S = float(os.environ.get("VFALLOC_DEMO_TIMEOUT", "600"))


def main() -> int:
    missing = rig.missing_prerequisites()
    if missing:
        print("make demo: this machine cannot boot the emulated host:\n  " + "\n  ".join(missing),
              file=sys.stderr)
        return 2
    config = rig.RigConfig(
        kernel=rig.default_config().kernel, work_dir=WORK_DIR, timeout_s=TIMEOUT_S,
        scenario=HERE / "session.py",
        # the e2e runs' capability cache, if there is one, spares libvirtd ~25 s of probing
        libvirt_cache=rig.DEFAULT_LIBVIRT_CACHE,
    )
    print("Booting the emulated SR-IOV host (QEMU, no KVM: this takes a minute or two) ...",
          flush=True)
    transcript = config.results_dir / "transcript.txt"
    done = threading.Event()
    result: dict[str, rig.RigRun] = {}

    booting = threading.Event()  # set once the rig has cleared the last run's results

    def boot() -> None:
        try:
            result["run"] = rig.run_rig(config, on_line=lambda line: booting.set())
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=boot, daemon=True).start()
    follower = rig.ConsoleFollower(transcript, lambda line: print(line, flush=True), prefix="")
    while not done.wait(0.5):
        if booting.is_set():
            follower.poll()
    follower.poll()
    run = result.get("run")
    ok = run is not None and (config.results_dir / "done").exists() and run.last_boot.ok
    took = time.monotonic() - start
    if ok:
        print(f"\n(the emulated host booted, ran this and powered off in {took:.0f} s; "
              f"its logs are in {WORK_DIR})")
        return 0
    print(f"\nmake demo: the session did not finish ({took:.0f} s).", file=sys.stderr)
    if run is not None:
        print(run.describe_boot(), file=sys.stderr)
        print("console tail:\n" + run.console_tail(), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
