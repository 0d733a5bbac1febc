"""The one way vfalloc starts a process that outlives it: the hook's hot-plug worker
(`python -m vfalloc.hotplug`) and the metrics refresher (`python -m vfalloc.metrics.textfile`).

What a process started here gets:
- a new session (setsid): no controlling terminal, not in libvirt's process group;
- /dev/null as stdin, stdout and stderr: libvirt waits for the hook's output to close, and
  never waits for this process;
- no other descriptor of its parent: those open now are closed in the child (the list from
  /proc/self/fd; without /proc, Python's own are close-on-exec anyway, PEP 446);
- `/` as its working directory, so it keeps no mount busy;
- the environment it is given, and its program looked up in that environment's PATH when the
  name has no slash (as subprocess does);
- nobody waiting for it: the caller gets its pid and goes on; it is reaped when the caller ends.

posix_spawn(3) (glibc 2.24 and later report a failed exec as its error) instead of subprocess,
which the hook does not import (docs/performance.md, "What the hook imports"). posix_spawn has
no working-directory action in Python 3.11, so the caller's working directory is `/` for the
moment of the spawn and restored right after: not for a process that runs threads (vfalloc's hook and commands run none).

Must not: wait for the process, or know what it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def spawn(argv: list[str], environ: Mapping[str, str]) -> int:
    """Start argv detached (see above); its pid. OSError when it cannot be started."""
    env = dict(environ)
    program = _found(argv[0], env)
    actions: list[tuple] = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _open_fds() if fd > 2]
    here = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chdir("/")
        try:
            return os.posix_spawn(program, argv, env, file_actions=actions, setsid=True)
        finally:
            os.fchdir(here)
    finally:
        os.close(here)


def _found(name: str, env: Mapping[str, str]) -> str:
    if "/" in name:
        return name
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(2, "No such file or directory", name)


def _open_fds() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        return []
