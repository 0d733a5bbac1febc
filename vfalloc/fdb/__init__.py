"""The PFs' own forwarding tables (FDB): the MACs of guests, containers and bridges that a VF's
frames must reach through the NIC's embedded switch (docs/bridges.md). One module per part:
`entries` (core: the topology, the entries each owner needs, the plan of additions and
removals), `ledger` (vfalloc's record of the entries it added, `fdb.json`, and its lock),
`bridge` (iproute2's `bridge` command) and `upkeep` (the order of the work for one domain in the
hook and for the whole host in `vfalloc fdb sync`).

This file imports nothing: the hook imports the package at every call for BRIDGED_MARKS alone,
and a submodule only when a domain may sit on such a bridge.
"""

# libvirt writes <interface type='...'> with single quotes (virDomainNetDefFormat, 11.3): how a
# guest on a bridge (also through a network) or a macvtap shows in its XML, found with a byte search.
BRIDGED_MARKS = (b"<interface type='bridge'", b"<interface type='network'", b"<interface type='direct'")
