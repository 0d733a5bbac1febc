"""Completion scripts for bash and zsh, generated from the one parser (vfalloc.commandspec), and
the live values they ask `vfalloc __complete KIND` for: pool names, PF interfaces, and the domains
and UUIDs in the lease table.

Both scripts share the generated tables, written as shell functions in the syntax bash and zsh
have in common (`case`, `printf`):
  _vfalloc_subs PATH       the subcommands of a command ("" is vfalloc itself, "host" ...)
  _vfalloc_flags PATH      its flags, one "flag<TAB>help" a line
  _vfalloc_kind PATH ARG   what a flag's value, or positional #N, is: "choices a b", "file",
                           "dir", "pools", "pfs", "pfspec", "domains", "uuids" or "value"
                           (something to type); exit 1 for a flag that takes no value.
The walk over the words typed is the same in both; only the way candidates are handed to the
shell differs (COMPREPLY and compgen; compadd, _describe and _files).

Must not: read the host when a script is printed (the scripts ask the helper at completion time).
"""

from __future__ import annotations

import shlex

from .commandspec import Command, Option

# What the value of an argument is, by its dest in cli.py; then by its metavar (FILE, PATH: a
# file, DIR: a directory). Everything else is typed (a number, a MAC, a URI).
LIVE = {"pool": "pools", "domain": "domains", "uuid": "uuids", "pf": "pfs", "pfs": "pfs", "device": "pfs",
        "specs": "pfspec", "exe": "file"}
BY_METAVAR = {"FILE": "file", "PATH": "file", "DIR": "dir"}
HELPER_KINDS = ("pools", "pfs", "domains", "uuids")
PASSED_ON = ("--config", "--state", "--sysfs-root", "--proc-root")  # to the helper, as typed


def kind(option: Option) -> str | None:
    """What completes the option's value; None for a flag without one."""
    if not option.takes_value:
        return None
    if option.choices:
        return "choices " + " ".join(option.choices)
    if option.dest in LIVE:
        return LIVE[option.dest]
    return BY_METAVAR.get(option.metavar or "", "value")


def _key(command: Command) -> str:
    return " ".join(command.path)


def tables(root: Command) -> str:
    commands = [c for c in root.walk() if not c.hidden]
    subs = [f"    {shlex.quote(_key(c))}) printf '%s\\n' {' '.join(shlex.quote(s.path[-1]) for s in c.subcommands if not s.hidden)} ;;"
            for c in commands if any(not s.hidden for s in c.subcommands)]
    describe = [f"    {shlex.quote(_key(c))}) printf '%s\\n' "
                + " ".join(shlex.quote(f"{s.path[-1]}:{s.help}") for s in c.subcommands if not s.hidden) + " ;;"
                for c in commands if any(not s.hidden for s in c.subcommands)]
    flags = []
    kinds = []
    for c in commands:
        lines = [f"{flag}\t{o.help}" for o in c.options for flag in o.flags]
        if lines:
            flags.append(f"    {shlex.quote(_key(c))}) printf '%s\\n' {' '.join(shlex.quote(x) for x in lines)} ;;")
        position = 0
        for o in c.options:
            what = kind(o)
            if o.positional:
                pattern = f"{_key(c)}|#" + ("*" if o.repeat else str(position))
                position += 1
                kinds.append(f"    {shlex.quote(pattern.removesuffix('*'))}{'*' if o.repeat else ''}) "
                             f"echo {shlex.quote(what or 'value')} ;;")
            elif what is not None:
                for flag in o.flags:
                    kinds.append(f"    {shlex.quote(f'{_key(c)}|{flag}')}) echo {shlex.quote(what)} ;;")
    return "\n".join([
        "_vfalloc_subs() {", '  case "$1" in', *subs, "  esac", "}",
        "_vfalloc_describe() {", '  case "$1" in', *describe, "  esac", "}",
        "_vfalloc_flags() {", '  case "$1" in', *flags, "  esac", "}",
        "_vfalloc_kind() {", '  case "$1|$2" in', *kinds, "    *) return 1 ;;", "  esac", "}",
    ]) + "\n"


# The walk over the words before the cursor; sets vpath (the command path), npos (positionals after the command),
# vpath, npos, prev_kind (the kind of the value being typed, if the word before takes one) and passed (the
# common flags to hand on to the helper). $1.. are the words before the cursor, without argv[0].
WALK = r"""
_vfalloc_walk() {
  vpath= npos=0 prev_kind= passed=
  local w k s expect_value=
  for w in "$@"; do
    if [ -n "$expect_value" ]; then
      case " __PASSED__ " in *" $expect_value "*) passed="$passed $expect_value $w" ;; esac
      expect_value=
      continue
    fi
    case "$w" in
      --*=*) continue ;;
      -*)
        if _vfalloc_kind "$vpath" "$w" >/dev/null; then expect_value=$w; fi
        continue ;;
    esac
    k=
    for s in $(_vfalloc_subs "$vpath"); do
      if [ "$s" = "$w" ]; then k=1; fi
    done
    if [ -n "$k" ]; then
      vpath=${vpath:+$vpath }$w
      npos=0
    else
      npos=$((npos + 1))
    fi
  done
  if [ -n "$expect_value" ]; then
    prev_kind=$(_vfalloc_kind "$vpath" "$expect_value")
  fi
}
""".replace("__PASSED__", " ".join(PASSED_ON))

BASH_DRIVER = r"""
_vfalloc_values() {
  # $1: the vfalloc being completed, $2: the kind; the common flags typed are passed on
  "$1" __complete $passed "$2" 2>/dev/null
}

_vfalloc() {
  local cur=${COMP_WORDS[COMP_CWORD]} vpath npos prev_kind passed what
  _vfalloc_walk "${COMP_WORDS[@]:1:COMP_CWORD-1}"
  if [ -n "$prev_kind" ]; then
    what=$prev_kind
  elif [ "${cur#-}" != "$cur" ]; then
    COMPREPLY=($(compgen -W "$(_vfalloc_flags "$vpath" | cut -f1)" -- "$cur"))
    return 0
  elif [ -n "$(_vfalloc_subs "$vpath")" ]; then
    COMPREPLY=($(compgen -W "$(_vfalloc_subs "$vpath")" -- "$cur"))
    return 0
  else
    what=$(_vfalloc_kind "$vpath" "#$npos") || return 0
  fi
  case "$what" in
    choices\ *) COMPREPLY=($(compgen -W "${what#choices }" -- "$cur")) ;;
    file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
    dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")) ;;
    pfspec)
      compopt -o nospace 2>/dev/null
      COMPREPLY=($(compgen -W "$(_vfalloc_values "${COMP_WORDS[0]}" pfs | sed 's/$/=/')" -- "$cur")) ;;
    pools|pfs|domains|uuids)
      COMPREPLY=($(compgen -W "$(_vfalloc_values "${COMP_WORDS[0]}" "$what")" -- "$cur")) ;;
    *) COMPREPLY=() ;;
  esac
  return 0
}

complete -F _vfalloc vfalloc
"""

ZSH_DRIVER = r"""
_vfalloc() {
  local vpath npos prev_kind passed what
  local -a items
  _vfalloc_walk "${(@)words[2,CURRENT-1]}"
  if [[ -n $prev_kind ]]; then
    what=$prev_kind
  elif [[ $PREFIX == -* ]]; then
    items=(${(f)"$(_vfalloc_flags "$vpath" | sed 's/:/\\:/g; s/	/:/')"})
    _describe -t options 'option' items
    return
  elif [[ -n "$(_vfalloc_subs "$vpath")" ]]; then
    items=(${(f)"$(_vfalloc_describe "$vpath")"})
    _describe -t commands 'vfalloc command' items
    return
  else
    what=$(_vfalloc_kind "$vpath" "#$npos") || return 1
  fi
  case $what in
    choices\ *) items=(${=what#choices }); compadd -a items ;;
    file) _files ;;
    dir) _files -/ ;;
    pfspec) items=(${(f)"$(${words[1]} __complete ${=passed} pfs 2>/dev/null)"}); compadd -S '=' -a items ;;
    pools|pfs|domains|uuids)
      items=(${(f)"$(${words[1]} __complete ${=passed} $what 2>/dev/null)"}); compadd -a items ;;
    *) _message 'value' ;;
  esac
}

if [[ $funcstack[1] == _vfalloc ]]; then
  _vfalloc "$@"
else
  compdef _vfalloc vfalloc
fi
"""


def script(shell: str, root: Command) -> str:
    head = {"bash": "# bash completion for vfalloc", "zsh": "#compdef vfalloc"}[shell]
    note = f"# Generated from vfalloc's argument parser by `vfalloc completion {shell}`.\n"
    driver = BASH_DRIVER if shell == "bash" else ZSH_DRIVER
    return f"{head}\n{note}{tables(root)}{WALK}{driver}"


def values(kind_name: str, ctx) -> list[str]:
    """The live values of one kind: configured pool names, PF interface names (the PCI address of
    a PF without one), the domain names or UUIDs in the lease table."""
    if kind_name == "pools":
        return sorted(p.name for p in ctx.pools)
    if kind_name == "pfs":
        return sorted(pf.netdev or str(pf.address) for pf in ctx.host.pfs)
    table = ctx.store.read()
    if kind_name == "domains":
        return sorted({lease.domain for lease in table.leases})
    return sorted({lease.uuid for lease in table.leases})
