"""Handlers of `vfalloc request`, `vfalloc start` and `vfalloc gc`: the commands that talk to
libvirt. Thin: check every value before anything changes, call leasing / stale / virt,
print one result. libvirt is reached only through virt.py; leases change only under the state
lock, and never while libvirt is being asked something (see virt.py for why).

`vfalloc request DOMAIN --pool P ...` APPENDS one request to the domain's saved config (the
position it gets is the N of its device alias ua-vfalloc-N); `--clear` removes them all, and
`--clear --pool P ...` replaces them all by one. A bare `vfalloc request DOMAIN` shows them. The
live definition of a running domain is left alone: the change applies from the next start.
"""

from __future__ import annotations

import json
import os

from ..errors import DomainXMLError, UnknownPool, UsageError, VfallocError, VirtError
from ..model import PciAddress, Phase, Request, refuse_hostdev_settings
from ..record import replace


def _uri(args) -> str:
    from ..virt import resolve_uri

    return resolve_uri(args.connect)


# -- request --

def _new_request(args, index: int) -> Request | None:
    extras = [f"--{k}" for k in ("mac", "vlan", "trust", "spoofchk", "type", "required")
              if getattr(args, k) is not None]
    if args.pool is None:
        if extras:
            raise UsageError(f"{extras[0]} needs --pool: each request names the pool its VF comes from")
        return None
    kind = args.type or "interface"
    refuse_hostdev_settings(kind, args.mac, args.vlan)
    return Request(pool=args.pool, index=index, mac=args.mac, vlan=args.vlan, trust=args.trust,
                   spoofchk=args.spoofchk, type=kind, required=args.required == "yes")


def _request_text(req: Request) -> str:
    parts = [f"pool={req.pool}"]
    for key in ("mac", "vlan", "trust", "spoofchk"):
        if getattr(req, key) is not None:
            parts.append(f"{key}={getattr(req, key)}")
    if req.type != "interface":
        parts.append(f"type={req.type}")
    if req.required:
        parts.append("required=yes")
    return " ".join(parts)


def _request_json(req: Request) -> dict:
    from .. import domxml  # lxml: only for the commands that need it

    return {"index": req.index, "pool": req.pool, "mac": req.mac, "vlan": req.vlan, "trust": req.trust,
            "spoofchk": req.spoofchk, "type": req.type, "required": req.required,
            "alias": f"{domxml.ALIAS_PREFIX}{req.index}"}


def cmd_request(args, ctx) -> int:
    from .. import domxml  # lxml: only for the commands that need it
    from ..virt import Connection

    new = _new_request(args, 0)  # every value checked before libvirt is asked anything
    if new is not None and ctx.pool(new.pool) is None:
        raise UnknownPool(new.pool, args.domain, tuple(p.name for p in ctx.pools))
    with Connection(_uri(args)) as conn:
        dom = conn.domain(args.domain)
        if not dom.is_persistent():
            raise UsageError(f"{dom.name} is a transient domain: it has no saved config to hold requests; "
                             "define it with `virsh define`")
        current: tuple[Request, ...] = ()
        if not args.clear:
            try:
                current = domxml.read_domain(dom.saved_xml()).requests
            except DomainXMLError as exc:
                if new is None:
                    raise
                raise UsageError(f"{dom.name} holds a vfalloc request vfalloc cannot read ({exc.problem}); "
                                 f"replace them all with `vfalloc request {dom.name} --clear --pool ...`") from exc
        if new is None and not args.clear:
            return _show(ctx, args, dom.name, current, dom.is_active())
        wanted = current + ((replace(new, index=len(current)),) if new else ())
        element = domxml.metadata_element(wanted) if wanted else None
        dom.set_metadata(element, domxml.NS, "vfalloc")
        saved = domxml.read_domain(dom.saved_xml()).requests
        if saved != wanted:
            raise VfallocError(f"libvirt saved other requests for {dom.name} than vfalloc wrote; "
                               f"check with `virsh dumpxml --inactive {dom.name}`")
        active = dom.is_active()
    return _show(ctx, args, dom.name, saved, active, changed=True)


def _show(ctx, args, name: str, requests, active: bool, changed: bool = False) -> int:
    from .. import domxml  # lxml: only for the commands that need it

    if args.json:
        json.dump([_request_json(r) for r in requests], ctx.out, indent=1)
        ctx.out.write("\n")
        return 0
    if not requests:
        ctx.out.write(f"{name} asks for no VFs" + ("" if changed else
                      f"; add one with `vfalloc request {name} --pool POOL`") + "\n")
    else:
        ctx.out.write(f"{name} asks for {len(requests)} VF{'s' if len(requests) != 1 else ''}:\n")
        for req in requests:
            ctx.out.write(f"  {domxml.ALIAS_PREFIX}{req.index}  {_request_text(req)}\n")
    if changed and active:
        ctx.out.write(f"{name} is running: it keeps the VFs it has; the change applies from its next start\n")
    return 0


# -- start --

def cmd_start(args, ctx) -> int:
    from .. import domxml, vfsettings  # lxml: only for the commands that need it
    from ..allocator import set_phase
    from ..hookfile import StartStamp
    from ..leasing import lease_for_start, now, release_domain
    from ..rundir import run_dir
    from ..virt import Connection

    with Connection(_uri(args)) as conn:
        dom = conn.domain(args.domain)
        if dom.is_active():
            raise UsageError(f"{dom.name} is already running; stop it first (or hot-plug a VF into it by hand)")
        xml = dom.saved_xml()
        try:
            info = domxml.read_domain(xml)
        except DomainXMLError as exc:
            raise DomainXMLError(dom.name, exc.problem, exc.fix) from exc
        if not info.requests:
            raise UsageError(f"{dom.name} asks for no VFs; add one with `vfalloc request {dom.name} --pool POOL`, "
                             f"or start it with `virsh start {dom.name}`")
        present = {d.index for d in info.devices}
        leases, view = lease_for_start(ctx, info, now(), phase=Phase.RESERVED)
        # This command does the work of the hook's `prepare begin`; the stamp tells the hook file
        # so (else the hook claims the ua-vfalloc-* devices there: phase "attached").
        stamp = StartStamp(run_dir(os.environ), dom.name)
        try:
            vfsettings.apply(os.environ, dom.name, view, leases)
            added = [x for x in leases if x.index not in present]
            live = domxml.add_devices(xml, [(x.request(), PciAddress.parse(x.vf), x.mac) for x in added], stamp.value)
            unstamped = stamp.write()
            if unstamped:
                ctx.err.write(f"vfalloc: warning: no start stamp: {unstamped}; the hook checks this start's VFs "
                              "again at `prepare begin`\n")
            try:
                conn.start_with(dom.name, live.decode(), args.paused)
            finally:
                stamped = stamp.taken()
        except VfallocError as exc:
            # libvirt ran `release end failed` if the hook had claimed them; give back the rest.
            # Not when the domain runs after all: then someone else started it, with its leases.
            if dom.is_active():
                raise
            release_domain(ctx, info.uuid)
            if not isinstance(exc, VirtError):
                raise
            given = ", ".join(x.vf for x in leases)
            raise VirtError(f"{exc}; VF{'s' if len(leases) > 1 else ''} {given} given back") from exc
    ours = {x.vf for x in leases}
    with ctx.store.transaction() as txn:
        unclaimed = [x for x in txn.table.of_domain(info.uuid) if x.phase == Phase.RESERVED and x.vf in ours]
        txn.table = set_phase(txn.table, unclaimed, Phase.ATTACHED)
    for lease in leases:
        what = f"{lease.pool}" + (f", mac {lease.mac}" if lease.mac else "") + (f", vlan {lease.vlan}" if lease.vlan else "")
        ctx.out.write(f"{dom.name}: {domxml.ALIAS_PREFIX}{lease.index} = VF {lease.vf} ({what})\n")
    ctx.out.write(f"started {dom.name}{' (paused)' if args.paused else ''}; its saved config keeps only the request\n")
    if unclaimed and not stamped:
        ctx.err.write(f"vfalloc: warning: the vfalloc hook did not claim {', '.join(x.vf for x in unclaimed)}; "
                      "install it (`vfalloc install-hook`, then restart libvirt) or the VFs are not given back "
                      f"when {dom.name} stops (`vfalloc gc` frees them then)\n")
    return 0


# -- gc --

def cmd_gc(args, ctx) -> int:
    from ..stale import collect, names_of, observe
    from .audit import record

    report = collect(ctx, lambda table: observe(ctx.settings.libvirt_run, args.connect, names_of(table)),
                     dry_run=args.dry_run)
    verb = "would free" if args.dry_run else "freed"
    for lease, why in report.stale:
        ctx.out.write(f"{verb} {lease.vf} from {lease.domain} ({lease.uuid}, {lease.phase}): {why}\n")
        if not args.dry_run:
            record(ctx, f"gc: freed {lease.vf} ({lease.pool}) from {lease.domain} ({lease.uuid}): {why}")
    if report.running is None and report.note:
        ctx.out.write(f"running domains unknown ({report.note}): only earlier-boot leases and vanished VFs "
                      "were judged\n")
    elif report.running is not None:
        ctx.out.write(f"running domains from {report.running.source}"
                      + (f" (libvirt did not answer: {report.note})" if report.note else "") + "\n")
    if not report.stale:
        ctx.out.write("no stale leases\n")
    return 0
