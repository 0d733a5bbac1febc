"""Handler of `vfalloc metrics`: the Prometheus exposition on stdout, or written whole to a
textfile for node_exporter. Must not: render (vfalloc.metrics.exposition) or gather (vfalloc.metrics.textfile)."""

from __future__ import annotations

import os


def cmd_metrics(args, ctx) -> int:
    from ..errors import UsageError
    from ..metrics.textfile import exposition, write_textfile

    if args.textfile is not None and not os.path.isabs(args.textfile):
        raise UsageError(f"--textfile {args.textfile!r} must be an absolute path")
    text = exposition(ctx, args.connect, args.offline)
    for warning in ctx.store.warnings:
        ctx.err.write(f"vfalloc: warning: {warning}\n")
    if args.textfile:
        write_textfile(args.textfile, text)
    else:
        ctx.out.write(text)
    return 0
