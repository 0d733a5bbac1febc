"""Kernel command-line arguments as values: which ones SR-IOV passthrough wants on this CPU, whether
a command line already has one, and which present arguments undo one. Pure: strings in, strings
out; no files (grub), no /proc (procfs).

Kernel facts (Documentation/admin-guide/kernel-parameters.txt, Linux 6.x):
- intel_iommu=, amd_iommu=, iommu=, pci= and pcie_acs_override= take comma-separated options and
  every occurrence is parsed (intel_iommu_setup(), parse_amd_iommu_options(), iommu_setup(),
  pci_setup() loop over the commas), so `pci=realloc pci=assign-busses` is the same as
  `pci=realloc,assign-busses`.
- Intel VT-d is off unless `intel_iommu=on` (or CONFIG_INTEL_IOMMU_DEFAULT_ON).
- The AMD IOMMU is on by default when the firmware enables it; `amd_iommu=` knows no `on` option
  (drivers/iommu/amd/init.c logs "Unknown option - 'on'" since Linux 6.5), so vfalloc does not
  add it, and only `amd_iommu=off` counts as off.
- `iommu=pt` maps host-owned devices 1:1 (no DMA translation cost for the host's own NICs).
"""

from __future__ import annotations

import re

from ..errors import UsageError

COMMA_KEYS = frozenset({"intel_iommu", "amd_iommu", "iommu", "pci", "pcie_acs_override"})
# (key, option) -> options of the same key that undo it.
UNDOES = {
    ("intel_iommu", "on"): frozenset({"off"}),
    ("iommu", "pt"): frozenset({"nopt", "off"}),
    ("pci", "realloc"): frozenset({"realloc=off"}),
}
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.,:=/+@-]*$")
_ACS_ID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
INTEL, AMD = ("GenuineIntel",), ("AuthenticAMD", "HygonGenuine")


def split(cmdline: str) -> list[str]:
    """Split a kernel command line; double quotes group (`a="b c"`), as the kernel's
    next_arg() does (lib/cmdline.c)."""
    tokens: list[str] = []
    cur: list[str] = []
    quoted, have = False, False
    for ch in cmdline:
        if ch == '"':
            quoted, have = not quoted, True
        elif ch.isspace() and not quoted:
            if have:
                tokens.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(ch)
            have = True
    if have:
        tokens.append("".join(cur))
    return tokens


def _parts(token: str) -> tuple[str, str | None, list[str]]:
    key, sep, value = token.partition("=")
    if not sep:
        return key, None, []
    return key, value, value.split(",") if key in COMMA_KEYS else [value]


def has(tokens: list[str], arg: str) -> bool:
    """Whether `arg` is in effect in `tokens` (for comma keys: every option of it, in any
    occurrence of the key)."""
    key, value, wanted = _parts(arg)
    if value is None:
        return arg in tokens
    if key not in COMMA_KEYS:
        return arg in tokens
    present = {p for t in tokens if _parts(t)[0] == key for p in _parts(t)[2]}
    return all(p in present for p in wanted)


def matches(token: str, arg: str) -> bool:
    """Whether one token carries `arg`: the same word, or for a comma key every option of `arg`
    among the token's (`amd_iommu=off,fullflush` carries amd_iommu=off)."""
    if token == arg:
        return True
    key, value, wanted = _parts(arg)
    tkey, tvalue, tparts = _parts(token)
    return key in COMMA_KEYS and tkey == key and value is not None and tvalue is not None \
        and all(w in tparts for w in wanted)


def iommu_off_args(vendor: str | None) -> list[str]:
    """Arguments that switch this CPU's IOMMU off, which the vendor defaults take out. (Intel's
    intel_iommu=off is already undone by intel_iommu=on, see UNDOES.)"""
    return ["amd_iommu=off"] if vendor in AMD else []


def undoing(tokens: list[str], arg: str) -> list[str]:
    """Tokens that undo `arg`: an option listed in UNDOES, or for a plain key=value another
    value of the same key (the kernel keeps the last)."""
    key, value, wanted = _parts(arg)
    if value is None:
        return []
    found = []
    for token in tokens:
        tkey, tvalue, tparts = _parts(token)
        if tkey != key or tvalue is None or token == arg:
            continue
        if key in COMMA_KEYS:
            bad = set().union(*(UNDOES.get((key, w), frozenset()) for w in wanted))
            if bad & set(tparts):
                found.append(token)
        else:
            found.append(token)
    return found


def check_arg(arg: str) -> str:
    if not _SAFE_ARG.match(arg):
        raise UsageError(f"kernel argument {arg!r} has characters vfalloc will not write into a "
                         "shell-sourced grub file; use letters, digits and _ . , : = / + @ -")
    return arg


def acs_override(ident: str) -> str:
    m = _ACS_ID.match(ident.strip().removeprefix("id:"))
    if not m:
        raise UsageError(f"--acs-override {ident!r} is not a vendor:device id; write it as 8086:1901 "
                         "(see `vfalloc host acs`)")
    return f"pcie_acs_override=id:{m[1].lower()}:{m[2].lower()}"


def vendor_defaults(vendor: str | None) -> tuple[list[str], str]:
    """The arguments SR-IOV passthrough wants on this CPU, and a note on why."""
    if vendor in INTEL:
        return ["intel_iommu=on", "iommu=pt"], "Intel CPU: VT-d must be switched on"
    if vendor in AMD:
        return ["iommu=pt"], "AMD CPU: the IOMMU is on by default; amd_iommu=on is not an option"
    return [], f"CPU vendor {vendor or 'unknown'}: no IOMMU argument known; pass --add"


def iommu_state(tokens: list[str], vendor: str | None) -> tuple[bool | None, str]:
    """Whether the command line switches the IOMMU on (True), off (False) or leaves it to the
    kernel's default (None), with the argument that decided."""
    if vendor in INTEL:
        if undoing(tokens, "intel_iommu=on"):
            return False, "intel_iommu=off"
        return (True, "intel_iommu=on") if has(tokens, "intel_iommu=on") else (None, "no intel_iommu=on")
    if vendor in AMD:
        if has(tokens, "amd_iommu=off"):
            return False, "amd_iommu=off"
        return True, "AMD IOMMU on by default"
    return None, "not an x86 CPU vendor vfalloc knows"
