"""Writes the lease table again and again and reports each commit on stdout, until killed.

usage: crashwriter.py STATE
Commit k holds exactly k leases (domains 0..k-1) for k = 1, 2, ...; the parent kills it with
SIGKILL at a random moment and checks that the file holds commit k or k+1, whole.
"""

import sys

from vfalloc.model import Lease
from vfalloc.state import StateStore

store = StateStore(sys.argv[1], lock_timeout=30)
k = len(store.read().leases)
while True:
    with store.transaction() as txn:
        lease = Lease(vf=f"0000:01:{k // 8:02x}.{k % 8}", pf="0000:01:00.0", pool="p", domain=f"vm{k}",
                      uuid=f"00000000-0000-0000-0000-{k:012d}", index=0, mac=None, vlan=None, since="t",
                      boot_id="b", phase="attached")
        txn.table = txn.table.with_leases([lease])
    k += 1
    print(k, flush=True)
