"""Handler of `vfalloc install-hook`: installs the qemu hook as HOOKS_DIR/qemu.d/vfalloc, running
the Python vfalloc is installed in, or removes it. The file's rules are vfalloc.hookfile's."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import hookfile
from .audit import record


def cmd_install_hook(args, ctx) -> int:
    path = hookfile.hook_path(args.hooks_dir)
    if args.remove:
        return _remove(ctx, path, args.dry_run)
    text = hookfile.render(ctx.settings, sys.executable)
    hookfile.check_replaceable(path)
    if args.dry_run:
        ctx.out.write(f"would write {path} (mode 0755):\n{text}")
        return 0
    if hookfile.is_current(path, text):
        ctx.out.write(f"{path} is already installed and current\n")
        return 0
    hookfile.write(path, text)
    record(ctx, f"install-hook: installed {path}")
    ctx.out.write(f"installed {path}\n"
                  "restart libvirt so it sees the hook: systemctl restart libvirtd (or virtqemud)\n")
    main_hook = hookfile.main_hook(args.hooks_dir)
    if main_hook.exists():
        ctx.out.write(f"note: {main_hook} exists too; libvirt runs it first, then qemu.d/*\n")
    return 0


def _remove(ctx, path: Path, dry_run: bool) -> int:
    out = ctx.out
    if not path.exists():
        out.write(f"{path} is not installed; nothing to remove\n")
        return 0
    if dry_run:
        if not hookfile.is_ours(path):
            hookfile.remove(path)  # raises: not vfalloc's
        out.write(f"would remove {path}\n")
        return 0
    hookfile.remove(path)
    record(ctx, f"install-hook: removed {path}")
    out.write(f"removed {path}; restart libvirt so it forgets the hook\n")
    return 0
