"""Handlers of the `vfalloc host` commands that change the host: kernel-args, numvfs, persist,
vf-driver. Every file goes through RootFS (under --root, diff on --dry-run), every sysfs write
through Sysfs.write_attr, and every command run is printed first.
Must not: hold the logic of a change (boot_config, numvfs, persist, vfdriver do)."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import HostError, UsageError, VfallocError
from ..host import boot_config, numvfs, persist, vfdriver
from ..host.rootfs import RootFS
from . import host_context as facts
from .audit import record
from .host_context import boot_id, line, vendor


def cmd_kernel_args(args, ctx) -> int:
    rootfs = RootFS(args.root, args.dry_run, ctx.out)
    if args.update and rootfs.root != Path("/"):
        raise UsageError("--update runs this host's boot loader tool; it works only with --root /")
    wanted = boot_config.wanted_args(vendor(ctx), args.add, args.acs_override, args.realloc,
                                     args.assign_busses, not args.no_defaults, args.remove)
    setup = boot_config.detect(rootfs)
    sources = boot_config.load(rootfs, setup)
    plans = [boot_config.plan(s, wanted) for s in sources]
    line(ctx.out, f"boot set-up: {setup.name}")
    for source in sources:
        where = rootfs.shown(boot_config.where(source))
        line(ctx.out, f"configured ({where}): {' '.join(source.cmdline_tokens()) or '(empty)'}")
    running = boot_config.running_tokens(ctx.settings.proc_root, ctx.err)
    if running is not None:
        line(ctx.out, f"running (/proc/cmdline): {' '.join(running)}")
    if wanted.add:
        line(ctx.out, f"wanted: {' '.join(wanted.add)} ({wanted.note})")
    if wanted.remove:
        line(ctx.out, f"unwanted: {' '.join(wanted.remove)}")
    for plan in plans:
        for file, text in plan.texts.items():
            rootfs.write(file, text)
    _report_plans(ctx.out, plans, sources, rootfs, args.dry_run)
    if args.assign_busses:
        ctx.err.write("vfalloc: warning: pci=assign-busses lets the kernel renumber buses: PCI addresses "
                      "may change, so check PF addresses in vfalloc's config after the reboot\n")
    _next_step(ctx, args, setup, plans, wanted, running)
    changed = sorted({f for p in plans for f in p.texts})
    if changed and not args.dry_run:
        changes = "; ".join(f"{verb} {' '.join(words)}" for verb, words in
                            (("added", _union(p.add for p in plans)), ("removed", _union(p.cut for p in plans)))
                            if words)
        record(ctx, f"kernel-args: {changes} in {', '.join(rootfs.shown(f) for f in changed)}")
    return 0


def _union(groups) -> list[str]:
    return list(dict.fromkeys(a for g in groups for a in g))


def _report_plans(out, plans: list[boot_config.Plan], sources, rootfs: RootFS, dry_run: bool) -> None:
    many = len(plans) > 1
    for plan, source in zip(plans, sources, strict=True):
        place = f" in {rootfs.shown(boot_config.where(source).rsplit(':', 1)[0])}" if many else ""
        if plan.already:
            line(out, f"already configured{place}: {' '.join(plan.already)}")
        if plan.cut:
            line(out, f"{'would remove' if dry_run else 'removed'}{place}: {' '.join(plan.cut)}")
        if plan.add:
            line(out, f"{'would add' if dry_run else 'added'}{place}: {' '.join(plan.add)}")
    written = [f for p in plans for f in p.texts]
    if not written:
        line(out, "nothing to change")
    elif not dry_run:
        line(out, f"wrote {', '.join(rootfs.shown(f) for f in written)}")


def _next_step(ctx, args, setup, plans, wanted: boot_config.Wanted, running) -> None:
    from ..host import bootsetup, cmdline

    missing = [a for a in wanted.add if running is not None and not cmdline.has(running, a)]
    present = [a for a in wanted.remove if running is not None and any(cmdline.matches(t, a) for t in running)]
    removed = _union([*(p.cut for p in plans), wanted.remove])
    changed = any(p.texts for p in plans)
    if args.update:
        if setup.tool is None and not args.dry_run:
            raise HostError(f"{bootsetup.tool_name(setup)} is not installed under {args.root}; regenerate "
                            "the boot config by hand")
        for cmd in bootsetup.commands(setup, list(wanted.add), removed, os.uname().release):
            if args.dry_run:
                line(ctx.out, f"would run: {shlex.join(cmd)}")
            else:
                boot_config.regenerate(cmd, ctx.out)
                record(ctx, f"kernel-args: ran {shlex.join(cmd)}")
    elif changed or missing or present:
        cmds = bootsetup.commands(setup, list(wanted.add), removed, "$(uname -r)")
        shown = " && ".join(bootsetup.shown(c) for c in cmds)
        line(ctx.out, f"next: {shown or 'nothing to regenerate'} (or rerun with --update)")
    if missing:
        line(ctx.out, f"the running kernel lacks {' '.join(missing)}: reboot after regenerating")
    if present:
        line(ctx.out, f"the running kernel has {' '.join(present)}: reboot after regenerating")


# -- numvfs --

def cmd_numvfs(args, ctx) -> int:
    pf = facts.pf(ctx, args.pf)
    numvfs.check_request(pf, args.count)
    if not math.isfinite(args.timeout) or args.timeout <= 0 or args.timeout > 3600:
        raise UsageError(f"--timeout {args.timeout:g} must be a number of seconds from 0 to 3600")
    autoprobe = None if args.autoprobe is None else args.autoprobe == "on"
    if args.dry_run:
        result = _numvfs_writes(args, ctx, pf, ctx.store.read(), autoprobe)
    else:
        # The lease table stays locked from the lease check to the last write, so no hook can
        # lease a VF of this PF in between; the wait for the new VFs needs no lock.
        with ctx.store.transaction() as txn:
            result = _numvfs_writes(args, ctx, pf, txn.table, autoprobe)
        if args.count != result.before:
            result.pf = numvfs.wait_for(ctx.sysfs, pf, args.count, args.timeout, numvfs.Clock())
    for write in result.writes:
        line(ctx.out, f"{'would write' if args.dry_run else 'wrote'} {write}")
    if args.count == result.before and not args.dry_run:
        line(ctx.out, f"{pf.name}: already {args.count} VFs")
    elif not args.dry_run:
        vfs = " ".join(str(vf.address) for vf in result.pf.vfs)
        line(ctx.out, f"{pf.name}: {len(result.pf.vfs)} VFs (was {result.before}){': ' + vfs if vfs else ''}")
        record(ctx, f"host numvfs: {pf.name} ({pf.address}) {result.before} -> {len(result.pf.vfs)} VFs"
                    f"{' (--force)' if args.force else ''}")
        _fdb_after_reset(ctx, pf)
    if autoprobe is not None and not args.dry_run and result.writes:
        record(ctx, f"host numvfs: {pf.name} sriov_drivers_autoprobe {'on' if autoprobe else 'off'}")
    return 0


def _fdb_after_reset(ctx, pf) -> None:
    """A new VF count resets the PF (igb_pci_sriov_configure -> igb_reset_interrupt_capability
    .. igb_probe_vfs, Linux 6.x) and its own FDB with it: put back the entries vfalloc keeps."""
    import os

    from ..fdb.upkeep import sync

    if pf.netdev is None:
        return
    try:
        report = sync(ctx, os.environ, only=frozenset({pf.netdev}))
    except VfallocError as exc:  # the VFs are made: that stands, the entries are a warning
        ctx.err.write(f"vfalloc: warning: fdb: {exc}; run `vfalloc fdb sync` once it is fixed\n")
        return
    for pf_name, mac, _ in report.added:
        line(ctx.out, f"fdb: added {mac} to {pf_name}")
    for failure in report.failed:
        ctx.err.write(f"vfalloc: warning: fdb: {failure}; run `vfalloc fdb sync` once it is fixed\n")


def _numvfs_writes(args, ctx, pf, table, autoprobe: bool | None) -> numvfs.Result:
    leases = numvfs.blocking_leases(pf, args.count, table, boot_id(ctx))
    if leases and not args.force:
        raise HostError(numvfs.lease_refusal(pf, args.count, leases))
    if leases:
        ctx.err.write(f"vfalloc: warning: --force: {len(leases)} leased VF(s) of {pf.name} are removed\n")
    return numvfs.set_numvfs(ctx.sysfs, pf, args.count, autoprobe=autoprobe, dry_run=args.dry_run)


# -- persist --

def _config_arg(ctx) -> str | None:
    """The config file the unit must name: any but the default one vfalloc finds by itself."""
    from ..config import DEFAULT_CONFIG

    config = ctx.settings.config
    if not config.exists or config.path == DEFAULT_CONFIG:
        return None
    return persist.check_exe(str(Path(config.path).resolve()), "--config")


def cmd_persist(args, ctx) -> int:
    rootfs = RootFS(args.root, args.dry_run, ctx.out)
    if args.remove:
        if args.specs or args.enable:
            raise UsageError("--remove takes no PF=N and no --enable")
        gone = [p for p in (persist.WANTS_LINK, persist.UNIT_PATH, persist.RULE_PATH) if rootfs.remove(p)]
        line(ctx.out, f"{'would remove' if args.dry_run else 'removed'} {', '.join(rootfs.shown(p) for p in gone)}"
              if gone else "nothing to remove")
        if gone and not args.dry_run:
            record(ctx, f"host persist: removed {', '.join(rootfs.shown(p) for p in gone)}")
        return 0
    from ..config import pf_counts

    items = persist.targets(ctx.host, ctx.pools, args.specs, pf_counts(ctx.settings.config, ctx.host))
    autoprobe = None if args.autoprobe is None else args.autoprobe == "on"
    if args.method == "systemd":
        exe = persist.check_exe(args.exe or shutil.which("vfalloc") or "/usr/local/bin/vfalloc")
        path, text, other = persist.UNIT_PATH, persist.render_unit(items, exe, autoprobe, _config_arg(ctx),
                                                          ctx.settings.metrics_textfile), \
            [persist.RULE_PATH]
    else:
        if args.enable:
            raise UsageError("--enable is for --method systemd")
        path, text, other = persist.RULE_PATH, persist.render_rules(items, autoprobe), [persist.WANTS_LINK, persist.UNIT_PATH]
    changed = rootfs.write(path, text)
    for p in other:
        if rootfs.remove(p):
            line(ctx.out, f"{'would remove' if args.dry_run else 'removed'} {rootfs.shown(p)} (the other method)")
    verb = "would write" if args.dry_run else "wrote"
    counts = ", ".join(f"{t.netdev or t.address}={t.numvfs}" for t in items)
    line(ctx.out, f"{verb if changed else 'unchanged'} {rootfs.shown(path)}: {counts}")
    if changed and not args.dry_run:
        record(ctx, f"host persist: wrote {rootfs.shown(path)} ({args.method}): {counts}")
    if args.method == "systemd" and args.enable:
        _enable(ctx, rootfs, args.dry_run)
    elif args.method == "systemd":
        line(ctx.out, f"next: systemctl daemon-reload && systemctl enable {persist.UNIT_NAME} (or rerun with --enable)")
    else:
        line(ctx.out, "the rules act on the next boot or driver load; `udevadm control --reload` to load them now")
    return 0


def _enable(ctx, rootfs: RootFS, dry_run: bool) -> None:
    cmd = ["systemctl", *([] if rootfs.root == Path("/") else [f"--root={rootfs.root}"]),
           "enable", persist.UNIT_NAME]
    if dry_run:
        line(ctx.out, f"would run: {' '.join(cmd)}")
        return
    if shutil.which("systemctl") is None:
        raise HostError("systemctl not found; enable the unit by hand: ln -s "
                        f"{persist.UNIT_PATH} {rootfs.shown(persist.WANTS_LINK)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(f"{' '.join(cmd)} failed ({proc.returncode}): {last}")
    line(ctx.out, f"enabled {persist.UNIT_NAME}")
    record(ctx, f"host persist: ran {' '.join(cmd)}")


# -- vf-driver --

def cmd_vf_driver(args, ctx) -> int:
    if args.remove and not args.blacklist:
        raise UsageError("--remove goes with --blacklist DRIVER")
    if not args.blacklist and not args.autoprobe:
        raise UsageError("vf-driver needs --blacklist DRIVER or --autoprobe on|off")
    if args.pfs and not args.autoprobe:
        raise UsageError("PF arguments go with --autoprobe")
    rootfs = RootFS(args.root, args.dry_run, ctx.out)
    if args.blacklist:
        _blacklist(ctx, rootfs, args.blacklist, args.remove, args.dry_run)
    if args.autoprobe:
        _autoprobe(ctx, args.pfs, args.autoprobe == "on", args.dry_run)
    return 0


def _blacklist(ctx, rootfs: RootFS, driver: str, remove: bool, dry_run: bool) -> None:
    vfdriver.check_driver(driver, ctx.host)
    if not remove:
        for use in vfdriver.users(ctx.sysfs, ctx.host, driver):
            ctx.err.write(f"vfalloc: warning: the host uses {use.address} with {driver} ({use.what}); "
                          "the blacklist takes it away at the next boot\n")
    text = vfdriver.blacklist_text(rootfs.read(vfdriver.BLACKLIST_PATH), driver, remove)
    path = rootfs.shown(vfdriver.BLACKLIST_PATH)
    changed = rootfs.remove(vfdriver.BLACKLIST_PATH) if text is None else rootfs.write(vfdriver.BLACKLIST_PATH, text)
    state = "no longer blacklisted" if remove else "blacklisted"
    line(ctx.out, f"{driver} {state} in {path}" if changed else f"{path} unchanged ({driver} already {state})")
    if changed and not dry_run:
        record(ctx, f"host vf-driver: {driver} {state} in {path}")
    if changed and not remove:
        line(ctx.out, f"takes effect at the next boot; now: modprobe -r {driver} (unbinds it from every device); "
                       "if the initramfs carries it: update-initramfs -u (dracut -f)")


def _autoprobe(ctx, refs: list[str], on: bool, dry_run: bool) -> None:
    pool_pfs = [str(m.pf) for p in ctx.pools for m in p.members]
    value = "1" if on else "0"
    for pf in vfdriver.autoprobe_pfs(ctx.host, refs, pool_pfs):
        target = ctx.sysfs.describe(pf.address, "sriov_drivers_autoprobe")
        if not dry_run:
            ctx.sysfs.write_attr(pf.address, "sriov_drivers_autoprobe", value)
            record(ctx, f"host vf-driver: {pf.name} sriov_drivers_autoprobe <- {value}")
        line(ctx.out, f"{'would write' if dry_run else 'wrote'} {target} <- {value}")
        warning = vfdriver.autoprobe_warning(pf, on)
        if warning:
            ctx.err.write(f"vfalloc: warning: {warning}\n")
