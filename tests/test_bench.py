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
