"""The record of what vfalloc did: one line per event, to syslog (facility daemon, ident
vfalloc) and, when the config's `hook_log` or VFALLOC_HOOK_LOG names a file, appended there too.
The hook and the hot-plug worker log here (the commands print to the admin instead).

Each event is one line whatever it holds: a newline or a control character in it (a domain name
libvirt passed, a value from a domain XML) is written escaped (\\n, \\x1b), so no input can forge
a line of its own; a line longer than errors.MAX_LINE characters loses its middle (errors.cut),
so no input makes a line, or what one call adds to the log, large. The log file is appended to
only when it is a regular file: never through a symlink (O_NOFOLLOW), never blocking on a FIFO
(O_NONBLOCK), and created 0640 (a umask only narrows that, so even umask 000 leaves it writable
by root alone).

Must not: fail its caller. A log line is a copy of what the caller already decided; a log file
that cannot be written is reported to syslog and otherwise ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import MAX_LINE, cut

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from .config import Settings

ENV_LOG = "VFALLOC_HOOK_LOG"  # also append each log line to this file
LOG_MODE = 0o640


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` with every character that is not printable escaped as Python writes it in a string
    literal (a newline as \\n), cut to `limit` characters (errors.cut): one line of bounded
    length, whatever it holds."""
    if text.isprintable():
        return cut(text, limit)
    if len(text) <= limit:
        return cut(_escaped(text), limit)
    # Only the ends of a long line stay, and escaping never shortens a character: escape those
    # ends alone, so a line of megabytes costs no more than one of `limit` characters.
    return cut(_escaped(text[:limit]) + _escaped(text[-limit:]), limit, total=len(text))


def _escaped(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def log(environ: Mapping[str, str], line: str, settings: Settings | None = None) -> None:
    import syslog

    line = one_line(line)
    syslog.openlog("vfalloc", 0, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO, line)
    path = environ.get(ENV_LOG) or (settings.hook_log if settings else _configured_log(environ))
    if path:
        try:
            _append(path, line + "\n")
        except OSError as exc:  # the log is a copy of syslog's line: never a reason to fail
            syslog.syslog(syslog.LOG_WARNING, one_line(f"cannot append to hook_log {path}: {exc.strerror}"))


def _append(path: str, text: str) -> None:
    import errno
    import stat

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, LOG_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "it is a symbolic link, which vfalloc does not follow") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file")
        data = text.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _configured_log(environ: Mapping[str, str]) -> str | None:
    """`hook_log` from the config file's [settings] (libvirt passes hooks no VFALLOC_* variables)."""
    from .config import load_settings
    from .errors import VfallocError

    try:
        return load_settings({}, environ).hook_log
    except VfallocError:
        return None
