"""`vfalloc metrics`: the pools' capacity, the PFs, the leases and the hook's refusals in the
Prometheus text exposition format 0.0.4 (what node_exporter's textfile collector and every
Prometheus scraper read). Pure: it renders values it is given and does no I/O.

The pool counts are holdings.pool_rows over holdings.vf_rows, the very rows behind `vfalloc
list --json` and `vfalloc pools --json`, so the three can never disagree. Samples are sorted
and every family is written even when it has no samples, so the output of an unchanged host is
byte for byte the same.

Format facts relied on (Prometheus "Exposition formats", text format 0.0.4): one `# HELP` and
one `# TYPE` line per family before its samples; label values escape backslash, double quote
and line feed; a counter's samples end in `_total`; the textfile collector refuses samples that
carry timestamps, so none are written and "when" is a gauge of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from ..holdings import pool_rows
from ..model import Host, LeaseTable, Pool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POOL_STATES = ("free", "leased", "stale")  # a VF in a pool is never "unusable"


class Family:
    """One metric family: its name, type, help text and samples (labels, value)."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[tuple[tuple[str, str], ...], float]] = []

    def add(self, value: float, **labels: object) -> None:
        self.samples.append((tuple((k, "" if v is None else str(v)) for k, v in labels.items()), value))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in sorted(self.samples):
            inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(f"{self.name}{{{inner}}} {_number(value)}" if inner else f"{self.name} {_number(value)}")
        return "\n".join(lines) + "\n"


def render(host: Host, pools: Sequence[Pool], table: LeaseTable, rows: Sequence[Mapping],
           counts: Mapping[tuple[str, str, str], int], now: datetime) -> str:
    """The whole exposition. `rows`: holdings.vf_rows of the same host, pools and table;
    `counts`: (kind, pool, operation) -> number, kind "refused" or "failed" (metrics.counts)."""
    families = [*_pool_families(host, pools, rows), *_pf_families(host), *_lease_families(table, rows, now),
                *_hook_families(counts)]
    made = Family("vfalloc_metrics_time_seconds", "gauge",
                  "When these metrics were made (Unix time); lease ages are as of then.")
    made.add(now.timestamp())
    families.append(made)
    return "".join(f.render() for f in families)


def _pool_families(host: Host, pools: Sequence[Pool], rows: Sequence[Mapping]) -> list[Family]:
    vfs = Family("vfalloc_pool_vfs", "gauge",
                 "VFs of each pool by state, as `vfalloc list --json` counts them.")
    for entry in pool_rows(host, pools, rows):
        for state in POOL_STATES:
            vfs.add(entry[state], pool=entry["pool"], state=state)
    # A lease that names a pool the config no longer has is a row of `vfalloc list` too.
    known = {p.name for p in pools}
    orphans: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["pool"] is not None and row["pool"] not in known:
            orphans[(row["pool"], row["state"])] = orphans.get((row["pool"], row["state"]), 0) + 1
    for (pool, state), n in orphans.items():
        vfs.add(n, pool=pool, state=state)
    unpooled = Family("vfalloc_unpooled_vfs", "gauge",
                      "VFs in no pool, per PF: vfalloc never hands them out (state unusable), or a lease "
                      "holds one the config no longer puts in a pool (leased, stale).")
    counted: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if row["pool"] is None:
            where = (row["pf"], row["pf_netdev"] or "", row["state"])
            counted[where] = counted.get(where, 0) + 1
    for (pf, netdev, state), n in counted.items():
        unpooled.add(n, pf=pf, pf_netdev=netdev, state=state)
    return [vfs, unpooled]


def _pf_families(host: Host) -> list[Family]:
    created = Family("vfalloc_pf_vfs", "gauge", "VFs created on each SR-IOV PF (sriov_numvfs).")
    total = Family("vfalloc_pf_totalvfs", "gauge", "VFs each SR-IOV PF can have (sriov_totalvfs).")
    for pf in host.pfs:
        labels = {"pf": str(pf.address), "pf_netdev": pf.netdev or ""}
        created.add(pf.numvfs, **labels)
        total.add(pf.totalvfs, **labels)
    return [created, total]


def _lease_families(table: LeaseTable, rows: Sequence[Mapping], now: datetime) -> list[Family]:
    start = Family("vfalloc_lease_start_time_seconds", "gauge",
                   "When each lease was taken (Unix time); its age is time() minus this.")
    age = Family("vfalloc_lease_age_seconds", "gauge",
                 "Age of each lease when these metrics were made (vfalloc_metrics_time_seconds).")
    state = {row["vf"]: row["state"] for row in rows if row["domain_uuid"] is not None}
    for lease in table.leases:
        since = _timestamp(lease.since)
        if since is None:
            continue  # a hand-edited `since` that is no time: no age to show (list shows the text)
        labels = {"vf": lease.vf, "pf": lease.pf, "pool": lease.pool, "domain": lease.domain,
                  "domain_uuid": lease.uuid, "phase": lease.phase, "state": state.get(lease.vf, "")}
        start.add(since, **labels)
        age.add(max(0.0, now.timestamp() - since), **labels)
    return [start, age]


def _hook_families(counts: Mapping[tuple[str, str, str], int]) -> list[Family]:
    refused = Family("vfalloc_hook_refusals_total", "counter",
                     "Starts and incoming domains the hook refused, per pool and operation, since boot.")
    failed = Family("vfalloc_hook_errors_total", "counter",
                    "Hook calls that failed without refusing anything, per pool and operation, since boot.")
    for (kind, pool, op), n in counts.items():
        (refused if kind == "refused" else failed).add(n, pool=pool, operation=op)
    return [refused, failed]


def _timestamp(since: str) -> float | None:

    try:
        then = datetime.fromisoformat(since)
    except (TypeError, ValueError):
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return then.timestamp()


def _number(value: float) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(round(value, 3))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
