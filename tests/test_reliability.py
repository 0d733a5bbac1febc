"""Racing processes, crash consistency and the allocator's invariants under random input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from fakehost import FakeSys, connectx, i350
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfalloc.allocator import allocate, release
from vfalloc.config import parse_config, resolve_pools
from vfalloc.errors import ConfigError, PoolExhausted, UnknownPool
from vfalloc.model import LeaseTable, Request
from vfalloc.state import StateStore
from vfalloc.sysfs import Sysfs

FAKES = REPO / "tests" / "fakes"


def test_racing_processes_keep_every_invariant(scratch):
    """4 processes x 2,500 random alloc/release operations on one state file."""
    connectx(scratch.fs, numvfs=8)
    scratch.write_config('[pools.all]\npfs = ["ens5f0np0", "ens6f0np0"]\n')
    workers, ops, per = 4, 2500, 6
    outs = [scratch.root / f"out{w}.json" for w in range(workers)]
    procs = [subprocess.Popen([sys.executable, str(FAKES / "churn.py"), str(scratch.sysfs), str(scratch.state),
                               str(scratch.config), str(scratch.proc), str(w), str(ops), str(w * per), str(per),
                               str(outs[w])]) for w in range(workers)]
    for p in procs:
        assert p.wait(timeout=600) == 0
    expected: dict[str, str] = {}
    refused = 0
    for out in outs:
        data = json.loads(out.read_text())
        expected.update(data["held"])
        refused += data["refused"]
    table = StateStore(scratch.state).read()
    vfs = [x.vf for x in table.leases]
    assert len(vfs) == len(set(vfs)), "a VF is held by two domains"
    assert {x.uuid: x.vf for x in table.leases} == expected, "a lease was lost or invented"
    assert len(table.leases) <= 16
    rows = json.loads(scratch.run("list", "--json").out)
    assert sum(r["state"] == "leased" for r in rows) == len(expected)
    assert sum(r["state"] == "free" for r in rows) == 16 - len(expected)
    assert refused > 0  # 24 domains on 16 VFs: the pool really ran dry along the way


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_during_writes_leaves_a_whole_table(tmp_path, round_):
    """Kill a writer at random moments, 25 times a round: the file always parses and holds the
    last reported commit or the one after it; leftovers are cleaned and the lock is free."""
    state = tmp_path / "state.json"
    rng = random.Random(round_)
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, str(FAKES / "crashwriter.py"), str(state)],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()
        assert first.strip().isdigit()
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(proc.pid, signal.SIGKILL)
        reported = [int(first)] + [int(x) for x in proc.stdout.read().split()]
        proc.wait()
        table = StateStore(state).read()
        assert len(table.leases) in (reported[-1], reported[-1] + 1)
        assert [x.domain for x in table.leases] == [f"vm{k}" for k in range(len(table.leases))]
    store = StateStore(state, lock_timeout=2)
    with store.transaction() as txn:  # the dead writers hold no lock
        txn.table = LeaseTable()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# -- property-based --

@pytest.fixture(scope="module")
def big_host(tmp_path_factory):
    fs = FakeSys(tmp_path_factory.mktemp("prop") / "sys")
    i350(fs, numvfs=3)
    connectx(fs, numvfs=4)
    return Sysfs(fs.root).read_host()


POOLS_TOML = {"pools": {"a": {"pfs": ["enp1s0f0", "enp1s0f1#0-1"], "policy": "spread"},
                        "b": {"pfs": ["ens5f0np0", "ens6f0np0"]}}}

op = st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 9), st.sampled_from(["a", "b", "nope"]),
               st.integers(1, 2), st.frozensets(st.integers(0, 1), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=40))
def test_allocator_invariants(big_host, ops):
    pools = resolve_pools(parse_config(Path("p.toml"), POOLS_TOML), big_host)
    table = LeaseTable()
    model: dict[str, int] = {}
    for kind, n, pool, count, numa in ops:
        uuid = f"00000000-0000-0000-0000-{n:012d}"
        if kind == "release":
            before = {x for x in table.leases if x.uuid != uuid}
            table, _ = release(table, uuid)
            assert set(table.leases) == before  # nobody else's lease moved
            model.pop(uuid, None)
            continue
        requests = [Request(pool=pool, index=i) for i in range(count)]
        try:
            grant = allocate(big_host, pools, table, domain=f"vm{n}", uuid=uuid, requests=requests,
                             boot_id="b", now="t", phase="attached", numa_nodes=numa)
        except (PoolExhausted, UnknownPool):
            continue
        again = allocate(big_host, pools, grant.table, domain=f"vm{n}", uuid=uuid, requests=requests,
                         boot_id="b", now="t", phase="attached", numa_nodes=numa)
        assert again.leases == grant.leases  # idempotent
        table = grant.table
        model[uuid] = max(model.get(uuid, 0), count)
        admitted = {p.name: p for p in pools}[pool]
        vfs = big_host.vf_map()
        assert all(admitted.admits(vfs[x.vf]) for x in grant.leases)
    held = [x.vf for x in table.leases]
    assert len(held) == len(set(held))
    assert {u: len(table.of_domain(u)) for u in model} == model  # no lease lost


toml_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.text(max_size=12)),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.sampled_from(["pools", "settings", "pf", "x"]),
                            st.dictionaries(st.text(max_size=6), toml_value, max_size=3), max_size=3))
def test_config_parser_only_raises_config_errors(big_host, data):
    data = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in data.items()}
    try:
        config = parse_config(Path("p.toml"), data)
        resolve_pools(config, big_host)
    except ConfigError as exc:
        assert str(exc).startswith("config p.toml: ") and "\n" not in str(exc)
