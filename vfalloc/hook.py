"""libvirt's qemu hook: dispatch of `DOMAIN OP SUBOP EXTRA` with the domain XML on stdin.

Facts relied on (libvirt 11.3, src/qemu/qemu_process.c and docs/hooks.rst):
- libvirt runs /etc/libvirt/hooks/qemu and, since 6.5, every executable in qemu.d/, and waits
  for them; a hook must never call back into libvirt (the daemon would deadlock).
- A non-zero exit at prepare/start/started refuses the start and puts the hook's stderr into
  the error `virsh start` shows. The hook's stdout is ignored for every operation except
  `migrate begin` and `restore begin`, whose output replaces the domain XML.
- A start calls prepare, start, started (all `begin`); a stop calls `stopped end` then
  `release end REASON`; a failed start calls prepare, `stopped end`, `release end failed`;
  a daemon restart calls `reconnect begin` for every running domain.

Besides the leases, the hook keeps the SR-IOV PFs' FDB entries of guests on a bridge over such
a PF (vfalloc.fdb.upkeep, docs/bridges.md): added at `started begin`, removed at `release end`,
synced at `reconnect begin`; for any domain, with or without VFs, and never fatal to it.

libvirt runs it through the hook file (templates.hook_script), whose shell part ends the calls
in which this module would do nothing, so what reaches `main` may still be such a call (the
shell part looks for a superset) and is sorted out here again.

This module never imports libvirt. It reads the same settings as the CLI (config file and the
VFALLOC_* environment), does its work under the lease table's lock, logs one line per call to
syslog (facility daemon, ident vfalloc) and turns every error into one line on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, BinaryIO, TextIO

from . import domxml, vfsettings
from .errors import DomainXMLError, VfallocError
from .fdb import BRIDGED_MARKS
from .hookcalls import BY_CALL, DROP, KEEP
from .log import log, one_line
from .model import Phase

if TYPE_CHECKING:
    from .config import Settings
    from .context import Context
    from .hookcalls import Rule

# Tests and admins may point these at other programs; libvirt gives hooks a minimal environment,
# so on a real host the defaults apply.
ENV_HOTPLUG = "VFALLOC_HOTPLUG_CMD"   # the worker started after `started begin`
ENV_TABLE = "VFALLOC_HOOK_TABLE"      # set by the hook file: the table it looked for names in
ENV_KEPT_XML = "VFALLOC_HOOK_XML"     # set by hook files earlier vfalloc versions wrote (they kept the XML in a file)


class Call:
    """One run of the hook: libvirt's arguments and XML, and the settings once loaded."""

    def __init__(self, domain: str, rule: Rule, extra: str, xml: bytes,
                 environ: Mapping[str, str], out: TextIO, err: TextIO) -> None:
        self.domain, self.rule, self.extra = domain, rule, extra
        self.xml = xml
        self.environ = environ
        self.out, self.err = out, err
        self.settings: Settings | None = None  # loaded by the first operation that needs them, then kept
        self._context: Context | None = None
        self.notes: list[str] = []  # what the FDB steps did, for the log line

    def context(self) -> Context:
        """The settings and what they lead to, made at the first call and kept: a Context reads
        the host and the pools lazily, once, and every step of this call shares what it read."""
        from .config import load_settings
        from .context import Context

        if self._context is None:
            if self.settings is None:
                self.settings = load_settings({}, self.environ, keep_memo=True)
                _check_table(self.environ, self.settings)
                _check_run_dir(self.environ, self.settings)
            self._context = Context(self.settings, out=self.out, err=self.err)
        return self._context

    def holds_leases(self) -> bool:
        """Whether the lease table names this domain: a lease reserved by hand (`vfalloc alloc`)
        for a domain whose XML asks for no VF is given to it at its start and back at its stop."""
        return any(lease.domain == self.domain for lease in self.context().store.read().leases)

    def info(self) -> domxml.DomainInfo:
        if not self.xml.strip():
            raise DomainXMLError(self.domain, f"no domain XML on stdin for `{self.rule.op} {self.rule.subop}`",
                                 "the hook must be run by libvirt (or be given the XML on stdin)")
        try:
            return domxml.read_domain(self.xml)
        except DomainXMLError as exc:
            if exc.domain != "?":
                raise
            raise DomainXMLError(self.domain, exc.problem, exc.fix) from exc


def main(argv: Sequence[str], stdin: BinaryIO | None = None, out: TextIO | None = None,
         err: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    _remove_kept_xml(environ)
    if len(argv) < 3:
        err.write("vfalloc hook: expected DOMAIN OPERATION SUB-OPERATION [EXTRA] as libvirt passes them\n")
        return 2
    domain, op, subop = argv[0], argv[1], argv[2]
    extra = argv[3] if len(argv) > 3 else "-"
    rule = BY_CALL.get((op, subop))
    if rule is None:
        return 0
    handler = HANDLERS[op, subop]
    stdin = stdin if stdin is not None else sys.stdin.buffer
    # Only the calls that refuse may fail (hookcalls.Rule.refuses). Anywhere else a non-zero exit
    # does harm: at `reconnect begin` libvirt 11.3 kills the running domain
    # (qemuProcessReconnect -> qemuProcessStop), so there an error is logged and the exit is 0.
    may_refuse = rule.refuses
    call = None
    where = f"{domain} {op} {subop}"
    try:
        xml = stdin.read()
        call = Call(domain, rule, extra, xml, environ, out, err)
        if not domxml.mentions_vfalloc(xml) and not rule.every_domain:
            if not xml.strip() and rule.refuses:
                call.info()  # raises: these operations need the XML
            if rule.by_name and _reserved_by_hand(call, where):
                message = handler(call)  # a lease reserved by hand for this domain
            else:
                FDB_STEPS.get(rule.fdb, _fdb_none)(call)  # a domain without VFs on a bridge with one
                if not call.notes:
                    return 0
                message = ""
        else:
            message = handler(call)
        message = "; ".join(part for part in (message, *call.notes) if part)
    except VfallocError as exc:
        err.write(f"vfalloc: {exc}\n")
        log(environ, f"{where}: {'refused' if may_refuse else 'failed'}: {exc}", call.settings if call else None)
        _count_failure(environ, op, call, exc, may_refuse)
        return 1 if may_refuse else 0
    except Exception as exc:  # never a traceback into libvirt's error message
        err.write(f"vfalloc: {one_line(f'internal error in the hook: {type(exc).__name__}: {exc}')}\n")
        log(environ, f"{where}: internal error: {type(exc).__name__}: {exc}", call.settings if call else None)
        _count_failure(environ, op, call, exc, may_refuse)
        return 1 if may_refuse else 0
    log(environ, f"{where}: {message or 'nothing to do'}", call.settings if call else None)
    if message and call.settings is not None and call.settings.metrics_textfile:
        _refresh_metrics(environ, call)
    return 0


# -- operations --

def on_prepare(call: Call) -> str:
    from .leasing import lease_for_start, now

    info = call.info()
    ctx = call.context()
    leases, view = lease_for_start(ctx, info, now())
    try:
        vfsettings.apply(call.environ, call.domain, view, leases)
    except VfallocError:
        from .leasing import release_domain

        release_domain(ctx, info.uuid)
        raise
    return "leased " + ", ".join(f"{lease.vf} ({lease.pool}, {lease.phase})" for lease in leases) if leases else ""


def on_started(call: Call) -> str:
    _fdb_keep(call)
    info = call.info()
    ctx = call.context()
    pending = [lease for lease in ctx.store.read().of_domain(info.uuid) if lease.phase == Phase.PENDING]
    if not pending:
        return ""
    from . import detach

    pid = detach.spawn(_hotplug_argv(call, info), call.environ)
    return f"hot-plug of {', '.join(lease.vf for lease in pending)} handed to process {pid}"


def on_release(call: Call) -> str:
    from .leasing import release_domain

    _fdb_drop(call)
    info = call.info()
    gone = release_domain(call.context(), info.uuid)
    if not gone:
        return ""
    return f"released {', '.join(lease.vf for lease in gone)} (reason {call.extra})"


def on_incoming(call: Call) -> str:
    """migrate/restore begin: print the XML with each vfalloc device on a VF leased here."""
    from .leasing import lease_for_incoming, now

    info = call.info()
    if not info.devices:
        return ""
    leases = lease_for_incoming(call.context(), info, now())
    xml = domxml.swap_sources(call.xml, {lease.index: _address(lease.vf) for lease in leases})
    call.out.write(xml.decode())
    call.out.flush()
    return "sources swapped to " + ", ".join(lease.vf for lease in leases)


def on_reconnect(call: Call) -> str:
    """The daemon restarted: match this domain's leases to its devices, then free the leases of
    domains that stopped while nobody watched (judged from libvirt's status files, see stale.py)."""
    from .leasing import now, reconcile_running
    from .stale import collect_offline

    ctx = call.context()
    _fdb_sync(call)
    parts = []
    kept: tuple = ()
    dropped: tuple = ()
    if domxml.mentions_vfalloc(call.xml):
        kept, dropped = reconcile_running(ctx, call.info(), now())
    if kept:
        parts.append("holds " + ", ".join(lease.vf for lease in kept))
    if dropped:
        parts.append("dropped " + ", ".join(lease.vf for lease in dropped))
    freed = collect_offline(ctx).stale
    if freed:
        parts.append("gc freed " + ", ".join(f"{lease.vf} of {lease.domain} ({why})" for lease, why in freed))
    return "; ".join(parts)


# One handler for each call of hookcalls.RULES (tests/test_hook_rules.py checks).
HANDLERS: dict[tuple[str, str], Callable[[Call], str]] = {
    ("prepare", "begin"): on_prepare,
    ("started", "begin"): on_started,
    ("release", "end"): on_release,
    ("migrate", "begin"): on_incoming,
    ("restore", "begin"): on_incoming,
    ("reconnect", "begin"): on_reconnect,
}


# -- the PFs' FDB entries (vfalloc.fdb.upkeep): never fatal, the outcome goes into the log line --

def _fdb_keep(call: Call) -> None:
    """`started begin`: the live XML names the bridge of every interface (also type='network')."""
    _fdb(call, lambda upkeep: upkeep.keep_for_domain(call.context(), call.environ, call.xml))


def _fdb_drop(call: Call) -> None:
    _fdb(call, lambda upkeep: upkeep.drop_for_domain(call.context(), call.environ, call.xml))


def _fdb_sync(call: Call) -> None:
    """`reconnect begin`: entries may have been lost (a PF reset) or left behind (a domain that
    stopped while the daemon was down)."""
    def run(upkeep) -> str:
        report = upkeep.sync(call.context(), call.environ)
        done = [f"added {m} on {pf}" for pf, m, _ in report.added] + [f"removed {m} on {pf}" for pf, m in report.removed]
        if report.failed:
            raise VfallocError("; ".join(report.failed))
        return f"fdb sync {', '.join(done)}" if done else ""
    _fdb(call, run)


def _fdb_none(call: Call) -> None:
    return None


def _fdb(call: Call, step: Callable) -> None:
    # A domain without such an interface costs the FDB steps one byte search and no import; the
    # call that acts for every domain (`reconnect begin`) syncs the whole host.
    if not call.rule.every_domain and not any(m in call.xml for m in BRIDGED_MARKS):
        return
    from .fdb import upkeep

    try:
        note = step(upkeep)
    except VfallocError as exc:
        note = f"fdb failed: {exc}"
        call.err.write(f"vfalloc: warning: {note}\n")
    if note:
        call.notes.append(note)


FDB_STEPS: dict[str, Callable[[Call], None]] = {KEEP: _fdb_keep, DROP: _fdb_drop}


# -- helpers --

def _reserved_by_hand(call: Call, where: str) -> bool:
    """Whether the lease table holds a lease for this domain, whose XML asks for no VF. Such a
    domain starts and stops whatever state vfalloc's files are in: when the config or the table
    cannot be read, the lease cannot be looked for, and the log says so."""
    try:
        return call.holds_leases()
    except VfallocError as exc:
        log(call.environ, f"{where}: warning: cannot look for a lease reserved by hand, the domain goes on "
                          f"without one: {exc}", call.settings)
        return False


def _count_failure(environ: Mapping[str, str], op: str, call: Call | None, exc: BaseException,
                   refused: bool) -> None:
    """vfalloc_hook_refusals_total / vfalloc_hook_errors_total (vfalloc.metrics.counts): only a
    refusal or an error pays for counting."""
    from .metrics.counts import note_hook_failure

    note_hook_failure(environ, op, call.xml if call else b"", exc, refused, call.settings if call else None)


def _refresh_metrics(environ: Mapping[str, str], call: Call) -> None:
    """`[settings] metrics_textfile`: rendered anew by a detached process (vfalloc.metrics.textfile)."""
    from .metrics.textfile import request_refresh

    trouble = request_refresh(environ)
    if trouble:
        log(environ, f"metrics: {trouble}", call.settings)


def _remove_kept_xml(environ: Mapping[str, str]) -> None:
    """A hook file written by an earlier vfalloc kept libvirt's XML in a file of the runtime
    directory, open as our stdin; its name goes now (the data stays readable through stdin), so
    such a hook file leaves nothing behind until `vfalloc install-hook` replaces it. A file
    already gone is fine."""
    kept = environ.get(ENV_KEPT_XML)
    if not kept:
        return
    try:
        os.unlink(kept)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log(environ, f"warning: cannot remove {kept} ({exc.strerror}); remove it by hand", None)


def _check_table(environ: Mapping[str, str], settings: Settings) -> None:
    """The hook file (templates.hook_script) looks for domains' names in the table whose path it
    was written with; if the config now names another, it no longer sees leases reserved by hand."""
    looked = environ.get(ENV_TABLE)
    if looked and looked != settings.state:
        log(environ, f"warning: the hook file looks for reserved leases in {looked}, the config names "
                     f"{settings.state}: run `vfalloc install-hook` again", settings)


def _check_run_dir(environ: Mapping[str, str], settings: Settings) -> None:
    """The runtime directory holds only caches, counters and start stamps (vfalloc.rundir): one
    that is not private is not used, and the log says how to fix it."""
    from . import rundir

    path = rundir.run_dir(environ)
    trouble = rundir.problem(path) if os.path.lexists(path) else None
    if trouble:
        log(environ, f"warning: the runtime directory is not used: {trouble}", settings)


def _address(text: str):
    from .model import PciAddress

    return PciAddress.parse(text)


def _hotplug_argv(call: Call, info) -> list[str]:
    custom = call.environ.get(ENV_HOTPLUG)
    if custom:
        return [*custom.split(), info.name, info.uuid]
    return [sys.executable, "-m", "vfalloc.hotplug", info.name, info.uuid]
