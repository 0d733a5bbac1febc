"""A worker process for the reliability tests: random alloc/release against one state file.

usage: churn.py SYSFS STATE CONFIG PROC SEED OPS DOMAIN_BASE DOMAINS OUT
Owns domains DOMAIN_BASE..DOMAIN_BASE+DOMAINS-1 (no other worker touches them), so it knows what
they must hold at the end; writes that as JSON to OUT.
"""

import json
import random
import sys
from pathlib import Path

from vfalloc.allocator import allocate, release
from vfalloc.config import read_config, resolve_pools
from vfalloc.errors import PoolExhausted
from vfalloc.model import Request
from vfalloc.state import StateStore
from vfalloc.sysfs import Sysfs

sysfs, state, config, proc, seed, ops, base, count, out = sys.argv[1:]
rng = random.Random(int(seed))
host = Sysfs(sysfs).read_host()
pools = resolve_pools(read_config(Path(config), True), host)
boot = (Path(proc) / "sys/kernel/random/boot_id").read_text().strip()
store = StateStore(state, lock_timeout=60)
held: dict[str, str] = {}
refused = 0
for _ in range(int(ops)):
    n = int(base) + rng.randrange(int(count))
    uuid = f"00000000-0000-0000-0000-{n:012d}"
    with store.transaction() as txn:
        if rng.random() < 0.55:
            try:
                grant = allocate(host, pools, txn.table, domain=f"vm{n}", uuid=uuid,
                                 requests=[Request(pool="all")], boot_id=boot, now="t", phase="attached")
            except PoolExhausted:
                refused += 1
                continue
            txn.table = grant.table
            held[uuid] = grant.leases[0].vf
        else:
            txn.table, _ = release(txn.table, uuid)
            held.pop(uuid, None)
Path(out).write_text(json.dumps({"held": held, "refused": refused}))
