"""vfalloc(8), the manual page, generated from the one parser (vfalloc.commandspec): every
command, its description and each of its flags as --help shows them, so the page cannot say
other than the program does. `python3 -m vfalloc.manpage` prints it (the Debian package is built
with it); the fixed sections (files, environment, exit status) are written here.

Written for groff's man macros (groff_man(7)): text lines never start with "." or "'", a
backslash is written \\e, a flag's hyphens \\- (so they print and copy as ASCII hyphen-minus),
and `code` in help texts becomes bold. No date in .TH: the page of one version is the same
whenever it is built. Must not: import anything beyond the parser's records.
"""

from __future__ import annotations

import re
import sys

from . import __version__
from .commandspec import Command, Option, spec

COMMON_GROUP = "where vfalloc looks"

FILES = (
    ("/etc/vfalloc/vfalloc.toml", "the config file: [settings], [pools.NAME] and [pf.NAME] tables"),
    ("/var/lib/vfalloc/state.json", "the lease table; state.json.lock is its lock"),
    ("/etc/libvirt/hooks/qemu.d/vfalloc", "the qemu hook `vfalloc install-hook` writes"),
    ("/run/vfalloc", "runtime files: the config's parse kept for the hook, the hook's refusal and error "
                     "counts (hook-counts.json), the metrics refresh's lock"),
    ("/etc/systemd/system/vfalloc-numvfs.service", "the boot unit `vfalloc host persist` writes"),
    ("/etc/udev/rules.d/70-vfalloc-numvfs.rules", "the udev rules `vfalloc host persist --method udev` writes"),
)
ENVIRONMENT = (
    ("VFALLOC_CONFIG", "the config file (as --config)"),
    ("VFALLOC_STATE", "the lease table (as --state)"),
    ("VFALLOC_SYSFS_ROOT", "where sysfs is mounted (as --sysfs-root)"),
    ("VFALLOC_PROC_ROOT", "where procfs is mounted (as --proc-root)"),
    ("VFALLOC_LIBVIRT_RUN", "libvirt's status directory (default /run/libvirt/qemu)"),
    ("VFALLOC_LOCK_TIMEOUT", "seconds to wait for the lease table's lock (default 10)"),
    ("VFALLOC_HOOK_LOG", "a file the hook appends its log lines to, besides syslog"),
    ("VFALLOC_METRICS_TEXTFILE", "the metrics textfile the hook keeps current"),
    ("VFALLOC_RUN_DIR", "the runtime directory (default /run/vfalloc)"),
    ("LIBVIRT_DEFAULT_URI", "libvirt's URI when --connect is not given"),
)
EXIT_STATUS = (
    ("0", "success"),
    ("1", "an error, one line on standard error naming the thing and the fix; `vfalloc host check`: "
          "a check failed"),
    ("2", "a command line that cannot be used"),
    ("70", "an internal error (a bug); VFALLOC_DEBUG=1 shows the traceback"),
)


def render(root: Command | None = None) -> str:
    root = root or spec()
    out = [
        f'.TH VFALLOC 8 "" "vfalloc {__version__}" "System Administration"',
        ".SH NAME",
        r"vfalloc \- hand SR\-IOV virtual functions to libvirt/QEMU virtual machines",
        ".SH SYNOPSIS",
        ".B vfalloc",
        r"\fICOMMAND\fR [\fIOPTION\fR]...",
        ".br",
        ".B vfalloc host",
        r"\fISUBCOMMAND\fR [\fIOPTION\fR]...",
        ".SH DESCRIPTION",
        _text(root.description),
        ".PP",
        _text("Each VM that asks for VFs (in its domain XML's metadata, or with `vfalloc request`) gets one "
              "from its pool when it starts: the libvirt hook leases it at `prepare begin`, and gives it "
              "back at `release end`. The lease table records who holds what."),
        ".SH COMMANDS",
    ]
    common: list[Option] = []
    for command in root.walk():
        if command is root or command.hidden:
            continue
        common.extend(o for o in command.options if o.group.startswith(COMMON_GROUP) and o not in common)
        out += _command(command)
    out += [".SH COMMON OPTIONS", _text("Commands that read the host take these; a flag beats its VFALLOC_* "
                                        "variable, which beats [settings] in the config file.")]
    for option in common:
        out += _option(option)
    out += _global_options(root)
    out += _table("FILES", FILES)
    out += _table("ENVIRONMENT", ENVIRONMENT)
    out += _table("EXIT STATUS", EXIT_STATUS)
    out += [".SH SEE ALSO", r".BR virsh (1),", r".BR libvirtd (8),", r".BR lspci (8)"]
    return "\n".join(out) + "\n"


def _command(command: Command) -> list[str]:
    lines = [f'.SS "{_plain(_synopsis(command))}"']
    lines.append(_text(command.description or command.help))
    own = [o for o in command.options if not o.group.startswith(COMMON_GROUP) and "--help" not in o.flags]
    for option in own:
        lines += _option(option)
    if command.subcommands:
        lines += [".PP", _text("Subcommands: " + ", ".join(s.path[-1] for s in command.subcommands
                                                           if not s.hidden) + ".")]
    return lines


def _synopsis(command: Command) -> str:
    parts = [command.name]
    for o in command.options:
        if "--help" in o.flags or o.group.startswith(COMMON_GROUP):
            continue
        if o.positional:
            word = o.metavar or o.dest
            parts.append(f"[{word}...]" if o.repeat else word)
        elif o.required:
            parts.append(f"{o.flags[-1]} {o.metavar}")
    if any(not o.positional and not o.required and "--help" not in o.flags for o in command.options):
        parts.append("[OPTION]...")
    if command.subcommands:
        parts.append("SUBCOMMAND")
    return " ".join(parts)


def _option(option: Option) -> list[str]:
    if option.positional:
        tag = rf"\fI{_plain(option.metavar or option.dest)}\fR"
    else:
        value = rf" \fI{_plain(option.metavar)}\fR" if option.metavar else ""
        tag = ", ".join(rf"\fB{_plain(flag)}\fR{value}" for flag in option.flags)
    text = option.help
    if option.choices and not option.positional and not all(c in text for c in option.choices):
        text = (text + "; " if text else "") + "one of " + ", ".join(option.choices)
    if option.repeat and not option.positional:
        text += " (may be given more than once)"
    return [".TP", tag, _text(text or "see the description above")]


def _global_options(root: Command) -> list[str]:
    lines = [".SH OPTIONS"]
    for option in root.options:
        lines += _option(option)
    return lines


def _table(title: str, rows) -> list[str]:
    lines = [f".SH {title}"]
    for key, text in rows:
        lines += [".TP", rf"\fB{_plain(key)}\fR", _text(text)]
    return lines


def _plain(text: str) -> str:
    """Escaped for roff, inside a line: backslashes, hyphens."""
    return text.replace("\\", r"\e").replace("-", r"\-")


def _text(text: str) -> str:
    """A paragraph: roff-escaped, `code` in bold, no line starting with a control character."""
    text = text.replace("\\", r"\e")
    text = re.sub(r"`([^`]+)`", lambda m: rf"\fB{m[1].replace('-', chr(92) + '-')}\fR", text)
    text = re.sub(r"(^|[\s(\[/])(--?)(?=[A-Za-z])", lambda m: m[1] + m[2].replace("-", "\\-"), text)
    return "\n".join(r"\&" + line if line.startswith((".", "'")) else line for line in text.splitlines() or [""])


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
