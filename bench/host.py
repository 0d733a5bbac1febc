"""What a VM start costs on the emulated SR-IOV host, with and without vfalloc, beside libvirt's
own hostdev network (`make bench-host`, or `bench/run.py --host`).

Boots the e2e rig (tests/e2e/rig.py: a QEMU VM with two emulated Intel 82576 PFs, an IOMMU and
libvirt inside) with bench/host_inside.py in place of the e2e scenario, and prints, for each
kind of start, the median and the spread (lowest-highest) of its rounds and the two ratios the
project aims at: b/a (the hook on a start that asks for no VF; target <= 1.05) and d/e
(`vfalloc start` against libvirt's own allocation; target <= 1.10). Nothing is asserted.
Needs what the e2e rig needs (root, tools/setup-debian's packages, the project's .venv).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

import rig  # noqa: E402

WORK_DIR = Path(os.environ.get("VFALLOC_BENCH_WORKDIR", "/var/tmp/vfalloc-bench-host"))
LABELS = {
    "a": "a  virsh start --paused, no VF, no hook",
    "b": "b  the same, vfalloc's hook installed",
    "c_running": "c  VF asked for, virsh start: running",
    "c_attached": "c  VF asked for, virsh start: VF attached",
    "d": "d  VF asked for, vfalloc start",
    "e": "e  libvirt's hostdev network (interface type=network)",
    "hook_a": "the hook file's 3 calls of a's start, run alone",
}
TARGETS = {"b/a": ("b", "a", 1.05), "d/e": ("d", "e", 1.10)}


# (e) needs libvirt's network driver, which Debian packages apart (libvirt-daemon-driver-network,
# of the installed libvirt's version), and that driver refuses to start without a firewall
# backend: nft (libvirt 11.3, src/network/bridge_driver_conf.c, virNetworkLoadDriverConfig), even
# for a hostdev network, which has no firewall rules. This machine may have neither.
NETWORK_PACKAGES = ("libvirt-daemon-driver-network", "nftables", "libnftables1", "libnftnl11")


def network_packages() -> list[str]:
    """The Debian packages of NETWORK_PACKAGES, fetched once into the work dir with `apt-get
    download`. host_inside.py unpacks them into the emulated host's throwaway root (a tmpfs
    overlay): nothing is installed on this machine."""
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libvirt-daemon"], capture_output=True,
                             text=True).stdout.strip()
    if not version:
        raise SystemExit("bench-host: libvirt-daemon is not installed (run tools/setup-debian)")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    debs = []
    for name in NETWORK_PACKAGES:
        found = sorted(WORK_DIR.glob(f"{name}_*.deb"))
        if not found:
            wanted = f"{name}={version}" if name.startswith("libvirt") else name
            done = subprocess.run(["apt-get", "download", wanted], cwd=WORK_DIR, capture_output=True, text=True)
            found = sorted(WORK_DIR.glob(f"{name}_*.deb"))
            if done.returncode != 0 or not found:
                raise SystemExit(f"bench-host: cannot fetch {wanted}: {done.stderr.strip() or 'no package written'}")
        debs.append(str(found[-1]))
    return debs


def boot(rounds: int, timeout_s: float) -> dict:
    """Run the rig once with bench/host_inside.py; its results (bench-host.json)."""
    params = {"rounds": rounds, "packages": network_packages()}
    config = rig.RigConfig(kernel=rig.default_config().kernel, work_dir=WORK_DIR, timeout_s=timeout_s,
                           scenario=HERE / "host_inside.py",
                           # the e2e runs' capability cache spares libvirtd ~25 s of probing
                           libvirt_cache=rig.DEFAULT_LIBVIRT_CACHE)

    def progress(line: str) -> None:
        if line.startswith("e2e rig: boot"):  # the results dir is fresh from here on
            (config.results_dir / "params.json").write_text(json.dumps(params))
        print(line, file=sys.stderr, flush=True)

    run = rig.run_rig(config, on_line=progress)
    path = config.results_dir / "bench-host.json"
    if not path.exists():
        raise SystemExit(f"bench-host: the emulated host left no {path}: {run.describe_boot()}\n"
                         f"console tail:\n{run.console_tail()}")
    result = json.loads(path.read_text())
    if not result.get("ok"):
        raise SystemExit(f"bench-host: {result.get('error')} (log: {config.results_dir / 'bench-host.log'})")
    result["boot_s"] = round(run.last_boot.seconds, 1)
    return result


def summarize(result: dict) -> dict:
    samples = result["samples"]
    rows = {k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3),
                "n": len(v)} for k, v in samples.items()}
    ratios = {name: {"ratio": round(rows[x]["median_s"] / rows[y]["median_s"], 3), "target": target}
              for name, (x, y, target) in TARGETS.items()}
    if "hook_a" in rows:  # b/a as the hook's own cost makes it, free of the starts' noise
        added = (rows["a"]["median_s"] + rows["hook_a"]["median_s"]) / rows["a"]["median_s"]
        ratios["b/a, from the hook's own cost ((a + hook) / a)"] = {"ratio": round(added, 3), "target": TARGETS["b/a"][2]}
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "rounds": result["rounds"], "rows": rows, "ratios": ratios, "rig_wall_s": result.get("boot_s")}


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"


def format_table(summary: dict) -> str:
    lines = [f"VM starts on the emulated SR-IOV host ({summary['rounds']} each; {summary['date']}; "
             f"{summary['machine']}), seconds: median (lowest-highest)"]
    for key, label in LABELS.items():
        r = summary["rows"][key]
        lines.append(f"  {label:<56} {r['median_s']:7.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})")
    for name, r in summary["ratios"].items():
        verdict = "met" if r["ratio"] <= r["target"] else "MISSED"
        lines.append(f"  {name}: {r['ratio']:.3f} (target <= {r['target']:.2f}: {verdict})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="starts of each kind (default 7)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before QEMU is killed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    missing = rig.missing_prerequisites()
    if missing:
        print("bench-host: the emulated host cannot boot here:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    summary = summarize(boot(args.rounds, args.timeout))
    print(json.dumps(summary, indent=1) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
