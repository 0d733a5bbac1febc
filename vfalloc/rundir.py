"""vfalloc's runtime directory: where it is (VFALLOC_RUN_DIR, default /run/vfalloc, a tmpfs that
empties at boot) and whether vfalloc may keep a file there.

The hook runs as root for every domain, and domain names become file names here (a start stamp,
hookfile.StartStamp), so a file in this directory is used only when nobody but its owner can put
one there: a directory, not a symbolic link, owned by the user running vfalloc (root), mode 0700
or stricter. What vfalloc keeps here is a cache (config_cache), counters (metrics.counts), a
refresher's mark (metrics.textfile) and start stamps: none of them is needed for a lease, so when the
directory is not such a place vfalloc works without it and the caller says so in one line
(`problem` gives the line's reason and fix).

Must not: raise for a directory it cannot use, or follow a symbolic link.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

RUN_DIR_ENV = "VFALLOC_RUN_DIR"
DEFAULT_RUN_DIR = "/run/vfalloc"


def run_dir(environ: Mapping[str, str]) -> str:
    """vfalloc's runtime directory: VFALLOC_RUN_DIR, else /run/vfalloc."""
    return environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


def problem(path: str) -> str | None:
    """Why vfalloc may not keep files in `path` (reason and fix, for one line), or None when it
    may. A directory that does not exist yet is a problem too: `ensure` makes it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror})"
    fix = f"remove it (rm -r {path}); vfalloc makes it again, root's and 0700"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link; {fix}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory; {fix}"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by uid {os.geteuid()}; {fix}"
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, which lets others put files there; chmod 0700 {path}"
    return None


def ensure(path: str) -> str | None:
    """Make `path` (0700; missing parents 0755, whatever the umask) unless it exists, then
    `problem(path)`: None when vfalloc may keep files there."""
    try:
        _make(path)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            return f"{path} cannot be created ({exc.strerror}); run as root or set {RUN_DIR_ENV}"
    return problem(path)


def _make(path: str) -> None:
    make_dirs(os.path.dirname(os.path.abspath(path)), 0o755)
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # the umask may have narrowed it; never widened: 0700 is the most


def make_dirs(path: str, mode: int) -> None:
    """os.makedirs with `mode` for every directory it creates, whatever the umask (makedirs gives
    the parents it creates the umask's mode: 0777 under umask 000)."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        os.chmod(directory, mode)
