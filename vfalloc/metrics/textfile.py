"""Where vfalloc's metrics come from and where they go: the inputs of vfalloc.metrics.exposition
read from a Context, the textfile node_exporter collects, the request to refresh it (the hook's,
after a change, and vfalloc.metrics.counts' after a refusal) and the detached process that does.

Keeping `[settings] metrics_textfile` current must not slow the hook: rendering reads every VF
of the host (a thousand VFs are thousands of sysfs reads), so the hook does not render. After a
call that changed something it leaves a mark (`metrics.pending` in the runtime directory) and,
unless a refresher holds `metrics.lock` already, starts one detached (vfalloc.detach: a session of
its own, /dev/null for stdin/stdout/stderr), so libvirt, which waits for the hook's output to
close, never waits for it. The refresher renders until no mark is left, and looks once more
after it let go of the lock, so a mark left while it was finishing is never stranded; a burst of
starts costs a handful of renders, not one each. It judges running domains from libvirt's status
directory, never by asking libvirt (a domain's start is still under way when it runs).

Must not: be imported by the hook before something changed or failed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from .. import detach, locking
from ..errors import VfallocError
from ..rundir import run_dir

PENDING = "metrics.pending"
LOCK = "metrics.lock"
# A refresher waits this long for another to finish; after that it leaves the marks to it.
REFRESH_WAIT_S = 600.0


def exposition(ctx, uri: str | None, offline: bool, environ: Mapping[str, str] | None = None) -> str:
    """The metrics of the host, pools and lease table `ctx` sees. Running domains come from
    libvirt at `uri` (its status directory when it does not answer), as for `vfalloc list`; with
    `offline` only from the status directory."""
    from ..holdings import vf_rows
    from ..stale import now_utc
    from . import counts, exposition

    environ = os.environ if environ is None else environ
    table = ctx.store.read()
    now = now_utc()
    rows = vf_rows(ctx.host, ctx.pools, table, ctx.boot_id, _running(ctx, table, uri, offline, now))
    kept = counts.read(run_dir(environ), {p.name for p in ctx.pools})
    return exposition.render(ctx.host, ctx.pools, table, rows, kept, now)


def _running(ctx, table, uri: str | None, offline: bool, now):
    """The UUIDs to take as running, judged as `vfalloc list` and `vfalloc gc` judge them."""
    from ..stale import from_rundir, names_of, observe, treated_as_running

    if all(lease.phase == "reserved" for lease in table.leases):  # no lease to judge by "not running"
        return None
    if offline:
        running = from_rundir(ctx.settings.libvirt_run, names_of(table))
    else:
        running = observe(ctx.settings.libvirt_run, uri, names_of(table)).running
    return treated_as_running(table, running, now)


def write_textfile(path: str, text: str) -> None:
    """Replace the textfile whole (node_exporter must never read half of it). Readable by all:
    node_exporter runs as a user of its own. No fsync: it is rewritten at every change and boot."""
    from ..atomicfile import write_atomic

    try:
        write_atomic(path, text.encode(), 0o644, sync=False)
    except OSError as exc:
        raise VfallocError(f"cannot write the metrics textfile {path} ({exc.strerror}); create its "
                           "directory or choose another --textfile / metrics_textfile") from exc


# -- the hook's side --

def request_refresh(environ: Mapping[str, str]) -> str | None:
    """Have the textfile rendered anew soon. Never raises; returns what went wrong, if anything."""
    from .. import rundir

    directory = run_dir(environ)
    trouble = rundir.ensure(directory)
    if trouble:
        return f"cannot start the metrics refresh: the runtime directory is not used: {trouble}"
    try:
        os.close(locking.open_own_file(f"{directory}/{PENDING}"))
    except locking.NotRegularFile:
        return f"cannot start the metrics refresh: {directory}/{PENDING} is not a regular file; remove it"
    except OSError as exc:
        return f"cannot start the metrics refresh: {exc.strerror}"
    try:
        if _held(f"{directory}/{LOCK}"):
            return None  # the refresher that holds it looks for the mark once more before it ends
        detach.spawn([sys.executable, "-I", "-m", "vfalloc.metrics.textfile"], environ)
    except OSError as exc:
        return f"cannot start the metrics refresh: {exc.strerror}"
    return None


def _held(path: str) -> bool:
    free = locking.take_now(path)
    if free is None:
        return True
    free.release()
    return False


# -- the refresher (python -m vfalloc.metrics.textfile, started by request_refresh) --

def refresh(environ: Mapping[str, str]) -> int:
    from ..config import load_settings
    from ..context import Context
    from ..log import log

    directory = run_dir(environ)
    pending = f"{directory}/{PENDING}"
    while True:
        try:
            held = locking.take(f"{directory}/{LOCK}", REFRESH_WAIT_S)
        except locking.LockTimeout:
            return 0  # the refresher that holds it looks for the mark once more before it ends
        except OSError as exc:
            log(environ, f"metrics: cannot lock {directory}/{LOCK}: {exc.strerror}; the textfile is not refreshed")
            return 1
        try:
            while _take(pending):
                try:
                    settings = load_settings({}, environ)
                    if settings.metrics_textfile:
                        write_textfile(settings.metrics_textfile, exposition(Context(settings), None, True, environ))
                except VfallocError as exc:
                    log(environ, f"metrics: {exc}")
                except Exception as exc:  # nobody reads this process's stderr: say it in the log
                    log(environ, f"metrics: internal error: {type(exc).__name__}: {exc}")
        finally:
            held.release()
        if not os.path.exists(pending):
            return 0


def _take(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(refresh(os.environ))
