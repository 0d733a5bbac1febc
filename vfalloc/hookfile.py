"""The hook file libvirt runs: where it goes, whether vfalloc wrote it, writing and removing it.

libvirt >= 6.5 runs every executable in /etc/libvirt/hooks/qemu.d/ (after the main `qemu`
script, in name order); vfalloc installs `qemu.d/vfalloc` there and so never has to touch a
`qemu` script someone else wrote. libvirt looks for hook files when the daemon starts: a new hook
takes effect after a restart of libvirtd (or virtqemud).

Must not: print (commands/install_hook.py reports), or overwrite a file vfalloc did not write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import rundir
from .atomicfile import temp_path, write_atomic
from .errors import UsageError, VfallocError
from .hookcalls import plain_name
from .rundir import DEFAULT_RUN_DIR
from .templates import HOOK_MARKER, hook_script

if TYPE_CHECKING:
    from .config import Settings

NAME_MAX = 255  # the longest file name Linux file systems take (limits.h), in bytes


def hook_path(hooks_dir: str | os.PathLike[str]) -> Path:
    return Path(hooks_dir) / "qemu.d" / "vfalloc"


def main_hook(hooks_dir: str | os.PathLike[str]) -> Path:
    """The single `qemu` script libvirt runs before qemu.d/*."""
    return Path(hooks_dir) / "qemu"


def render(settings: Settings, interpreter: str) -> str:
    """The hook as `vfalloc install-hook` writes it for these settings: the lease table's path,
    and a config file other than the default (libvirt gives hooks no VFALLOC_* environment)."""
    from .config import DEFAULT_CONFIG

    config = settings.config
    custom = os.path.realpath(config.path) if config.exists and config.path != DEFAULT_CONFIG else None
    return hook_script(interpreter, settings.state, DEFAULT_RUN_DIR, custom)


class StartStamp:
    """`vfalloc start`'s word to the hook file: it has done the work of `prepare begin` (the VFs
    leased under the lock, trust and spoof checking set) for the start whose XML carries `value`
    (domxml.add_devices stamps it). The hook file finds RUN_DIR/start.NAME, sees the value in the
    XML libvirt hands it, removes the file and ends that call without Python; any other start of
    the domain meanwhile (a `virsh start` of the saved config) has no value and goes to Python.
    A name the hook file cannot look up (hookcalls.plain_name) gets no stamp, nor one whose
    stamp, or the temp file it is written through (atomicfile.temp_path), would have a file name
    longer than NAME_MAX (255 bytes on Linux): libvirt takes domain names of any length."""

    def __init__(self, run_dir: str, domain: str) -> None:
        path = os.path.join(run_dir, f"start.{domain}")
        fits = len(os.path.basename(temp_path(path)).encode()) <= NAME_MAX
        self.path = path if plain_name(domain) and fits else None
        # 128 bits from the kernel's CSPRNG, which is what secrets.token_hex(16) returns (CPython
        # 3.11's Lib/secrets.py), without the import of secrets, random and hashlib it costs.
        self.value = os.urandom(16).hex() if self.path else None

    def write(self) -> str | None:
        """Leave the stamp; returns why not, when the runtime directory is not private
        (vfalloc.rundir). Without a stamp the start still works: the hook then does the checks
        of `prepare begin` again, and claims the devices of this start as the domain's own."""
        if self.path is None or self.value is None:
            return None
        trouble = rundir.ensure(os.path.dirname(self.path))
        if trouble:
            self.path = None
            return trouble
        try:
            write_atomic(self.path, (self.value + "\n").encode(), 0o600, sync=False)  # a tmpfs
        except OSError as exc:
            raise VfallocError(f"cannot write {self.path} ({exc.strerror}); run as root") from exc
        return None

    def taken(self) -> bool:
        """Whether the hook file took the stamp (the file is gone); if not, it is removed now."""
        if self.path is None:
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise VfallocError(f"cannot remove {self.path} ({exc.strerror}); remove it by hand") from exc
        return False


def is_ours(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return written_by_vfalloc(fh.read(512))
    except OSError:
        return False


def written_by_vfalloc(text: str | bytes) -> bool:
    """Whether a hook file is one vfalloc wrote: its marker in the first 512 bytes, the rule the
    Debian package's prerm and postrm apply (`head -c 512 | grep -F`) before they remove it."""
    head = (text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)[:512]
    return HOOK_MARKER.encode() in head


def check_replaceable(path: Path) -> None:
    if path.exists() and not is_ours(path):
        raise UsageError(f"{path} exists and was not written by vfalloc; move it away or choose --hooks-dir")


def is_current(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except OSError:
        return False


def write(path: Path, text: str) -> None:
    check_replaceable(path)
    try:
        rundir.make_dirs(str(path.parent), 0o755)  # 0755 whatever the umask: root's hooks directory
        write_atomic(str(path), text.encode(), 0o755)
    except OSError as exc:
        raise VfallocError(f"cannot write {path} ({exc.strerror}); run as root or choose --hooks-dir") from exc


def remove(path: Path) -> None:
    if not is_ours(path):
        raise UsageError(f"{path} was not written by vfalloc; it is left alone")
    try:
        path.unlink()
    except OSError as exc:
        raise VfallocError(f"cannot remove {path} ({exc.strerror}); run as root") from exc
