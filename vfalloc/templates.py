"""Text of the files vfalloc installs on a host. Pure: rendering only, no paths read, no writes."""

from __future__ import annotations

from collections.abc import Mapping

from . import hookcalls

HOOK_MARKER = "# vfalloc libvirt qemu hook"


# Exit codes between the hook file and the Python it starts. vfalloc.hook's own 1 (refused) and 2
# (usage) are passed as 64 + code, so that the shell tells them from a Python that could not run
# at all: that one exits 1 for an uncaught exception, 120 when it cannot flush, 134 when it
# aborts (CPython 3.11, Py_FatalError), and the shell 126 or 127 when it cannot start it.
EXIT_OFFSET = 64
EXIT_CANNOT_LOAD = 70  # the interpreter runs, but vfalloc.hook (or what it needs) cannot be imported

# What the hook file has Python run: vfalloc.hook with libvirt's arguments. A hook process is
# short and makes no garbage cycles: no collector passes
# (docs/performance.md, "What made the difference"). It sits in single quotes in the shell: no
# single quote in it.
HOOK_PYTHON = f"""import sys
try:
    import gc
    gc.disable()
    from vfalloc.hook import main
except BaseException as exc:
    sys.stderr.write(f"cannot import vfalloc.hook: {{type(exc).__name__}}: {{exc}}\\n")
    sys.exit({EXIT_CANNOT_LOAD})
code = main(sys.argv[1:])
sys.exit(code and {EXIT_OFFSET} + code)"""

_HOOK = r"""#!/bin/sh
@MARKER@: hands SR-IOV VFs to domains that ask for them.
# libvirt runs it as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on stdin,
# and waits for it at every start and stop of every domain. Written by `vfalloc install-hook`.
# POSIX sh, grep -F, and GNU sed and stat (coreutils, busybox).
#
# A call vfalloc has nothing to do in ends here, without starting Python; the others go to
# vfalloc.hook (run_hook). Whatever state vfalloc is in (its Python or package gone, its files
# odd), this script exits non-zero only to refuse the start of a domain that asks for a VF:
# libvirt 11.3 kills a running domain whose hook fails at `reconnect begin` (qemuProcessReconnect),
# and refuses a start or an incoming domain whose hook fails at prepare, migrate or restore.
# It writes no file; it reads the lease table and, while `vfalloc start` runs, a start stamp.
python=@PYTHON@
state=${VFALLOC_STATE:-@STATE@}
run=${VFALLOC_RUN_DIR:-@RUN@}
@CONFIG@domain=${1-}
op=${2-}
unset xml

# vfalloc.hook with libvirt's arguments and the XML on stdin, as libvirt sent it; its stdout (the
# XML libvirt goes on with, at migrate and restore) passes through. Ends the script.
run_hook() {
	command -v "$python" >/dev/null 2>&1 || cannot_run "$python is not there"
	export VFALLOC_HOOK_TABLE="$state"  # where this script looked for the domain's name
	# Its stderr is collected, and passed on whole when vfalloc.hook ran, else as the first line
	# of the reason; what the shell says of a Python killed by a signal ("Aborted") is dropped.
	exec 3>&1
	{
		if [ "${xml+set}" ]; then
			errors=$(exec 2>&1; printf '%b' "$xml" | python_hook "$@" >&3)
		else
			errors=$(exec 2>&1; python_hook "$@" >&3)
		fi
		code=$?
	} 2>/dev/null
	case $code in
	0 | @REFUSED@ | @USAGE@)
		[ -z "$errors" ] || printf '%s\n' "$errors" >&2
		[ "$code" -eq 0 ] && exit 0
		exit $((code - @OFFSET@)) ;;
	esac
	cannot_run "$python exited with $code: ${errors%%"$newline"*}"
}
python_hook() {
	"$python" -I -c '@PROGRAM@' "$@"
}
newline='
'

# vfalloc cannot run: only a domain that asks for a VF is refused, and only at prepare.
cannot_run() {
	fix="reinstall vfalloc or run \`vfalloc install-hook\` again; \`vfalloc install-hook --remove\` removes this hook"
	if [ "$op" = @START@ ] && asks_for_vf; then
		echo "vfalloc: cannot run vfalloc ($1), and $domain asks for a VF: $fix" >&2
		exit 1
	fi
	echo "vfalloc: warning: cannot run vfalloc ($1); $domain $op goes on without it: $fix" >&2
	exit 0
}

asks_for_vf() {
	case ${xml-} in *@WORD@*) return 0 ;; esac
	plain_name && table_has "\"$domain\""
}

# A name the lease table holds as it is: JSON escapes no printable ASCII but `"` and `\`; and
# no `/`, which would leave the runtime directory in a stamp's file name.
plain_name() {
	case $domain in
	@NOTPLAIN@) return 1 ;;
	esac
}

# Whether the lease table's text holds $1: 0 yes, 1 no (or no table), 2 cannot tell. A table
# that is a link, a FIFO or no file is left to vfalloc.hook, which says what is wrong with it;
# grep would follow the link, or wait for a writer on the FIFO.
table_has() {
	[ -e "$state" ] || [ -L "$state" ] || return 1
	[ -f "$state" ] && [ ! -L "$state" ] || return 2
	grep -qsF -e "$1" -- "$state"
}

# `vfalloc start` did the work of `prepare begin` for the XML it stamped (hookfile.StartStamp):
# RUN/start.NAME holds a value that only that XML carries. The stamp is read only from a
# directory nobody but root can put a file in (vfalloc.rundir), and removed once taken.
stamp_taken() {
	stamp=$run/start.$domain
	[ -e "$stamp" ] && plain_name && [ -d "$run" ] && [ ! -L "$run" ] && [ -O "$run" ] || return 1
	[ "$(stat -c %a "$run" 2>/dev/null)" = 700 ] && [ -f "$stamp" ] && [ ! -L "$stamp" ] || return 1
	IFS= read -r word <"$stamp" && [ -n "$word" ] || return 1
	case $xml in *"$word"*) rm -f "$stamp"; return 0 ;; esac
	return 1
}

# The calls vfalloc acts in (vfalloc.hookcalls): always handed over, or looked at first.
[ $# -ge 3 ] || run_hook "$@"
case $2.$3 in
@LOOKED@) ;;
@ALWAYS@) run_hook "$@" ;;
*) exit 0 ;;
esac

# The XML, kept byte for byte in a variable: sed doubles each backslash and writes each NUL as
# \0000 (a shell variable holds no NUL), printf %b makes the same bytes of it again (run_hook),
# and the dot keeps trailing newlines from $(...).
xml=$(LC_ALL=C sed -e 's/\\/\\\\/g' -e 's/\x00/\\0000/g'; echo .)
xml=${xml%.}

# libvirt writes a domain's XML in UTF-8 from `<domain ` on (virDomainDefFormat, libvirt 11.3).
# Anything else goes to vfalloc.hook, which parses it: an XML declaration or another encoding,
# a NUL (UTF-16/32), a character reference that may spell a name; and a name the table would
# hold escaped.
case $xml in
'<domain '*) ;;
*) run_hook "$@" ;;
esac
case $xml in
*'&#'* | *'\0000'*) run_hook "$@" ;;
esac
plain_name || run_hook "$@"
if [ "$op" = @START@ ] && stamp_taken; then
	exit 0
fi
case $op in
@LOOKS@
esac
table_has "$look"
[ $? -eq 1 ] && exit 0
run_hook "$@"
"""

def fill(template: str, values: Mapping[str, str]) -> str:
    """Every @NAME@ of `template` replaced by values[NAME] in one pass (a value is never searched
    for placeholders again); a placeholder without a value, or a value without a placeholder,
    is a bug and raises ValueError."""
    import re  # here: `vfalloc start` reads this module for plain_name, and renders nothing

    placeholder = re.compile(r"@([A-Z]+)@")
    names = set(placeholder.findall(template))
    if names != set(values):
        raise ValueError(f"placeholders {sorted(names)} but values for {sorted(values)}")
    return placeholder.sub(lambda m: values[m.group(1)], template)


def hook_script(interpreter: str, state: str, run_dir: str, config: str | None = None) -> str:
    """The hook libvirt runs: a POSIX shell script that starts `interpreter` (with `-I`, which
    keeps PYTHONPATH and the user's site-packages out of a program that runs as root inside
    libvirtd) only for a call vfalloc acts in:
    - `prepare begin`: the XML mentions vfalloc, or the lease table names the domain (a lease
      reserved by hand with `vfalloc alloc`);
    - `started begin`: a lease waits to be hot-plugged, or the domain has an interface on a
      bridge, a network or a macvtap (the PFs' FDB entries);
    - `release end`: any of these;
    - `migrate begin`, `restore begin`, `reconnect begin`: always;
    and for XML that is not in libvirt's own form. What it looks for is a superset of what
    vfalloc.hook acts on: a match only costs a Python start. libvirt runs hooks with a minimal
    environment (PATH, LANG and little else), so the table's path and a config file other than
    the default are written into the script."""
    import shlex

    if "'" in HOOK_PYTHON:
        raise ValueError("the hook's Python cannot be quoted as the script quotes it")
    config_line = (f"[ -n \"${{VFALLOC_CONFIG-}}\" ] || VFALLOC_CONFIG={shlex.quote(config)}\nexport VFALLOC_CONFIG\n"
                   if config else "")
    rules = hookcalls.RULES
    return fill(_HOOK, {
        "MARKER": HOOK_MARKER, "PYTHON": shlex.quote(interpreter), "STATE": shlex.quote(state),
        "RUN": shlex.quote(run_dir), "CONFIG": config_line, "PROGRAM": HOOK_PYTHON, "WORD": hookcalls.WORD,
        "REFUSED": str(EXIT_OFFSET + 1), "USAGE": str(EXIT_OFFSET + 2), "OFFSET": str(EXIT_OFFSET),
        "START": hookcalls.START, "NOTPLAIN": _not_plain_pattern(),
        "LOOKED": " | ".join(f"{r.op}.{r.subop}" for r in rules if not r.always),
        "ALWAYS": " | ".join(f"{r.op}.{r.subop}" for r in rules if r.always),
        "LOOKS": "\n".join(_looks(r) for r in rules if not r.always),
    })


def _quoted(word: str) -> str:
    """`word` as a literal part of a `case` pattern: in double quotes, where only these are special."""
    if any(c in word for c in '"\\$`'):
        raise ValueError(f"{word!r} cannot be a literal of the hook file's patterns")
    return f'"{word}"'


def _looks(rule: hookcalls.Rule) -> str:
    """The `case $op` line of a call the shell part looks at: the XML's words, then the word it
    searches the table for."""
    words = " | ".join(f"*{_quoted(w)}*" for w in rule.xml_words)
    table = '\\"$domain\\"' if rule.table_word == hookcalls.NAME else "'" + _quoted(rule.table_word) + "'"
    return f'{rule.op}) case $xml in {words}) run_hook "$@" ;; esac; look={table} ;;'


def _not_plain_pattern() -> str:
    """The `case` pattern of a name hookcalls.plain_name refuses: a character outside the
    printable range, or one of the escaped ones (a quote or a backslash behind a backslash)."""
    low, high = hookcalls.PRINTABLE
    if any(c in "]!^-" for c in hookcalls.ESCAPED) or low != " " or high in "]!^-\\\"":
        raise ValueError("the name rule cannot be written as these brackets write it")
    escaped = "".join(f"\\{c}" if c in "\"\\'`$" else c for c in hookcalls.ESCAPED)
    return f"*[!\\{low}-{high}]* | *[{escaped}]*"
