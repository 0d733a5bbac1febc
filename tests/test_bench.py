"""The benchmark's own parts work: the bench host serves the real hook, and the yardstick
(bench/lean_hook.py) really does the job it is compared for, so `make bench` compares like with
like. No time is asserted here; `make bench` measures."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("vfs", [8, 128], ids=["8-vfs", "128-vfs"])
def test_lean_hook_leases_a_free_vf_and_gives_it_back(bench, tmp_path, vfs):
    host = bench.FakeHost(tmp_path, vfs)
    state = Path(host.lean_env["VFALLOC_STATE"])
    for n in (1, 2):
        done = subprocess.run([*bench.LEAN, f"vm{n}", "prepare", "begin", "-"], input=bench.domain_xml(n),
                              env=host.lean_env, capture_output=True)
        assert done.returncode == 0, done.stderr
    leases = json.loads(state.read_text())["leases"]
    vf_links = sorted((tmp_path / "sys" / "bus" / "pci" / "devices").glob("*/virtfn*"))
    real_vfs = {link.resolve().name for link in vf_links}
    assert [x["uuid"] for x in leases] == [bench.uuid(1), bench.uuid(2)]
    assert len({x["vf"] for x in leases}) == 2 and {x["vf"] for x in leases} <= real_vfs
    done = subprocess.run([*bench.LEAN, "vm1", "release", "end", "-"], input=bench.domain_xml(1),
                          env=host.lean_env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert [x["uuid"] for x in json.loads(state.read_text())["leases"]] == [bench.uuid(2)]


def test_one_round_of_the_hook_cycle_runs_every_command(bench, tmp_path):
    runs = bench.hook_cycle(bench.FakeHost(tmp_path, 8), 1)  # exits on any command that fails
    assert set(runs) == {"floor", "prepare", "release", "lean_prepare", "lean_release", "textfile_prepare",
                         "textfile_release"}
    assert all(len(v) == 1 and v[0] > 0 for v in runs.values())


def test_one_round_of_the_bridged_guests_adds_and_removes_the_entry(bench, tmp_path):
    # exits unless the guest over the PF had its entry recorded at started and none is left
    ms = bench.bridged_cycle(tmp_path, 1)
    assert {f"{c}_{op}" for c in ("pf_bridge", "nat_network", "no_interface")
            for op in ("prepare", "started", "release")} | {"floor"} == set(ms)


def test_lean_list_reads_every_pf_and_vf_of_the_host(bench, tmp_path):
    host = bench.FakeHost(tmp_path, 128)  # two PFs of 64 VFs
    done = subprocess.run(bench.LEAN_LIST, env=host.env, capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, str(2 + 128)), done.stderr


def test_one_round_of_the_list_cycle_runs_every_listing_on_a_host_in_use(bench, tmp_path):
    host = bench.FakeHost(tmp_path, 8)
    bench.in_use(host, 2)
    listed = subprocess.run([bench.VFALLOC, "list", "--json"], env=host.env, capture_output=True, text=True)
    assert sorted(r["domain"] for r in json.loads(listed.stdout) if r["domain"]) == ["held0", "held1"]
    runs = bench.list_cycle(host, 1)  # exits on any command that fails
    assert set(runs) == {"floor", "sysfs", "list", "list_json", "pools", "pools_json"}
    assert all(len(v) == 1 and v[0][0] > 0 and v[0][1] >= 0 for v in runs.values())
    row = bench.summary(runs["list"], runs["floor"])
    assert set(row) == {"ms", "min_ms", "max_ms", "ratio", "cpu_ms", "cpu_ratio"}


def test_the_burst_serves_every_domain_once_and_counts_what_it_saw(bench, tmp_path):
    result = bench.burst(bench.FakeHost(tmp_path, 8), 6)
    assert (result["served"], result["doubled"], result["refusals"]) == (6, 0, [])
    assert not json.loads(Path(tmp_path / "state.json").read_text())["leases"]  # all given back


def test_the_burst_reports_a_refusal_with_the_hooks_message(bench, tmp_path):
    result = bench.burst(bench.FakeHost(tmp_path, 4), 5)  # one domain more than VFs
    assert result["served"] == 4 and result["doubled"] == 0
    assert len(result["refusals"]) == 1 and "all" in result["refusals"][0]


def test_the_host_table_says_whether_each_target_is_met():
    spec = importlib.util.spec_from_file_location("bench_host", BENCH / "host.py")
    host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host)
    samples = {"a": [1.0, 1.2, 1.1], "b": [1.1, 1.0, 1.2], "c_running": [1.3, 1.2, 1.4],
               "c_attached": [2.0, 2.5, 2.2], "d": [1.5, 1.6, 1.4], "e": [1.0, 1.1, 1.2],
               "hook_a": [0.02, 0.03, 0.04]}
    summary = host.summarize({"rounds": 3, "samples": samples})
    assert summary["rows"]["c_attached"] == {"median_s": 2.2, "min_s": 2.0, "max_s": 2.5, "n": 3}
    assert summary["ratios"]["b/a"]["ratio"] == 1.0 and summary["ratios"]["d/e"]["ratio"] == 1.364
    table = host.format_table(summary)
    assert "b/a: 1.000 (target <= 1.05: met)" in table and "d/e: 1.364 (target <= 1.10: MISSED)" in table
    assert "((a + hook) / a): 1.027 (target <= 1.05: met)" in table
    assert "the hook file's 3 calls of a's start, run alone" in table
