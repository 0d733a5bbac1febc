"""`vfalloc host kernel-args`: make the boot configuration carry the arguments SR-IOV passthrough
needs, show them next to what the running kernel got, and regenerate the boot config on request.

Owns: choosing the wanted arguments (vendor default + the flags), the edit plan, and the choice of
the distro's regenerate command. Must not: parse shell (grub), know argument semantics (cmdline),
write files other than through RootFS, or run the regenerate command unless asked.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, TextIO

from ..errors import HostError, UsageError, VfallocError
from .. import procfs
from . import grub, cmdline
from .rootfs import RootFS


@dataclass(frozen=True)
class Plan:
    wanted: tuple[str, ...]
    already: tuple[str, ...]
    add: tuple[str, ...]
    cut: tuple[str, ...]
    texts: dict[str, str]
    before: grub.Grub


def wanted_args(vendor: str | None, add: list[str], acs_ids: list[str], realloc: bool,
                assign_busses: bool, defaults: bool = True) -> tuple[list[str], str]:
    base, note = cmdline.vendor_defaults(vendor) if defaults else ([], "vendor defaults skipped")
    extra = [cmdline.check_arg(a) for a in add]
    extra += [cmdline.acs_override(i) for i in acs_ids]
    extra += ["pci=realloc"] if realloc else []
    extra += ["pci=assign-busses"] if assign_busses else []
    wanted = list(dict.fromkeys(base + extra))
    if not wanted:
        raise UsageError(f"nothing to add ({note})")
    return wanted, note


def load(rootfs: RootFS) -> grub.Grub:
    texts = {}
    for file in [grub.MAIN, *rootfs.glob(grub.DROPIN_DIR, "*.cfg")]:
        text = rootfs.read(file)
        if text is not None:
            texts[file] = text
    if grub.MAIN not in texts and not texts:
        raise HostError(f"{rootfs.shown(grub.MAIN)} does not exist: vfalloc edits GRUB's config "
                        "only (systemd-boot: /etc/kernel/cmdline); is --root right?")
    return grub.Grub.parse(texts)


def plan(before: grub.Grub, wanted: list[str]) -> Plan:
    current = before.cmdline_tokens()
    cut = list(dict.fromkeys(t for a in wanted for t in cmdline.undoing(current, a)))
    kept = [t for t in current if t not in cut]
    already = [a for a in wanted if cmdline.has(current, a) and not cmdline.undoing(current, a)]
    add = [a for a in wanted if not cmdline.has(kept, a)]
    texts = grub.edit(before, add, cut)
    after = grub.Grub.parse({**before.texts, **texts}).cmdline_tokens()
    for a in wanted:
        blocking = cmdline.undoing(after, a)
        if blocking or not cmdline.has(after, a):
            where = _where(before, blocking[0]) if blocking else "the grub files"
            raise grub.GrubError(where, f"{blocking[0] if blocking else a} is set through a "
                                 "variable or quoting vfalloc does not rewrite")
    return Plan(tuple(wanted), tuple(already), tuple(add), tuple(cut), texts, before)


def _where(g: grub.Grub, token: str) -> str:
    for a in g.found:
        if a.var in (grub.LINUX, grub.DEFAULT) and token in a.raw:
            return a.where
    return "the grub files"


def regenerate_command(which: Callable[[str], str | None] = shutil.which) -> list[str] | None:
    """The distro's way to turn /etc/default/grub into the boot config: update-grub (Debian,
    Ubuntu); grubby (Fedora, RHEL: writes the arguments into every BLS entry, which
    grub2-mkconfig alone does not update before GRUB 2.06's --update-bls-cmdline); else
    grub2-mkconfig / grub-mkconfig."""
    if which("update-grub"):
        return ["update-grub"]
    if which("grubby"):
        return ["grubby", "--update-kernel=ALL", "--args"]
    if which("grub2-mkconfig"):
        return ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]
    if which("grub-mkconfig"):
        return ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]
    return None


def full_command(cmd: list[str], wanted: list[str]) -> list[str]:
    return [*cmd, " ".join(wanted)] if cmd[-1] == "--args" else cmd


def running_tokens(proc_root, err: TextIO) -> list[str] | None:
    try:
        return cmdline.split(procfs.cmdline(proc_root))
    except VfallocError as exc:
        err.write(f"vfalloc: warning: {exc}\n")
        return None


def regenerate(cmd: list[str], out: TextIO) -> None:
    out.write(f"running {' '.join(cmd)}\n")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise HostError(f"{cmd[0]}: cannot run ({exc.strerror})") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(f"{' '.join(cmd)} failed with exit code {proc.returncode}: {last}")
