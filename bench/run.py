"""vfalloc benchmarks: ratios measured in one run on this machine (`make bench`).

- hook `prepare begin` + `release end` as libvirt runs them, on fake hosts of 8, 128 and 1,024
  VFs, against the floor `python -c "import lxml.etree"` (the least a Python hook using lxml
  can cost), and against bench/lean_hook.py, the same job's I/O with nothing around it;
- in-process allocation at 1,024 VFs;
- `vfalloc list` and `vfalloc pools`, for people and `--json`, at 1,024 and 4,096 VFs, against
  the floor and against bench/lean_list.py, which reads the same sysfs and does nothing else
  (the limit: what the listing's own I/O costs);
- 64 hook processes started at once for 64 domains, against the same 64 run one after another:
  how many were served, whether a VF went to two domains;
- the hook's `prepare begin`, `started begin` and `release end` for a guest without VFs: on a
  bridge over an SR-IOV PF (its FDB entry added and removed; /bin/true stands in for iproute2's
  `bridge`), on a bridge without one (libvirt's NAT network), and with no such interface;
- the hook with `metrics_textfile` set, beside the hook without it;
- with --host, VM starts on the emulated SR-IOV host (bench/host.py).

Nothing here asserts a time: it prints figures and ratios (and `--json` for scripts).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fakes"))

from fakehost import FakeSys, big_host  # noqa: E402
from hookfiles import hook_file  # noqa: E402

PY = sys.executable


HOOK = [hook_file()]
LEAN = [PY, "-I", str(REPO / "bench" / "lean_hook.py")]
LEAN_LIST = [PY, "-I", str(REPO / "bench" / "lean_list.py")]
FLOOR = [PY, "-I", "-c", "import lxml.etree"]
VFALLOC = str(Path(PY).with_name("vfalloc"))
# What `vfalloc list` and `vfalloc pools` are timed at, beside the floor and the limit reading
# sysfs alone sets (bench/lean_list.py); the names are the keys of the results.
LISTINGS = {"list": ["list"], "list_json": ["list", "--json"], "pools": ["pools"], "pools_json": ["pools", "--json"]}
LIST_HOSTS = (1024, 4096)
LIST_LEASES = 32  # domains holding a VF by hand (`vfalloc alloc`) while the listings are timed


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def domain_xml(n: int) -> bytes:
    return (f"<domain type='kvm'><name>vm{n}</name><uuid>{uuid(n)}</uuid><metadata>"
            "<vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'><vfalloc:vf pool='all'/></vfalloc:vfs></metadata>"
            "<memory unit='KiB'>1048576</memory><vcpu>2</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>").encode()


class FakeHost:
    def __init__(self, base: Path, vfs: int) -> None:
        self.base = base
        fs = FakeSys(base / "sys")
        names = big_host(fs, vfs)
        proc = base / "proc" / "sys" / "kernel" / "random"
        proc.mkdir(parents=True)
        (proc / "boot_id").write_text("5f1e0ad8-0000-4000-8000-000000000000\n")
        self.config = base / "vfalloc.toml"
        self.config.write_text("[pools.all]\npfs = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
        self.env = {**os.environ, "VFALLOC_SYSFS_ROOT": str(base / "sys"), "VFALLOC_STATE": str(base / "state.json"),
                    "VFALLOC_PROC_ROOT": str(base / "proc"), "VFALLOC_CONFIG": str(self.config),
                    "VFALLOC_RUN_DIR": str(base / "run")}
        for key in ("VFALLOC_HOOK_LOG",):
            self.env.pop(key, None)
        self.lean_env = {**self.env, "VFALLOC_STATE": str(base / "lean-state.json")}
        # the same hook keeping a node_exporter textfile current (a detached refresher renders it)
        self.textfile = base / "vfalloc.prom"
        self.textfile_env = {**self.env, "VFALLOC_STATE": str(base / "textfile-state.json"),
                             "VFALLOC_RUN_DIR": str(base / "textfile-run"),
                             "VFALLOC_METRICS_TEXTFILE": str(self.textfile)}


def timed(cmd: list[str], env: dict, stdin: bytes = b"") -> float:
    return measured(cmd, env, stdin)[0]


def measured(cmd: list[str], env: dict, stdin: bytes = b"") -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds (user + system) of one run of `cmd`. The CPU time is
    the rise of this process's reaped children's, so callers run one command at a time. On a
    busy machine the CPU time says more than the wall clock, which counts the neighbours too."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, input=stdin, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {done.stderr.decode().strip()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def hook_cycle(host: FakeHost, rounds: int) -> dict[str, list[float]]:
    """Interleaved so that machine noise hits floor, hook and yardstick alike."""
    runs: dict[str, list[float]] = {k: [] for k in ("floor", "prepare", "release", "lean_prepare", "lean_release",
                                                    "textfile_prepare", "textfile_release")}
    xml = domain_xml(1)
    for _ in range(rounds):
        runs["floor"].append(timed([PY, "-I", "-c", "import lxml.etree"], host.env))
        runs["prepare"].append(timed([*HOOK, "vm1", "prepare", "begin", "-"], host.env, xml))
        runs["release"].append(timed([*HOOK, "vm1", "release", "end", "destroyed"], host.env, xml))
        runs["lean_prepare"].append(timed([*LEAN, "vm1", "prepare", "begin", "-"], host.lean_env, xml))
        runs["lean_release"].append(timed([*LEAN, "vm1", "release", "end", "destroyed"], host.lean_env, xml))
        runs["textfile_prepare"].append(timed([*HOOK, "vm1", "prepare", "begin", "-"], host.textfile_env, xml))
        runs["textfile_release"].append(timed([*HOOK, "vm1", "release", "end", "destroyed"], host.textfile_env, xml))
    deadline = time.monotonic() + 120  # the detached refresher writes it after the hooks are gone
    while not host.textfile.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the hook with metrics_textfile got no {host.textfile} written")
        time.sleep(0.1)
    return runs


def in_process_allocation(host: FakeHost, rounds: int) -> float:
    os.environ.update(host.env)
    from vfalloc.hook import main

    samples = []
    for n in range(rounds):
        xml = domain_xml(1000 + n)
        start = time.perf_counter()
        main([f"vm{1000 + n}", "prepare", "begin", "-"], io.BytesIO(xml), io.StringIO(), io.StringIO())
        samples.append(time.perf_counter() - start)
        main([f"vm{1000 + n}", "release", "end", "-"], io.BytesIO(xml), io.StringIO(), io.StringIO())
    return statistics.median(samples)


def in_use(host: FakeHost, count: int) -> None:
    """The host as a host where VMs have started: the hook ran (and kept the config's parse in
    the runtime directory, vfalloc.config_cache, which the listings use too), and `count`
    domains hold a VF each, so that the listings show holders, not only free VFs."""
    timed([*HOOK, "vm0", "prepare", "begin", "-"], host.env, domain_xml(0))
    timed([*HOOK, "vm0", "release", "end", "-"], host.env, domain_xml(0))
    for n in range(count):
        timed([VFALLOC, "alloc", "--domain", f"held{n}", "--uuid", uuid(900000 + n), "--pool", "all"], host.env)


def list_cycle(host: FakeHost, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Interleaved, as hook_cycle: the floor, sysfs read alone, and each listing; (wall, CPU)
    seconds of each run."""
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("floor", "sysfs", *LISTINGS)}
    for _ in range(rounds):
        runs["floor"].append(measured(FLOOR, host.env))
        runs["sysfs"].append(measured(LEAN_LIST, host.env))
        for key, argv in LISTINGS.items():
            runs[key].append(measured([VFALLOC, *argv], host.env))
    return runs


def summary(samples: list[tuple[float, float]], floor: list[tuple[float, float]]) -> dict:
    """Median and spread (lowest, highest) of the wall clock in ms, and the medians' ratios to
    the floor's, of the wall clock and of the CPU time."""
    wall = [w for w, _ in samples]
    cpu = [c for _, c in samples]
    median = statistics.median(wall)
    return {"ms": round(median * 1000, 1), "min_ms": round(min(wall) * 1000, 1),
            "max_ms": round(max(wall) * 1000, 1),
            "ratio": round(median / statistics.median(w for w, _ in floor), 2),
            "cpu_ms": round(statistics.median(cpu) * 1000, 1),
            "cpu_ratio": round(statistics.median(cpu) / statistics.median(c for _, c in floor), 2)}


def burst(host: FakeHost, count: int) -> dict:
    """`count` hooks' `prepare begin` at once, for `count` domains, then the same one after
    another: how many were served, whether a VF went to two domains, and the times."""
    def one(n: int) -> subprocess.CompletedProcess:
        return subprocess.run([*HOOK, f"vm{n}", "prepare", "begin", "-"], input=domain_xml(n), env=host.env,
                              capture_output=True)

    def release_all() -> None:
        for n in range(count):
            subprocess.run([*HOOK, f"vm{n}", "release", "end", "-"], input=domain_xml(n), env=host.env,
                           capture_output=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        done = list(pool.map(one, range(count)))
    parallel = time.perf_counter() - start
    leases = json.loads(Path(host.env["VFALLOC_STATE"]).read_text())["leases"]
    vfs = [lease["vf"] for lease in leases]
    refusals = [p.stderr.decode().strip() for p in done if p.returncode != 0]
    release_all()
    start = time.perf_counter()
    for n in range(count):
        one(n)
    sequential = time.perf_counter() - start
    release_all()
    return {"parallel_s": round(parallel, 2), "sequential_s": round(sequential, 2),
            "ratio": round(parallel / sequential, 2), "served": count - len(refusals),
            "doubled": len(vfs) - len(set(vfs)), "refusals": refusals}


def bridged_xml(n: int, kind: str, bridge: str) -> bytes:
    """A guest without VFs as libvirt 11.3 writes its live XML (single quotes, <target dev>)."""
    nic = "" if kind == "none" else (
        f"<interface type='{kind}'><mac address='52:54:00:00:10:{n:02x}'/>"
        + (f"<source bridge='{bridge}'/>" if kind == "bridge" else
           f"<source network='default' portid='8f1ac7cb-9d67-4f4a-a13a-7d4b1d1c4d4e' bridge='{bridge}'/>")
        + f"<target dev='vnet{n}'/><model type='virtio'/><alias name='net0'/></interface>")
    return (f"<domain type='kvm' id='{n}'><name>vm{n}</name><uuid>{uuid(n)}</uuid><memory unit='KiB'>1048576</memory>"
            "<vcpu>2</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
            f"<emulator>/usr/bin/qemu-system-x86_64</emulator>{nic}</devices></domain>").encode()


def check_book(base: Path, case: str) -> None:
    """After `started begin`: the guest over the PF has its entry recorded, the others none."""
    path = base / "fdb.json"
    macs = [e["mac"] for e in json.loads(path.read_text())["entries"]] if path.exists() else []
    want = ["52:54:00:00:10:01"] if case == "pf_bridge" else []
    if macs != want:
        raise SystemExit(f"bench: after started begin of {case} vfalloc recorded {macs}, expected {want}")


def bridged_cycle(base: Path, rounds: int) -> dict[str, float]:
    """prepare/started/release of guests without VFs, interleaved with the floor (medians, ms)."""
    host = FakeHost(base, 8)
    fs = FakeSys(base / "sys")
    fs.set_mac("ens0f0", "a0:36:9f:00:00:00")
    for n in range(4):
        fs.virtual_netdev(f"vnet{n}", f"fe:54:00:00:00:{n:02x}")
    fs.linux_bridge("br0", "02:00:00:00:b0:00", ["ens0f0", "vnet0"])
    fs.linux_bridge("virbr0", "52:54:00:aa:aa:aa", ["vnet1", "vnet2", "vnet3"])
    env = {**host.env, "VFALLOC_BRIDGE": "/bin/true"}
    cases = {"pf_bridge": bridged_xml(1, "bridge", "br0"), "nat_network": bridged_xml(2, "network", "virbr0"),
             "no_interface": bridged_xml(3, "none", "")}
    runs: dict[str, list[float]] = {"floor": []}
    for _ in range(rounds):
        runs["floor"].append(timed([PY, "-I", "-c", "import lxml.etree"], env))
        for case, xml in cases.items():
            for op, sub in (("prepare", "begin"), ("started", "begin"), ("release", "end")):
                runs.setdefault(f"{case}_{op}", []).append(timed([*HOOK, f"vm-{case}", op, sub, "-"], env, xml))
                if op == "started":
                    check_book(base, case)
    book = json.loads((base / "fdb.json").read_text())
    if book["entries"]:
        raise SystemExit(f"bench: the bridged guest's entries were not all removed: {book}")
    return {k: statistics.median(v) * 1000 for k, v in runs.items()}


LIST_LABELS = {"floor": 'floor: python -I -c "import lxml.etree"', "sysfs": "sysfs alone (bench/lean_list.py)",
               "list": "vfalloc list", "list_json": "vfalloc list --json", "pools": "vfalloc pools",
               "pools_json": "vfalloc pools --json"}


def format_listings(vfs: int, rows: dict) -> str:
    lines = [f"listings at {vfs} VFs ({LIST_LEASES} held): wall ms, median (lowest-highest), and its ratio to "
             f"the floor's; CPU ms, median, and its ratio to the floor's"]
    for key, label in LIST_LABELS.items():
        r = rows[key]
        lines.append(f"  {label:<42} {r['ms']:>7} ({r['min_ms']}-{r['max_ms']}) {r['ratio']:5.2f}x   "
                     f"CPU {r['cpu_ms']:>7} {r['cpu_ratio']:5.2f}x")
    return "\n".join(lines)


PARTS = ("hook", "alloc", "list", "bridged", "burst")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run only this part (repeatable; default: all of them)")
    parser.add_argument("--host", action="store_true",
                        help="also time VM starts on the emulated SR-IOV host (bench/host.py; boots the e2e rig, "
                             "needs root and tools/setup-debian's packages)")
    parser.add_argument("--host-rounds", type=int, default=7, help="starts of each kind on the emulated host")
    args = parser.parse_args(argv)
    parts = args.only or PARTS
    results: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vfalloc-bench-") as tmp:
        big = FakeHost(Path(tmp) / "h1024", 1024)
        if "hook" in parts:
            for n in (8, 128, 1024):
                host = big if n == 1024 else FakeHost(Path(tmp) / f"h{n}", n)
                ms = {k: statistics.median(v) * 1000 for k, v in hook_cycle(host, args.rounds).items()}
                results[f"hook_{n}"] = {**{f"{k}_ms": round(v, 1) for k, v in ms.items()},
                                        **{f"{k}_ratio": round(ms[k] / ms["floor"], 2)
                                           for k in ("prepare", "release", "lean_prepare", "lean_release",
                                                     "textfile_prepare", "textfile_release")}}
        if "alloc" in parts:
            results["alloc_1024_in_process_ms"] = round(in_process_allocation(big, args.rounds) * 1000, 2)
        if "list" in parts:
            for n in LIST_HOSTS:
                host = big if n == 1024 else FakeHost(Path(tmp) / f"h{n}", n)
                in_use(host, LIST_LEASES)
                runs = list_cycle(host, args.rounds)
                results[f"list_{n}"] = {k: summary(v, runs["floor"]) for k, v in runs.items()}
                for k in range(LIST_LEASES):
                    timed([VFALLOC, "release", "--uuid", uuid(900000 + k)], host.env)
        if "bridged" in parts:
            bridged = bridged_cycle(Path(tmp) / "bridged", args.rounds)
            results["bridged"] = {**{f"{k}_ms": round(v, 1) for k, v in bridged.items()},
                                  **{f"{k}_ratio": round(v / bridged["floor"], 2)
                                     for k, v in bridged.items() if k != "floor"}}
        if "burst" in parts:
            results["burst_64"] = burst(big, 64)
    if args.host:
        results["host"] = host_starts(args.host_rounds)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(format_results(results))
    return 0


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"


def format_results(results: dict) -> str:
    lines = [f"machine: {results['machine']}"]
    for n in (8, 128, 1024):
        h = results.get(f"hook_{n}")
        if h:
            lines.append(f"hook at {n:>5} VFs: floor {h['floor_ms']} ms, prepare begin {h['prepare_ms']} ms "
                         f"({h['prepare_ratio']}x), release end {h['release_ms']} ms ({h['release_ratio']}x); "
                         f"the job alone (lean_hook.py) {h['lean_prepare_ms']} / {h['lean_release_ms']} ms "
                         f"({h['lean_prepare_ratio']}x / {h['lean_release_ratio']}x); with metrics_textfile "
                         f"{h['textfile_prepare_ms']} / {h['textfile_release_ms']} ms "
                         f"({h['textfile_prepare_ratio']}x / {h['textfile_release_ratio']}x)")
    if "alloc_1024_in_process_ms" in results:
        lines.append(f"allocation at 1024 VFs, in process: {results['alloc_1024_in_process_ms']} ms")
    for n in LIST_HOSTS:
        if f"list_{n}" in results:
            lines.append(format_listings(n, results[f"list_{n}"]))
    g = results.get("bridged")
    if g:
        lines.append(f"guests without VFs (floor {g['floor_ms']} ms), prepare / started / release:")
        for case, what in (("pf_bridge", "on a bridge over an SR-IOV PF (entry added, removed)"),
                           ("nat_network", "on a bridge without one (libvirt's NAT network)"),
                           ("no_interface", "with no bridge, network or macvtap interface")):
            lines.append(f"  {what}: " + " / ".join(f"{g[f'{case}_{op}_ms']} ms ({g[f'{case}_{op}_ratio']}x)"
                                                  for op in ("prepare", "started", "release")))
    b = results.get("burst_64")
    if b:
        lines.append(f"64 hooks at once: {b['served']}/64 served, {b['doubled']} VF(s) held twice, in "
                     f"{b['parallel_s']} s vs {b['sequential_s']} s one after another ({b['ratio']}x)")
        lines.extend(f"  not served: {why}" for why in b["refusals"])
    if "host" in results:
        lines.append(_host_module().format_table(results["host"]))
    return "\n".join(lines)


def _host_module():
    spec = importlib.util.spec_from_file_location("bench_host", REPO / "bench" / "host.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_starts(rounds: int) -> dict:
    """bench/host.py's table: VM starts on the emulated SR-IOV host."""
    host = _host_module()
    missing = host.rig.missing_prerequisites()
    if missing:
        raise SystemExit("bench: --host: the emulated host cannot boot here: " + "; ".join(missing))
    return host.summarize(host.boot(rounds, timeout_s=3600))


if __name__ == "__main__":
    sys.exit(main())
