"""Handlers of `vfalloc completion SHELL` (prints a completion script made from the parser) and
of the hidden `vfalloc __complete KIND` the scripts call for live values. The helper's errors
are the usual one line on stderr; the scripts throw stderr away, so a completion that cannot be
had offers nothing and never writes into the command line being typed."""

from __future__ import annotations


def cmd_completion(args, ctx) -> int:
    from ..commandspec import spec
    from ..completion import script

    ctx.out.write(script(args.shell, spec()))
    return 0


def cmd_complete_values(args, ctx) -> int:
    from ..completion import values

    ctx.out.write("".join(f"{v}\n" for v in values(args.kind, ctx)))
    return 0
