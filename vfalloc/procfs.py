"""The few facts vfalloc reads from /proc, rooted at a path so tests use scratch trees:
the boot id (proc/sys/kernel/random/boot_id, a fresh UUID each boot since Linux 2.6) and the
running kernel's command line (proc/cmdline)."""

from __future__ import annotations

import os

from .errors import VfallocError


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise VfallocError(f"{path}: cannot read ({exc.strerror}); is --proc-root right?") from exc


def boot_id(proc_root: str | os.PathLike[str]) -> str:
    return _read(os.path.join(proc_root, "sys/kernel/random/boot_id"))


def cmdline(proc_root: str | os.PathLike[str]) -> str:
    return _read(os.path.join(proc_root, "cmdline"))


def cpu_vendor(proc_root: str | os.PathLike[str]) -> str | None:
    """The CPU vendor from proc/cpuinfo (`vendor_id`, x86 only: GenuineIntel, AuthenticAMD,
    HygonGenuine), None when the file names none (other architectures)."""
    for line in _read(os.path.join(proc_root, "cpuinfo")).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "vendor_id":
            return value.strip()
    return None
