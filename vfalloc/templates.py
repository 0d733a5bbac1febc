"""Text of the files vfalloc installs on a host. Pure: rendering only, no paths read, no writes."""

from __future__ import annotations

from .fdb import BRIDGED_MARKS
from .model import Phase

HOOK_MARKER = "# vfalloc libvirt qemu hook"


def plain_name(name: str) -> bool:
    """Whether the hook file looks a domain up by its name itself (in the lease table as JSON
    writes it, and in file names): printable ASCII without a quote, a backslash or a slash."""
    return all(" " <= c <= "~" for c in name) and not any(c in name for c in "\"\\/")


# The one word the shell part looks for in the XML: every name vfalloc.hook acts on contains it
# (NS, ALIAS_PREFIX; tests/test_hook_file.py checks).
WORD = "vfalloc"

# What the hook file has Python run: vfalloc.hook with libvirt's arguments.
HOOK_PYTHON = "import gc, sys\ngc.disable()\nfrom vfalloc.hook import main\nsys.exit(main(sys.argv[1:]))"

_HOOK = r"""#!/bin/sh
@MARKER@: hands SR-IOV VFs to domains that ask for them.
# libvirt runs it as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on stdin,
# and waits for it at every start and stop of every domain. Written by `vfalloc install-hook`.
# A call vfalloc has nothing to do in ends here, without starting Python; the others go to
# vfalloc.hook with the XML as libvirt sent it.
python=@PYTHON@
state=${VFALLOC_STATE:-@STATE@}
run=${VFALLOC_RUN_DIR:-@RUN@}
@CONFIG@
xml=
vfalloc() {
	export VFALLOC_HOOK_TABLE="$state"  # where this script looked for the domain's name
	[ -z "$xml" ] || export VFALLOC_HOOK_XML="$xml"  # vfalloc.hook removes it first thing
	# A hook process lives for some 50 ms and makes no garbage cycles: no collector passes.
	exec "$python" -I -c '@PROGRAM@' "$@"
}

[ $# -ge 3 ] || vfalloc "$@"
case $2.$3 in
prepare.begin | started.begin | release.end) ;;
migrate.begin | restore.begin | reconnect.begin) vfalloc "$@" ;;
*) exit 0 ;;
esac

# The lease table is searched for the domain's name as JSON writes it, which is the name itself
# for a plain_name: printable ASCII without a quote or a backslash, and no slash (the name is
# also part of a file name below).
case $1 in
*[!\ -~]* | *[\"\\/]*) vfalloc "$@" ;;
esac

# The XML is kept in the domain's own file (libvirt runs one hook call of a domain at a time),
# read here and read again from its start by vfalloc.hook when it is needed, which removes it;
# otherwise it is emptied (a shell builtin: no process for rm, each one costs under TCG).
[ -d "$run" ] || mkdir -p -m 0700 "$run" 2>/dev/null || vfalloc "$@"
file=$run/hook-xml.$1
if ! cat 2>/dev/null >"$file"; then
	true 2>/dev/null >"$file"
	echo "vfalloc: cannot write the domain XML to $run: free space there (or make it a writable directory), then start the domain again" >&2
	[ "$2" != prepare ] || exit 1
	exit 0
fi
xml=$file
IFS= read -r head <"$xml" || :
exec <"$xml"

# libvirt writes a domain's XML in UTF-8 from `<domain ` on (virDomainDefFormat, libvirt 11.3).
# Anything else goes to vfalloc.hook, which parses it: an XML declaration or another encoding,
# a NUL (UTF-16/32), a character reference that may spell a name.
case $head in
'<domain '*) ;;
*) vfalloc "$@" ;;
esac
# `vfalloc start` did the work of `prepare begin` for the XML it stamped (hookfile.StartStamp).
stamp=$run/start.$1
if [ "$2" = prepare ] && [ -f "$stamp" ] && IFS= read -r word <"$stamp" && [ -n "$word" ] &&
	grep -qF -e "$word" "$xml"; then
	true 2>/dev/null >"$xml"
	rm -f "$stamp"
	exit 0
fi
case $2 in
prepare) look="@WORD@|\"\\Q$1\\E\"" ;;
started) look="@BRIDGED@|\"@PENDING@\"" ;;
release) look="@WORD@|@BRIDGED@|\"\\Q$1\\E\"" ;;
esac
[ -e "$state" ] && table=$state || table=/dev/null
grep -qsaP -e "&#|\\x00|$look" "$xml" "$table"
if [ $? -eq 1 ]; then
	true 2>/dev/null >"$xml"
	exit 0
fi
vfalloc "$@"
"""


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
    import shlex  # here: `vfalloc start` reads this module for plain_name, and renders nothing

    bridged = "|".join(m.decode() for m in BRIDGED_MARKS)
    config_line = (f"[ -n \"${{VFALLOC_CONFIG-}}\" ] || VFALLOC_CONFIG={shlex.quote(config)}\nexport VFALLOC_CONFIG\n"
                   if config else "")
    return (_HOOK.replace("@MARKER@", HOOK_MARKER).replace("@PYTHON@", shlex.quote(interpreter))
            .replace("@STATE@", shlex.quote(state)).replace("@RUN@", shlex.quote(run_dir))
            .replace("@CONFIG@\n", config_line).replace("@PROGRAM@", HOOK_PYTHON).replace("@WORD@", WORD)
            .replace("@BRIDGED@", bridged).replace("@PENDING@", Phase.PENDING))
