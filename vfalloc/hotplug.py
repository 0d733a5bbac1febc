"""The hot-plug worker: `python -m vfalloc.hotplug DOMAIN UUID`.

The hook starts it, detached, at `started begin` when a plain start (`virsh start`,
virt-manager, autostart) left leases in phase "pending-attach". It waits until libvirt's start
job for the domain is over (at most WAIT_SECONDS), then hot-plugs each pending VF into the
running domain (live only: the saved config keeps just the request) and marks its lease
"attached". When a VF cannot be attached (no free PCIe slot on q35: one free pcie-root-port per
hot-plugged VF is needed; the VF is gone; libvirt refuses), it logs why, gives that lease back,
and, if the request says required="yes", destroys the domain rather than leave it running
without the network it asked for.

Owns nothing but that sequence. Talks to libvirt only through virt.py (the worker is a process
of its own, so calling libvirt is safe here, unlike in the hook); changes leases only under the
state lock and never while waiting for libvirt. Its stdout and stderr are /dev/null: every
outcome is one log line (syslog, facility daemon, ident vfalloc, and the `hook_log` file when
one is configured), like the hook's.

Facts (libvirt 11.3, checked on these machines): the hook's `started begin` runs inside the start
job, so the worker must wait for it to end (the domain leaves state paused/starting-up); a live
attach right after the start job succeeds; live attach and detach call no hook.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence

from . import domxml
from .allocator import set_phase
from .errors import VfallocError
from .log import log
from .model import Lease, PciAddress, Phase

WAIT_SECONDS = 60.0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    if len(argv) != 2:
        sys.stderr.write("usage: python -m vfalloc.hotplug DOMAIN UUID (started by vfalloc's hook)\n")
        return 2
    name, uuid = argv
    try:
        return run(name, uuid, environ)
    except VfallocError as exc:
        log(environ, f"{name} hotplug: {exc}")
        return 1
    except Exception as exc:  # nobody reads a traceback from a detached process: log it
        log(environ, f"{name} hotplug: internal error: {type(exc).__name__}: {exc}")
        return 70


def run(name: str, uuid: str, environ: Mapping[str, str], wait: float = WAIT_SECONDS) -> int:
    from .config import load_settings
    from .context import Context
    from .virt import Connection, resolve_uri

    ctx = Context(load_settings({}, environ))
    deadline = time.monotonic() + wait
    pending = _pending(ctx, uuid)
    if not pending:
        return 0
    try:
        conn = Connection(resolve_uri(None, environ))
    except VfallocError as exc:
        _fail_all(ctx, environ, name, pending, str(exc), dom=None)
        return 1
    with conn:
        dom = conn.domain_by_uuid(uuid)
        try:
            running = dom is not None and dom.wait_started(deadline)
        except VfallocError as exc:
            _fail_all(ctx, environ, name, pending, str(exc), dom)
            return 1
        if not running:
            log(environ, f"{name} hotplug: the domain stopped before its VFs were hot-plugged; "
                         "its release hook gives them back")
            return 1
        failed = 0
        for seen in pending:
            lease = _still_pending(ctx, seen)
            if lease is None:
                continue
            try:
                how = _attach(ctx, dom, lease, deadline)
            except VfallocError as exc:
                failed += 1
                if _fail(ctx, environ, name, lease, str(exc), dom):
                    return 1
                continue
            _set_attached(ctx, lease)
            log(environ, f"{name} hotplug: {how} {lease.vf} ({lease.pool}) as {domxml.ALIAS_PREFIX}{lease.index}")
    return 1 if failed else 0


def _pending(ctx, uuid: str) -> list[Lease]:
    return sorted((lease for lease in ctx.store.read().of_domain(uuid) if lease.phase == Phase.PENDING),
                  key=lambda lease: lease.index)


def _still_pending(ctx, lease: Lease) -> Lease | None:
    """The lease as it is now, if it is still this domain's and still waiting (a stop meanwhile
    gave it back; a second worker may have done the work)."""
    return next((held for held in ctx.store.read().leases if held.vf == lease.vf and held.uuid == lease.uuid
                 and held.index == lease.index and held.phase == Phase.PENDING), None)


def _attach(ctx, dom, lease: Lease, deadline: float) -> str:
    address = PciAddress.parse(lease.vf)
    if ctx.sysfs.physfn(address) is None:
        raise VfallocError(f"VF {lease.vf} no longer exists (or is no VF); cannot hot-plug it into {dom.name}")
    alias = f"{domxml.ALIAS_PREFIX}{lease.index}"
    live = domxml.read_domain(dom.live_xml())
    there = next((d for d in live.devices if d.index == lease.index), None)
    if there is not None and str(there.address) == lease.vf:
        return "found"
    if there is not None:
        raise VfallocError(f"{dom.name} already has a device {alias} on VF {there.address}, not {lease.vf}")
    dom.attach_live(domxml.render_device(lease.request(), address, lease.mac), deadline)
    return "attached"


def _set_attached(ctx, lease: Lease) -> None:
    with ctx.store.transaction() as txn:
        txn.table = set_phase(txn.table, [lease], Phase.ATTACHED)


def _give_back(ctx, lease: Lease) -> bool:
    with ctx.store.transaction() as txn:
        mine = [held for held in txn.table.leases if held.vf == lease.vf and held.uuid == lease.uuid
                and held.phase == Phase.PENDING]
        txn.table = txn.table.without(mine)
    return bool(mine)


def _fail(ctx, environ, name: str, lease: Lease, why: str, dom) -> bool:
    """Log, give the lease back, destroy the domain if the request is required. True when the
    domain was destroyed (nothing more to do)."""
    _give_back(ctx, lease)
    log(environ, f"{name} hotplug: {why}; VF {lease.vf} ({lease.pool}) given back")
    if not lease.required:
        return False
    if dom is None:
        log(environ, f"{name} hotplug: request {lease.index} is required=\"yes\" but libvirt cannot be "
                     f"reached to stop {name}; stop it by hand")
        return True
    stopped = dom.destroy()
    log(environ, f"{name} hotplug: request {lease.index} is required=\"yes\": "
                 + (f"destroyed {name}" if stopped else f"{name} had already stopped"))
    return True


def _fail_all(ctx, environ, name: str, pending: list[Lease], why: str, dom) -> None:
    for lease in pending:
        if _fail(ctx, environ, name, lease, why, dom):
            return


if __name__ == "__main__":
    sys.exit(main())
