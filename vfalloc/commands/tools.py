"""Handlers of `vfalloc completion SHELL` (prints a completion script made from the parser) and
of the hidden `vfalloc __complete KIND` the scripts call for live values. The helper never
prints an error: a completion that cannot be had offers nothing, and the exit code says why."""

from __future__ import annotations

from ..errors import VfallocError


def cmd_completion(args, ctx) -> int:
    from ..commandspec import spec
    from ..completion import script

    ctx.out.write(script(args.shell, spec()))
    return 0


def cmd_complete_values(args, ctx) -> int:
    from ..completion import values

    try:
        found = values(args.kind, ctx)
    except VfallocError as exc:
        return exc.exit_code
    ctx.out.write("".join(f"{v}\n" for v in found))
    return 0
