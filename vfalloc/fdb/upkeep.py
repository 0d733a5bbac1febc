"""Keeping the PFs' FDB entries: for one domain in the hook, and for the whole host in
`vfalloc fdb sync` (at boot after the VFs are made, after `host numvfs` resets a PF, at the
hook's `reconnect begin`, by hand).

Owns the order of the work: read the interfaces (sysfs), the running domains (libvirt's status
files), the tables (fdb.bridge), and, under the ledger's lock (fdb.ledger), change the tables and
the ledger together. Must not: decide which entries belong where (fdb.entries does), import libvirt (the
hook imports this module), or parse a domain's XML before the cheap test `worth_parsing` says it
may sit on a bridge with an SR-IOV PF.

Facts relied on (libvirt 11.3): the XML at `started begin` is the live definition, whose
<interface type='network'> names the bridge the network gave it (<source network=... bridge=...>);
libvirt writes its XML with single quotes (<interface type='bridge'>); a running domain has
RUN/NAME.xml (<domstatus>) in its status directory; a running network has
/run/libvirt/network/NAME.xml (<networkstatus>), a defined one /etc/libvirt/qemu/networks/NAME.xml,
both with <bridge name='BR'/>.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping

from ..errors import VfallocError
from ..record import replace
from . import BRIDGED_MARKS
from .entries import DOMAIN, PORT, Entry, Guest, Link, Owner, Topology, guest_entries, host_entries, plan

NETWORK_CONFIG_DIR = "/etc/libvirt/qemu/networks"
_SOURCE = re.compile(rb"<source\b[^>]*>")
_SOURCE_ATTR = re.compile(rb"\b(bridge|dev|network)='([^'<>]+)'")
_UUID = re.compile(rb"<uuid>\s*([0-9a-fA-F-]{32,36})\s*</uuid>")
_BRIDGE_NAME = re.compile(rb"<bridge\b[^>]*?\bname='([^'<>]+)'")


class LiveLinks(Mapping[str, Link]):
    """The host's interfaces, each read from sysfs the first time it is asked for: the hook
    looks at a handful of them, a sync at all."""

    def __init__(self, sysfs) -> None:
        self._sysfs = sysfs
        self._seen: dict[str, Link | None] = {}

    def __getitem__(self, name: str) -> Link:
        if name not in self._seen:
            self._seen[name] = self._sysfs.read_link(name)
        link = self._seen[name]
        if link is None:
            raise KeyError(name)
        return link

    def __iter__(self) -> Iterator[str]:
        return iter(self._sysfs.link_names())

    def __len__(self) -> int:
        return len(self._sysfs.link_names())


def _allowed(config):
    return lambda link: config.fdb_for((link.name, str(link.pci) if link.pci else link.name))


def network_dirs(settings) -> tuple[str, str]:
    """Where libvirt keeps running networks (beside its qemu status directory) and defined ones."""
    return os.path.join(os.path.dirname(settings.libvirt_run.rstrip("/")), "network"), NETWORK_CONFIG_DIR


def network_bridge(settings, network: str) -> str | None:
    """The bridge of libvirt network `network`, from its status file, else its config file."""
    if not network or "/" in network:
        return None
    for directory in network_dirs(settings):
        try:
            with open(os.path.join(directory, f"{network}.xml"), "rb") as fh:
                found = _BRIDGE_NAME.search(fh.read())
        except OSError:
            continue
        if found:
            return found[1].decode()
    return None


def worth_parsing(xml: bytes, settings, topo: Topology) -> bool:
    """The hook's cheap test, without parsing: may this domain have an interface on a bridge
    that has an SR-IOV PF with VFs as a port, or a macvtap on such a PF?"""
    if not any(mark in xml for mark in BRIDGED_MARKS):
        return False
    for attr, value in (a for tag in _SOURCE.findall(xml) for a in _SOURCE_ATTR.findall(tag)):
        name = value.decode("utf-8", "replace")
        if attr == b"network":
            name = network_bridge(settings, name) or ""
        if name and (topo.bridge_pfs(name) or topo.pfs_below(name)):
            return True
    return False


def resolved(guest: Guest, settings) -> Guest:
    """The guest with each type='network' interface's bridge filled in when its XML lacks it."""
    nics = tuple(n if n.type != "network" or n.bridge else replace(n, bridge=network_bridge(settings, n.network or ""))
                 for n in guest.nics)
    return replace(guest, nics=nics)


# -- the hook --

def keep_for_domain(ctx, environ: Mapping[str, str], xml: bytes) -> str:
    """`started begin` / `reconnect begin`: add the entries this domain needs; what was there
    already, put by someone else, is left alone and not recorded."""
    settings = ctx.settings
    topo = Topology(LiveLinks(ctx.sysfs))
    if not worth_parsing(xml, settings, topo):
        return ""
    from .. import domxml
    from .bridge import BridgeTool
    from .ledger import LedgerFile

    guest = resolved(domxml.read_guest(xml), settings)
    entries = guest_entries(topo, guest, _allowed(settings.config))
    if not entries:
        return ""
    tool = BridgeTool(environ)
    added: list[str] = []
    there: list[str] = []
    failed: list[str] = []
    with LedgerFile(settings.state, settings.lock_timeout).transaction() as txn:
        for e in entries:
            key = (e.pf, e.mac)
            try:
                fresh = tool.add(e.pf, e.mac)
            except VfallocError as exc:
                failed.append(str(exc))
                continue
            if fresh or key in txn.ledger:
                txn.ledger[key] = txn.ledger.get(key, frozenset()) | {e.owner}
                (added if fresh else there).append(f"{e.mac} on {e.pf}")
            else:
                there.append(f"{e.mac} on {e.pf} (not vfalloc's)")
    parts = [f"fdb added {', '.join(added)}" if added else "",
             f"fdb had {', '.join(there)}" if there else ""]
    if failed:
        raise_failed(parts, failed)
    return "; ".join(p for p in parts if p)


def raise_failed(parts: list[str], failed: list[str]) -> None:
    from ..errors import FdbError

    done = "; ".join(p for p in parts if p)
    raise FdbError("fdb", "; ".join(failed) + (f" (done: {done})" if done else ""))


def drop_for_domain(ctx, environ: Mapping[str, str], xml: bytes) -> str:
    """`release end`: remove the entries vfalloc added for this domain that nobody else needs.
    Only the ledger is asked, not the bridges: they may have changed while the domain ran."""
    from .ledger import LedgerFile

    if not any(mark in xml for mark in BRIDGED_MARKS):
        return ""
    found = _UUID.search(xml)
    settings = ctx.settings
    ledger = LedgerFile(settings.state, settings.lock_timeout)
    raw = ledger.raw()
    if not found or raw is None or found[1].lower() not in raw:
        return ""
    uuid = found[1].decode().lower()
    from .bridge import BridgeTool

    tool = BridgeTool(environ)
    removed, failed = [], []
    with ledger.transaction() as txn:
        for key, owners in sorted(txn.ledger.items()):
            rest = frozenset(o for o in owners if not (o.kind == DOMAIN and o.id == uuid))
            if rest == owners:
                continue
            if rest:
                txn.ledger[key] = rest
                continue
            try:
                tool.delete(*key)
            except VfallocError as exc:
                failed.append(str(exc))
                continue
            del txn.ledger[key]
            removed.append(f"{key[1]} on {key[0]}")
    parts = [f"fdb removed {', '.join(removed)}" if removed else ""]
    if failed:
        raise_failed(parts, failed)
    return parts[0]


# -- the whole host --

class SyncReport:
    def __init__(self) -> None:
        self.added: list[tuple[str, str, frozenset[Owner]]] = []
        self.removed: list[tuple[str, str]] = []
        self.foreign: list[tuple[str, str]] = []
        self.unseen: list[str] = []  # PFs with recorded entries that this namespace does not see
        self.kept: dict[tuple[str, str], frozenset[Owner]] = {}
        self.warnings: list[str] = []
        self.failed: list[str] = []


def running_guests(settings, report: SyncReport) -> list[Guest]:
    """The domains running now, from libvirt's status directory (no libvirt call: the hook
    runs this at `reconnect begin`)."""
    from .. import domxml
    from ..errors import DomainXMLError

    directory = settings.libvirt_run
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".xml"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.warnings.append(f"cannot list {directory} ({exc.strerror}): running guests are not known")
        return []
    guests = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            report.warnings.append(f"cannot read {path} ({exc.strerror})")
            continue
        if not any(mark in data for mark in BRIDGED_MARKS):
            continue
        try:
            guests.append(resolved(domxml.read_guest(data), settings))
        except DomainXMLError as exc:
            report.warnings.append(f"{path}: {exc}")
    return guests


def wanted_entries(ctx, topo: Topology, tool, guests: list[Guest], allowed) -> list[Entry]:
    taps = frozenset(n.target for g in guests for n in g.nics if n.target)
    learned = {br: tool.learned(br) for br in topo.bridges()}
    entries = host_entries(topo, learned, taps, allowed)
    for guest in guests:
        entries += guest_entries(topo, guest, allowed)
    return entries


def sync(ctx, environ: Mapping[str, str], dry_run: bool = False, only: frozenset[str] | None = None) -> SyncReport:
    """Bring every PF's table (or only the PFs named in `only`) to what it should hold."""
    from .bridge import BridgeTool
    from .ledger import LedgerFile

    report = SyncReport()
    tool = BridgeTool(environ)
    ledger = LedgerFile(ctx.settings.state, ctx.settings.lock_timeout)
    if dry_run:
        _sync(ctx, tool, ledger.read(), report, only, apply=False)
        return report
    with ledger.transaction() as txn:
        txn.ledger = _sync(ctx, tool, txn.ledger, report, only, apply=True)
    return report


def _sync(ctx, tool, ledger: dict, report: SyncReport, only: frozenset[str] | None, apply: bool) -> dict:
    links = ctx.sysfs.read_links()
    topo = Topology(links)
    guests = running_guests(ctx.settings, report)
    allowed = _allowed(ctx.settings.config)
    wanted = wanted_entries(ctx, topo, tool, guests, allowed)
    scope = {pf for br in topo.bridges() for pf in topo.bridge_pfs(br)} | {e.pf for e in wanted} | {k[0] for k in ledger}
    if only is not None:
        scope &= only
    # A PF this network namespace does not see (moved to another, or gone) keeps its entries in
    # the ledger as they are: only a sync that sees it can tell what its table holds.
    report.unseen = sorted({k[0] for k in ledger if k[0] in scope and k[0] not in links})
    present = {pf: tool.own(pf) for pf in sorted(scope) if pf in links}
    endpoints = {p for br in topo.bridges() for p in topo.endpoint_ports(br)}
    on = {pf for pf in present if allowed(links[pf])}
    p = plan(wanted, ledger, present, keep=lambda key, o: o.kind == PORT and o.id in endpoints and key[0] in on)
    after = p.ledger()
    report.foreign = list(p.foreign)
    for key in p.add:
        try:
            fresh = tool.add(*key) if apply else True
        except VfallocError as exc:
            report.failed.append(str(exc))
            after.pop(key, None)
            continue
        if fresh:
            report.added.append((*key, after[key]))
        else:
            report.foreign.append(key)
            after.pop(key, None)
    for key in p.remove:
        try:
            if apply:
                tool.delete(*key)
        except VfallocError as exc:
            report.failed.append(str(exc))
            after[key] = ledger[key]
            continue
        report.removed.append(key)
    report.kept = after
    return after


def missing(ctx, environ: Mapping[str, str]) -> dict[str, list[Entry]]:
    """PF -> the entries it should hold and does not, whatever the config switch says (for
    `vfalloc host check`); only PFs that are bridge ports."""
    from .bridge import BridgeTool

    tool = BridgeTool(environ)
    report = SyncReport()
    topo = Topology(ctx.sysfs.read_links())
    wanted = wanted_entries(ctx, topo, tool, running_guests(ctx.settings, report), lambda link: True)
    bridged = {pf for br in topo.bridges() for pf in topo.bridge_pfs(br)}
    result: dict[str, list[Entry]] = {pf: [] for pf in sorted(bridged)}
    present = {pf: tool.own(pf) for pf in bridged}
    for e in wanted:
        if e.pf in bridged and e.mac not in present[e.pf]:
            result[e.pf].append(e)
    return result
