"""`vfalloc install-hook`: puts the qemu hook where libvirt finds it, or takes it away.

libvirt >= 6.5 runs every executable in /etc/libvirt/hooks/qemu.d/ (after the main `qemu`
script, in name order); vfalloc installs `qemu.d/vfalloc` there and so never has to touch a
`qemu` script someone else wrote. libvirt looks for hook files when the daemon starts: a new hook
takes effect after a restart of libvirtd (or virtqemud).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from .errors import UsageError, VfallocError
from .config import DEFAULT_CONFIG
from .templates import HOOK_MARKER, hook_script

DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"


def register(sub, common) -> None:
    p = sub.add_parser("install-hook", parents=[common], help="install the libvirt qemu hook",
                       description="Install vfalloc's hook as HOOKS_DIR/qemu.d/vfalloc (libvirt >= 6.5), "
                                   "running the Python vfalloc is installed in. A --config other than the "
                                   "default is written into the hook (libvirt gives hooks no environment).")
    p.add_argument("--hooks-dir", default=DEFAULT_HOOKS_DIR, help=f"libvirt's hook directory (default {DEFAULT_HOOKS_DIR})")
    p.add_argument("--remove", action="store_true", help="remove the hook vfalloc installed")
    p.add_argument("--dry-run", action="store_true", help="print what would be written, change nothing")
    p.set_defaults(func=cmd_install_hook)


def hook_path(hooks_dir: str | os.PathLike[str]) -> Path:
    return Path(hooks_dir) / "qemu.d" / "vfalloc"


def is_ours(path: Path) -> bool:
    try:
        return HOOK_MARKER in path.read_text(errors="replace")[:512]
    except OSError:
        return False


def cmd_install_hook(args, ctx) -> int:
    path = hook_path(args.hooks_dir)
    if args.remove:
        return _remove(path, args.dry_run, ctx.out)
    config = ctx.settings.config
    text = hook_script(sys.executable, os.path.realpath(config.path) if config.exists and
                       config.path != DEFAULT_CONFIG else None)
    if path.exists() and not is_ours(path):
        raise UsageError(f"{path} exists and was not written by vfalloc; move it away or choose --hooks-dir")
    if args.dry_run:
        ctx.out.write(f"would write {path} (mode 0755):\n{text}")
        return 0
    if path.exists() and path.read_text() == text:
        ctx.out.write(f"{path} is already installed and current\n")
        return 0
    _write(path, text)
    ctx.out.write(f"installed {path}\n"
                  "restart libvirt so it sees the hook: systemctl restart libvirtd (or virtqemud)\n")
    main_hook = Path(args.hooks_dir) / "qemu"
    if main_hook.exists():
        ctx.out.write(f"note: {main_hook} exists too; libvirt runs it first, then qemu.d/*\n")
    return 0


def _remove(path: Path, dry_run: bool, out) -> int:
    if not path.exists():
        out.write(f"{path} is not installed; nothing to remove\n")
        return 0
    if not is_ours(path):
        raise UsageError(f"{path} was not written by vfalloc; it is left alone")
    if dry_run:
        out.write(f"would remove {path}\n")
        return 0
    path.unlink()
    out.write(f"removed {path}; restart libvirt so it forgets the hook\n")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.rename(tmp, path)
    except OSError as exc:
        raise VfallocError(f"cannot write {path} ({exc.strerror}); run as root or choose --hooks-dir") from exc
