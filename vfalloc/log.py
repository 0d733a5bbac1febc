"""The record of what vfalloc did: one line per event, to syslog (facility daemon, ident
vfalloc) and, when the config's `hook_log` or VFALLOC_HOOK_LOG names a file, appended there too.
The hook and the hot-plug worker log here (the commands print to the admin instead).

Must not: fail its caller. A log line is a copy of what the caller already decided; a log file
that cannot be written is reported to syslog and otherwise ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

ENV_LOG = "VFALLOC_HOOK_LOG"  # also append each log line to this file


def log(environ: Mapping[str, str], line: str, settings: Settings | None = None) -> None:
    import syslog

    syslog.openlog("vfalloc", 0, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO, line)
    path = environ.get(ENV_LOG) or (settings.hook_log if settings else _configured_log(environ))
    if path:
        try:
            with open(path, "a") as fh:
                fh.write(line + "\n")
        except OSError as exc:  # the log is a copy of syslog's line: never a reason to fail
            syslog.syslog(syslog.LOG_WARNING, f"cannot append to hook_log {path}: {exc.strerror}")


def _configured_log(environ: Mapping[str, str]) -> str | None:
    """`hook_log` from the config file's [settings] (libvirt passes hooks no VFALLOC_* variables)."""
    from .config import load_settings
    from .errors import VfallocError

    try:
        return load_settings({}, environ).hook_log
    except VfallocError:
        return None
