"""`vfalloc metrics`: read back with prometheus_client's own parser and compared with what
`vfalloc list --json` says of the same host; the hook's refusal and error counters kept across
hook processes; the textfile written whole by the command, refreshed by a detached process
after the hook changed something, and written by the boot unit's ExecStart lines."""

import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fakehost import i350, x710
from hookfiles import hook_file
from scrape import NOWHERE, families, samples
from test_hook import Hook, domain_xml

VFALLOC = [sys.executable, "-c", "from vfalloc.cli import run; run()"]


@pytest.fixture
def host(scratch, tmp_path):
    """An I350-T4 in three pools (some VFs in none) plus an X710 in no pool; libvirt's status
    directory empty and libvirt itself unreachable, so running domains are judged the same way
    by every command (fresh leases count as running for 300 s, stale.RUNDIR_GRACE)."""
    i350(scratch.fs)
    x710(scratch.fs, numvfs=4)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0", "enp1s0f1#0-1"]\n'
                         '[pools.san]\npfs = ["enp1s0f2#0"]\nvlan = 20\n'
                         '[pools.qat]\npfs = ["enp1s0f3"]\n'
                         '[pools.empty]\npfs = ["ens2f1#5-6"]\n')
    rundir = tmp_path / "libvirt-run"
    rundir.mkdir()
    os.environ["VFALLOC_LIBVIRT_RUN"] = str(rundir)
    hook = Hook(scratch, tmp_path)
    hook.env["VFALLOC_LIBVIRT_RUN"] = str(rundir)
    yield hook
    os.environ.pop("VFALLOC_LIBVIRT_RUN", None)


def lived_in(hook, scratch) -> None:
    """Leases in every state a row can have: leased, stale from an earlier boot, stale on a VF
    that is gone; a refused start and a failed release."""
    ok = hook.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/><vfalloc:vf pool="qat"/>'))
    assert ok.returncode == 0, ok.stderr
    scratch.set_boot_id("99999999-2222-3333-4444-555555555555")  # vm1's leases are from an earlier boot now
    for n, pool in ((2, "lan0"), (3, "san")):
        r = hook.run(f"vm{n}", "prepare", "begin", xml=domain_xml(n, f'<vfalloc:vf pool="{pool}"/>'))
        assert r.returncode == 0, r.stderr
    refused = hook.run("vm4", "prepare", "begin", xml=domain_xml(4, '<vfalloc:vf pool="san"/>'))
    assert refused.returncode == 1 and b"no free VF in pool san" in refused.stderr
    bad = hook.run("vm5", "release", "end", xml="<domain><name>vm5</name><metadata>"
                   "<vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'/></metadata></domain>")
    assert bad.returncode == 0 and bad.stderr  # an error, not a refusal: release cannot refuse
    scratch.fs.set_vfs("0000:01:00.3", 0, vf_device="1520")  # qat's VF under vm1's lease is gone


def test_pool_counts_are_those_of_list_json(host, scratch):
    lived_in(host, scratch)
    listed = json.loads(scratch.run("list", "--json", *NOWHERE).out)
    result = scratch.run("metrics", *NOWHERE)
    assert result.code == 0, result.err
    parsed = families(result.out)
    assert parsed["vfalloc_pool_vfs"][0] == "gauge"
    got = {(s["pool"], s["state"]): v for s, v in samples(parsed, "vfalloc_pool_vfs")}
    want = Counter((r["pool"], r["state"]) for r in listed if r["pool"] is not None)
    pools = {"lan0", "san", "qat", "empty"}
    assert {p for p, _ in got} == pools
    for pool in pools:
        for state in ("free", "leased", "stale"):
            assert got[(pool, state)] == want[(pool, state)], (pool, state)
    # what the scenario built, so the comparison above is not one of zeros
    assert (got[("lan0", "leased")], got[("lan0", "stale")], got[("qat", "stale")], got[("san", "free")]) == (1, 1, 1, 0)
    assert got[("empty", "free")] == 0  # a pool whose VFs do not exist yet is listed all the same
    unpooled = {(s["pf_netdev"], s["state"]): v for s, v in samples(parsed, "vfalloc_unpooled_vfs")}
    assert unpooled == Counter((r["pf_netdev"], r["state"]) for r in listed if r["pool"] is None)
    assert unpooled[("enp1s0f1", "unusable")] == 5 and unpooled[("ens2f0", "unusable")] == 4


def test_pf_vfs_and_totalvfs(host, scratch):
    lived_in(host, scratch)
    parsed = families(scratch.run("metrics", *NOWHERE).out)
    created = {(s["pf"], s["pf_netdev"]): v for s, v in samples(parsed, "vfalloc_pf_vfs")}
    total = {(s["pf"], s["pf_netdev"]): v for s, v in samples(parsed, "vfalloc_pf_totalvfs")}
    sysfs = scratch.sysfs / "bus" / "pci" / "devices"
    for pf, netdev in created:
        assert created[(pf, netdev)] == int((sysfs / pf / "sriov_numvfs").read_text())
        assert total[(pf, netdev)] == int((sysfs / pf / "sriov_totalvfs").read_text())
    assert created[("0000:01:00.3", "enp1s0f3")] == 0 and total[("0000:3b:00.0", "ens2f0")] == 64
    assert len(created) == 6


def test_lease_ages(host, scratch):
    lived_in(host, scratch)
    before = time.time()
    parsed = families(scratch.run("metrics", *NOWHERE).out)
    leases = json.loads(scratch.state.read_text())["leases"]
    starts = {s["vf"]: (s, v) for s, v in samples(parsed, "vfalloc_lease_start_time_seconds")}
    ages = {s["vf"]: v for s, v in samples(parsed, "vfalloc_lease_age_seconds")}
    made = samples(parsed, "vfalloc_metrics_time_seconds")[0][1]
    assert set(starts) == {x["vf"] for x in leases} and len(leases) == 4
    listed = {r["vf"]: r for r in json.loads(scratch.run("list", "--json", *NOWHERE).out)}
    for lease in leases:
        labels, start = starts[lease["vf"]]
        assert labels["domain"] == lease["domain"] and labels["pool"] == lease["pool"]
        assert labels["state"] == listed[lease["vf"]]["state"]
        assert 0 <= before - start < 600 and ages[lease["vf"]] == pytest.approx(made - start, abs=0.01)


def test_hook_refusals_and_errors_counted_across_hook_processes(host, scratch):
    lived_in(host, scratch)
    for n in (6, 7):  # two more refusals in pool san, from processes of their own
        r = host.run(f"vm{n}", "prepare", "begin", xml=domain_xml(n, '<vfalloc:vf pool="san"/>'))
        assert r.returncode == 1
    r = host.run("vm8", "prepare", "begin", xml=domain_xml(8, '<vfalloc:vf pool="nosuch"/>'))
    assert r.returncode == 1 and b"no pool named nosuch" in r.stderr
    parsed = families(scratch.run("metrics", *NOWHERE).out)
    assert parsed["vfalloc_hook_refusals"][0] == "counter"  # the parser drops the _total of a counter
    refused = {(s["pool"], s["operation"]): v for s, v in samples(parsed, "vfalloc_hook_refusals")}
    failed = {(s["pool"], s["operation"]): v for s, v in samples(parsed, "vfalloc_hook_errors")}
    assert refused == {("san", "prepare"): 3, ("(unknown)", "prepare"): 1}  # nosuch: no pool of the config
    assert failed == {("(unknown)", "release"): 1}  # an XML without a UUID: no pool read


def test_a_successful_start_touches_no_counter(host, scratch):
    r = host.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert r.returncode == 0
    assert not (scratch.run_dir / "hook-counts.json").exists()
    parsed = families(scratch.run("metrics", *NOWHERE).out)
    assert samples(parsed, "vfalloc_hook_refusals") == [] and samples(parsed, "vfalloc_hook_errors") == []


def test_racing_refusals_lose_no_count(host, scratch):
    """Twelve hooks refused at the same moment: the flock'd read-modify-write keeps every one."""
    lived_in(host, scratch)
    procs = [subprocess.Popen([hook_file(), f"r{n}", "prepare", "begin", "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=host.env) for n in range(12)]
    for n, proc in enumerate(procs):
        proc.communicate(domain_xml(100 + n, '<vfalloc:vf pool="san"/>').encode(), timeout=120)
        assert proc.returncode == 1
    counts = json.loads((scratch.run_dir / "hook-counts.json").read_text())["counts"]
    assert {(c["kind"], c["pool"], c["operation"]): c["count"] for c in counts}[("refused", "san", "prepare")] == 13


def test_damaged_counts_are_an_error_for_metrics_and_a_reset_for_the_hook(host, scratch):
    lived_in(host, scratch)
    counts = scratch.run_dir / "hook-counts.json"
    counts.write_text("{not json")
    result = scratch.run("metrics", *NOWHERE)
    assert result.code == 1 and result.out == ""
    assert result.err.strip() == (f"vfalloc: the hook's counts {counts} are damaged; remove the file (the counters "
                                  "start again from 0, which Prometheus takes as a reset)")
    assert counts.read_text() == "{not json"
    r = host.run("vm9", "prepare", "begin", xml=domain_xml(9, '<vfalloc:vf pool="san"/>'))
    assert r.returncode == 1
    assert "hook-counts.json was damaged or not vfalloc's; its counters start again from 0" in host.log.read_text()
    parsed = families(scratch.run("metrics", *NOWHERE).out)
    assert {(s["pool"], s["operation"]): v for s, v in samples(parsed, "vfalloc_hook_refusals")} == {("san", "prepare"): 1}


def test_textfile_written_whole_and_unchanged_host_same_bytes(host, scratch, tmp_path):
    lived_in(host, scratch)
    target = tmp_path / "textfile" / "vfalloc.prom"
    target.parent.mkdir()
    run = subprocess.run([*VFALLOC, "metrics", "--textfile", str(target), *NOWHERE], env=scratch.env(),
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["vfalloc.prom"]  # no temp file left
    first = target.read_text()
    assert families(first)["vfalloc_pool_vfs"]
    printed = scratch.run("metrics", *NOWHERE).out
    strip = [line for line in printed.splitlines() if "time_seconds" not in line and "age_seconds" not in line]
    assert strip == [line for line in first.splitlines() if "time_seconds" not in line and "age_seconds" not in line]


@pytest.mark.parametrize("path, message", [
    ("relative.prom", "--textfile 'relative.prom' must be an absolute path"),
    ("/nonexistent-dir/vfalloc.prom", "cannot write the metrics textfile /nonexistent-dir/vfalloc.prom (No such "
                                      "file or directory); create its directory or choose another --textfile / "
                                      "metrics_textfile"),
], ids=["relative", "no-directory"])
def test_textfile_refusals(host, scratch, path, message):
    result = scratch.run("metrics", "--textfile", path, *NOWHERE)
    assert result.code != 0 and result.err.strip() == f"vfalloc: {message}"


def wait_for_file(path: Path, check, what: str, bound: float = 120.0) -> str:
    """Poll for a file the detached refresher writes; the bound is only a backstop (no CPU
    figure is tuned into it): the refresher is one Python process."""
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if path.exists():
            text = path.read_text()
            if check(text):
                return text
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {bound:.0f} s")


def test_hook_keeps_the_textfile_current(host, scratch, tmp_path):
    """With [settings] metrics_textfile, each change the hook makes is in the textfile soon after,
    written by the detached refresher (the hook itself renders nothing)."""
    target = tmp_path / "node-exporter" / "vfalloc.prom"
    target.parent.mkdir()
    scratch.write_config(scratch.config.read_text().replace("[pools.lan0]", f'[settings]\nmetrics_textfile = "{target}"\n\n[pools.lan0]', 1))

    def leased(n: int):
        return lambda text: {(s["pool"], s["state"]): v for s, v in samples(families(text), "vfalloc_pool_vfs")}[("lan0", "leased")] == n

    r = host.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert r.returncode == 0 and r.stderr == b""
    wait_for_file(target, leased(1), "vm1's lease in the textfile")
    r = host.run("vm1", "release", "end", "destroyed", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert r.returncode == 0
    wait_for_file(target, leased(0), "the release in the textfile")
    refused = host.run("vm2", "prepare", "begin", xml=domain_xml(2, '<vfalloc:vf pool="nosuch"/>'))
    assert refused.returncode == 1
    text = wait_for_file(target, lambda t: samples(families(t), "vfalloc_hook_refusals"), "the refusal in the textfile")
    assert samples(families(text), "vfalloc_hook_refusals") == [({"pool": "(unknown)", "operation": "prepare"}, 1.0)]
    assert not (scratch.run_dir / "metrics.pending").exists() or wait_for_file(
        target, lambda t: not (scratch.run_dir / "metrics.pending").exists(), "the refresher to finish")


def test_boot_unit_writes_the_textfile(host, scratch, tmp_path):
    """`host persist` puts `vfalloc metrics --offline --textfile` after the numvfs lines; run as
    systemd runs ExecStart lines, they create the VFs and then write the textfile."""
    target = tmp_path / "vfalloc.prom"
    scratch.write_config(scratch.config.read_text().replace("[pools.lan0]", f'[settings]\nmetrics_textfile = "{target}"\n\n[pools.lan0]\nnumvfs = 3', 1))
    exe = tmp_path / "bin" / "vfalloc"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\nfrom vfalloc.cli import run\nrun()\n")
    exe.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    result = scratch.run("host", "persist", "--root", str(root), "--exec", str(exe))
    assert result.code == 0, result.err
    unit = (root / "etc/systemd/system/vfalloc-numvfs.service").read_text()
    execs = [shlex.split(line.removeprefix("ExecStart=")) for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs[-1] == [str(exe), "metrics", "--offline", "--textfile", str(target), "--config", str(scratch.config)]
    assert all(argv[1:3] == ["host", "numvfs"] for argv in execs[:-1]) and len(execs) == 3
    env = {k: v for k, v in scratch.env().items() if k not in ("VFALLOC_CONFIG", "VFALLOC_STATE")}
    for argv in execs[-1:]:  # the fake sysfs cannot create VFs; the metrics line is the one under test
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert families(target.read_text())["vfalloc_pool_vfs"]


def test_no_textfile_line_without_the_setting(host, scratch, tmp_path):
    scratch.write_config(scratch.config.read_text().replace("[pools.lan0]", "[pools.lan0]\nnumvfs = 3", 1))
    root = tmp_path / "root"
    root.mkdir()
    assert scratch.run("host", "persist", "--root", str(root), "--exec", "/usr/bin/vfalloc").code == 0
    assert " metrics " not in (root / "etc/systemd/system/vfalloc-numvfs.service").read_text()


def test_label_values_escaped():
    from vfalloc.metrics.exposition import Family

    family = Family("x", "gauge", "help with \\ and\nnewline")
    family.add(1, pool='a"b\\c\nd')
    text = family.render()
    parsed = families(text)
    assert parsed["x"][1] == [({"pool": 'a"b\\c\nd'}, 1.0)]


def test_commands_that_change_leases_refresh_the_textfile(host, scratch, tmp_path):
    """`vfalloc alloc` and `vfalloc release` (and gc, host numvfs) have the textfile rendered
    anew, with the flags they were given (here --config, --state and --sysfs-root only)."""
    target = tmp_path / "vfalloc.prom"
    scratch.write_config(scratch.config.read_text().replace("[pools.lan0]", f'[settings]\nmetrics_textfile = "{target}"\n\n[pools.lan0]', 1))

    def leased(n: int):
        return lambda text: {(s["pool"], s["state"]): v for s, v in samples(families(text), "vfalloc_pool_vfs")}[("san", "leased")] == n

    env = {k: v for k, v in scratch.env().items() if k not in ("VFALLOC_CONFIG", "VFALLOC_STATE", "VFALLOC_SYSFS_ROOT")}
    flags = scratch.flags()
    uuid = "00000000-0000-0000-0000-000000000042"
    done = subprocess.run([*VFALLOC, "alloc", *flags, "--domain", "vm42", "--uuid", uuid, "--pool", "san"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    wait_for_file(target, leased(1), "the lease of `vfalloc alloc` in the textfile")
    done = subprocess.run([*VFALLOC, "release", *flags, "--uuid", uuid], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    wait_for_file(target, leased(0), "the release in the textfile")


PLANTED = {
    "fifo": lambda path: os.mkfifo(path),
    "symlink": lambda path: path.symlink_to(path.parent.parent / "elsewhere"),
    "directory": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("what", PLANTED, ids=list(PLANTED))
def test_a_planted_refresh_mark_neither_holds_the_hook_nor_is_followed(host, scratch, tmp_path, what):
    """metrics.pending is opened without blocking and never through a link: a FIFO there used to
    hold the hook (and every start of the host) until someone read it."""
    target = tmp_path / "vfalloc.prom"
    scratch.write_config(scratch.config.read_text().replace("[pools.lan0]", f'[settings]\nmetrics_textfile = "{target}"\n\n[pools.lan0]', 1))
    scratch.run_dir.mkdir(parents=True, mode=0o700)
    PLANTED[what](scratch.run_dir / "metrics.pending")
    r = host.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert (r.returncode, r.stderr) == (0, b"")
    assert "metrics: cannot start the metrics refresh" in host.log.read_text()
    assert not (tmp_path / "elsewhere").exists()


def test_no_refresh_mark_in_a_runtime_directory_others_may_write(host, scratch, tmp_path):
    target = tmp_path / "vfalloc.prom"
    scratch.write_config(scratch.config.read_text().replace("[pools.lan0]", f'[settings]\nmetrics_textfile = "{target}"\n\n[pools.lan0]', 1))
    scratch.run_dir.mkdir(parents=True)
    scratch.run_dir.chmod(0o777)
    r = host.run("vm1", "prepare", "begin", xml=domain_xml(1, '<vfalloc:vf pool="lan0"/>'))
    assert (r.returncode, r.stderr) == (0, b"")
    assert list(scratch.run_dir.iterdir()) == []
    assert f"the runtime directory is not used: {scratch.run_dir} has mode 0777" in host.log.read_text()


def _fifo_counts(run: Path) -> None:
    run.mkdir(parents=True, mode=0o700)
    os.mkfifo(run / "hook-counts.json")


def _open_run_dir(run: Path) -> None:
    run.mkdir(parents=True)
    run.chmod(0o777)
    (run / "hook-counts.json").write_text('{"version": 1, "counts": []}')


COUNTS_PLANTED = {
    "fifo": (_fifo_counts, "are not a regular file; remove it"),
    "run-dir-0777": (_open_run_dir, "the hook's counts are not kept: "),
}


@pytest.mark.parametrize("what", COUNTS_PLANTED, ids=list(COUNTS_PLANTED))
def test_metrics_never_waits_for_or_trusts_planted_counts(host, scratch, what):
    make, said = COUNTS_PLANTED[what]
    make(scratch.run_dir)
    result = scratch.run("metrics", *NOWHERE)
    assert result.code != 0 and result.err.count("\n") == 1 and said in result.err, result.err
    if what == "fifo":  # and a refused start, which counts itself, is not held by it either
        refused = host.run("vm9", "prepare", "begin", xml=domain_xml(9, '<vfalloc:vf pool="nosuch"/>'))
        assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1
