"""`vfalloc host kernel-args`: make the boot configuration carry the arguments SR-IOV passthrough
needs (and drop the ones that switch the IOMMU off), show them next to what the running kernel
got, and run the set-up's tool on request.

Owns: choosing the wanted and unwanted arguments (vendor default + the flags), the edit plan over
the set-up's files, and running the regenerate command. Must not: parse shell (grub) or the
kernel-install file (kernelcmdline), know argument semantics (cmdline), detect the set-up
(bootsetup), write files other than through RootFS, or run a command unless asked.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import TextIO

from .. import procfs
from ..errors import HostError, UsageError, VfallocError
from . import bootsetup, cmdline, grub, kernelcmdline
from .rootfs import RootFS

Source = grub.Grub | kernelcmdline.KernelCmdline


@dataclass(frozen=True)
class Wanted:
    add: tuple[str, ...]      # arguments the boot config must have
    remove: tuple[str, ...]   # arguments it must not have
    note: str


@dataclass(frozen=True)
class Plan:
    wanted: tuple[str, ...]
    already: tuple[str, ...]
    add: tuple[str, ...]
    cut: tuple[str, ...]
    texts: dict[str, str]


def wanted_args(vendor: str | None, add: list[str], acs_ids: list[str], realloc: bool,
                assign_busses: bool, defaults: bool = True, remove: list[str] | None = None) -> Wanted:
    base, note = cmdline.vendor_defaults(vendor) if defaults else ([], "vendor defaults skipped")
    unwanted = cmdline.iommu_off_args(vendor) if defaults else []
    extra = [cmdline.check_arg(a) for a in add]
    extra += [cmdline.acs_override(i) for i in acs_ids]
    extra += ["pci=realloc"] if realloc else []
    extra += ["pci=assign-busses"] if assign_busses else []
    gone = [cmdline.check_arg(a) for a in remove or []]
    wanted = [a for a in dict.fromkeys(base + extra) if a not in gone]
    clash = [a for a in extra if a in gone]
    if clash:
        raise UsageError(f"{clash[0]} is both to add and to --remove; pick one")
    if not wanted and not gone:
        raise UsageError(f"nothing to add ({note})")
    return Wanted(tuple(wanted), tuple(dict.fromkeys(unwanted + gone)), note)


def detect(rootfs: RootFS) -> bootsetup.Setup:
    setup = bootsetup.detect(rootfs)
    if setup is None:
        raise HostError(f"no boot configuration under {rootfs.shown('/')}: neither {grub.MAIN} nor "
                        f"{kernelcmdline.PATH} exists; is --root right?")
    return setup


def load(rootfs: RootFS, setup: bootsetup.Setup) -> list[Source]:
    """The set-up's files, read: the grub files as one source, /etc/kernel/cmdline as another."""
    sources: list[Source] = []
    texts = {f: t for f in setup.grub_files if (t := rootfs.read(f)) is not None}
    if texts:
        sources.append(grub.Grub.parse(texts, rootfs.shown))
    if setup.kernel_cmdline:
        sources.append(kernelcmdline.KernelCmdline(kernelcmdline.PATH, rootfs.read(kernelcmdline.PATH) or ""))
    return sources


def where(source: Source) -> str:
    """file:line of the assignment new arguments go into, as on the target (not under --root)."""
    if isinstance(source, kernelcmdline.KernelCmdline):
        return f"{source.file}:1"
    eff = source.effective()
    return f"{eff.file}:{eff.line}" if eff else f"{grub.MAIN} (no {grub.LINUX} yet)"


def plan(source: Source, wanted: Wanted | list[str]) -> Plan:
    """The edit of one source: cut what undoes a wanted argument or is unwanted, add what is
    missing; refused when the result would still lack or undo something (written through a
    variable or quoting vfalloc does not rewrite)."""
    if isinstance(wanted, list):
        wanted = Wanted(tuple(wanted), (), "")
    current = source.cmdline_tokens()
    cut = [t for a in wanted.add for t in cmdline.undoing(current, a)]
    cut += [t for a in wanted.remove for t in current if cmdline.matches(t, a)]
    cut = list(dict.fromkeys(cut))
    kept = [t for t in current if t not in cut]
    already = [a for a in wanted.add if cmdline.has(current, a) and not cmdline.undoing(current, a)]
    add = [a for a in wanted.add if not cmdline.has(kept, a)]
    texts = source.edit(add, cut) if isinstance(source, kernelcmdline.KernelCmdline) else grub.edit(source, add, cut)
    after = _reparse(source, texts).cmdline_tokens()
    for a in wanted.add:
        blocking = cmdline.undoing(after, a)
        if blocking or not cmdline.has(after, a):
            _refuse(source, blocking[0] if blocking else a)
    for a in wanted.remove:
        left = [t for t in after if cmdline.matches(t, a)]
        if left:
            _refuse(source, left[0])
    return Plan(wanted.add, tuple(already), tuple(add), tuple(cut), texts)


def _reparse(source: Source, texts: dict[str, str]) -> Source:
    if isinstance(source, kernelcmdline.KernelCmdline):
        return kernelcmdline.KernelCmdline(source.file, texts.get(source.file, source.text))
    return grub.Grub.parse({**source.texts, **texts}, source.label)


def _refuse(source: Source, token: str) -> None:
    if isinstance(source, kernelcmdline.KernelCmdline):
        raise HostError(f"{source.file}: {token} is written in a form vfalloc does not rewrite (quoted); "
                        "edit the file by hand")
    places = [a.where for a in source.found if a.var in grub.CMDLINE_VARS and token in a.raw]
    raise grub.GrubError(places[0] if places else where(source),
                         f"{token} is set through a variable or quoting vfalloc does not rewrite")


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
        raise HostError(f"{cmd[0]}: cannot run ({exc.strerror}); run the set-up's tool by hand") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(f"{' '.join(cmd)} failed with exit code {proc.returncode}: {last}")


def configured(rootfs: RootFS) -> tuple[bootsetup.Setup | None, list[tuple[str, list[str]]], str | None]:
    """For `host check`: the set-up, each source's place and tokens, or the reason it cannot be
    read (an error text, never an exception)."""
    setup = bootsetup.detect(rootfs)
    if setup is None:
        return None, [], None
    try:
        return setup, [(where(s), s.cmdline_tokens()) for s in load(rootfs, setup)], None
    except VfallocError as exc:
        return setup, [], str(exc)
