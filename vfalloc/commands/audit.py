"""The one log line of a command that changed the host or the lease table: what changed and who
ran it, through vfalloc.log (syslog, facility daemon, ident vfalloc, plus the hook_log file), as
the hook logs its own. Handlers call `record` once the change is made; a dry run records nothing.
Must not: fail the command (log.log never raises for the file) or print."""

from __future__ import annotations

import os
import pwd

from ..log import log


def who() -> str:
    """The user the command runs as, and who called sudo when it did (SUDO_USER, set by sudo)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo from {sudo})" if sudo and sudo != name else name


def record(ctx, what: str) -> None:
    log(os.environ, f"{what} [by {who()}]", ctx.settings)
