"""Which boot set-up a host has, told from its files under --root, and the tool that turns the
edited files into what the boot loader reads.

Set-ups (and the files that tell them apart):
- proxmox-boot-tool (Proxmox VE on ZFS or with UEFI): /etc/kernel/proxmox-boot-uuids lists the
  ESPs it syncs. systemd-boot ESPs take /etc/kernel/cmdline, grub ESPs (legacy BIOS, Secure Boot)
  /etc/default/grub; `proxmox-boot-tool refresh` copies either onto every ESP.
- GRUB with BLS entries (RHEL/Fedora/Alma/Rocky 9): GRUB_ENABLE_BLSCFG=true in /etc/default/grub.
  Installed kernels boot /boot/loader/entries/*.conf, whose `options` only grubby edits
  (`grubby --update-kernel=ALL --args/--remove-args`); /etc/default/grub, and /etc/kernel/cmdline
  when present, are what kernel-install gives kernels to come.
- GRUB (Debian, Ubuntu, Proxmox VE on LVM): /etc/default/grub; `update-grub` (grub-mkconfig).
- systemd-boot / kernel-install: /etc/kernel/cmdline only; `kernel-install add` rewrites the
  running kernel's entry.

Owns: the detection and the commands. Must not: parse or edit the files (grub, kernelcmdline),
or run anything (boot_config does, on request).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from . import grub, kernelcmdline
from .rootfs import RootFS

PROXMOX_ESPS = "/etc/kernel/proxmox-boot-uuids"
_BLS = re.compile(r"^[ \t]*(?:export[ \t]+)?GRUB_ENABLE_BLSCFG=[\"']?(\w*)", re.M)
_SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")

PROXMOX, BLS, GRUB, KERNEL_INSTALL = "proxmox-boot-tool", "grub-bls", "grub", "kernel-install"
NAMES = {
    PROXMOX: "Proxmox VE proxmox-boot-tool (ESPs from /etc/kernel/proxmox-boot-uuids)",
    BLS: "GRUB with BLS entries (RHEL, Fedora, Alma, Rocky): grubby edits the installed kernels",
    GRUB: "GRUB (Debian, Ubuntu, Proxmox VE without proxmox-boot-tool)",
    KERNEL_INSTALL: "systemd-boot / kernel-install (/etc/kernel/cmdline)",
}


@dataclass(frozen=True)
class Setup:
    kind: str
    grub_files: tuple[str, ...]     # /etc/default/grub and grub.d/*.cfg to edit, in source order
    kernel_cmdline: bool            # whether /etc/kernel/cmdline is edited
    tool: str | None                # the regenerate tool found under the root (None: not installed)

    @property
    def name(self) -> str:
        return NAMES[self.kind]

    def files(self) -> list[str]:
        return [*self.grub_files, *([kernelcmdline.PATH] if self.kernel_cmdline else [])]


def detect(rootfs: RootFS) -> Setup | None:
    """The set-up of the host under `rootfs`, or None when it has no file vfalloc knows."""
    grub_files = tuple(f for f in [grub.MAIN, *rootfs.glob(grub.DROPIN_DIR, "*.cfg")] if rootfs.exists(f))
    has_cmdline = rootfs.exists(kernelcmdline.PATH)
    if rootfs.exists(PROXMOX_ESPS):
        return Setup(PROXMOX, grub_files, has_cmdline, _tool(rootfs, "proxmox-boot-tool"))
    if grub_files:
        if _bls(rootfs, grub_files):
            return Setup(BLS, grub_files, has_cmdline, _tool(rootfs, "grubby"))
        tool = next((t for t in ("update-grub", "grub-mkconfig", "grub2-mkconfig") if _tool(rootfs, t)), None)
        return Setup(GRUB, grub_files, False, tool)
    if has_cmdline:
        return Setup(KERNEL_INSTALL, (), True, _tool(rootfs, "kernel-install"))
    return None


def _bls(rootfs: RootFS, files: tuple[str, ...]) -> bool:
    """GRUB_ENABLE_BLSCFG as the last assignment says (grub-mkconfig's own switch)."""
    value = None
    for f in files:
        for m in _BLS.finditer(rootfs.read(f) or ""):
            value = m[1]
    return value == "true"


def _tool(rootfs: RootFS, name: str) -> str | None:
    for d in _SBIN:
        path = rootfs.path(f"{d}/{name}")
        if path.is_file() and os.access(path, os.X_OK):
            return f"{d}/{name}"
    return None


def commands(setup: Setup, wanted: list[str], removed: list[str], kernel: str) -> list[list[str]]:
    """What makes the boot loader read the edited files. `wanted`: every argument the boot config
    must have; `removed`: arguments taken out; `kernel`: the running kernel's release."""
    if setup.kind == PROXMOX:
        return [["proxmox-boot-tool", "refresh"]]
    if setup.kind == BLS:
        cmd = ["grubby", "--update-kernel=ALL"]
        cmd += ["--args", " ".join(wanted)] if wanted else []
        cmd += ["--remove-args", " ".join(removed)] if removed else []
        return [cmd] if wanted or removed else []
    if setup.kind == KERNEL_INSTALL:
        return [["kernel-install", "add", kernel, f"/lib/modules/{kernel}/vmlinuz"]]
    if setup.tool and setup.tool.endswith("grub2-mkconfig"):
        return [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]
    if setup.tool and setup.tool.endswith("grub-mkconfig"):
        return [["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]]
    return [["update-grub"]]


def shown(cmd: list[str]) -> str:
    """A command as the admin types it: quoted, except the $(uname -r) the shell must expand."""
    return " ".join(w if "$(uname -r)" in w else shlex.quote(w) for w in cmd)


def tool_name(setup: Setup) -> str:
    return {PROXMOX: "proxmox-boot-tool", BLS: "grubby", KERNEL_INSTALL: "kernel-install"}.get(
        setup.kind, "update-grub")
