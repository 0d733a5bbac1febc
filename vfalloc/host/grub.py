"""GRUB's kernel command line as the admin wrote it: /etc/default/grub, then every
/etc/default/grub.d/*.cfg in glob order (Debian/Ubuntu grub-mkconfig sources them in that order,
so the last assignment wins). Reads the shell assignments of GRUB_CMDLINE_LINUX (and _DEFAULT),
evaluates them the way /bin/sh would (quotes, backslashes, $VAR and ${VAR}), and edits them in
place: new arguments go into the assignment the others build on, inside its own quotes;
arguments to remove are cut out where they are written literally.

Only those two variables are evaluated, and the variables their values name. Every other line
is left as it is, byte for byte, whatever shell it holds: stock files compute GRUB_DISTRIBUTOR
with backquotes (Debian, Ubuntu) or $(sed ...) (RHEL, Fedora), and that is never run or refused.

Pure text in and out: rootfs reads and writes the files, boot_config decides what to want. Refuses
(GrubError, with file and line) a command-line value it cannot evaluate safely: command
substitution, backquotes, ${VAR:-...} forms, unterminated quotes. Assignments inside `if` blocks
are taken as if they all ran.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import HostError
from . import cmdline

MAIN = "/etc/default/grub"
DROPIN_DIR = "/etc/default/grub.d"
LINUX, DEFAULT = "GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"
CMDLINE_VARS = (LINUX, DEFAULT)
_ASSIGN = re.compile(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=", re.M)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:=/+@-]*$")
_ENDERS = " \t\n;&|<>()"


class GrubError(HostError):
    def __init__(self, where: str, problem: str, var: str = LINUX) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}; edit {var} there by hand (vfalloc writes only plain "
                         "quoted words)")


class _Unterminated(Exception):
    def __init__(self, what: str) -> None:
        self.what = what


@dataclass(frozen=True)
class Assignment:
    file: str
    var: str
    line: int
    start: int     # offset of the value in the file's text
    end: int
    raw: str
    problem: str | None = None   # why the value's end could not be found (then raw runs to the line's end)
    label: str = ""              # how messages name the file (under --root); default: `file`

    @property
    def where(self) -> str:
        return f"{self.label or self.file}:{self.line}"


@dataclass(frozen=True)
class Token:
    text: str
    start: int     # offsets in the assignment's raw value
    end: int
    literal: bool  # written plainly, so it can be cut out


def _word_end(text: str, i: int) -> int:
    while i < len(text) and text[i] not in _ENDERS:
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch in "\"'`":
            i = _closing(text, i) + 1
        elif text.startswith("$(", i):
            i = _paren_end(text, i + 2) + 1
        else:
            i += 1
    return min(i, len(text))


def _closing(text: str, i: int) -> int:
    quote, j = text[i], i + 1
    while j < len(text) and text[j] != quote:
        if quote != "'" and text[j] == "\\":
            j += 2
        elif quote == '"' and text.startswith("$(", j):
            j = _paren_end(text, j + 2) + 1
        elif quote == '"' and text[j] == "`":
            j = _closing(text, j) + 1
        else:
            j += 1
    if j >= len(text):
        raise _Unterminated(f"{quote} quote")
    return j


def _paren_end(text: str, j: int) -> int:
    """The `)` closing a $( opened just before `j`."""
    depth = 1
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch in "\"'`":
            j = _closing(text, j)
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise _Unterminated("$( command substitution")


def assignments(file: str, text: str, label: str = "") -> list[Assignment]:
    """Every `NAME=value` at the start of a line, in order; a value spanning lines (quotes) hides
    what looks like assignments inside it."""
    found: list[Assignment] = []
    pos = 0
    while True:
        m = _ASSIGN.search(text, pos)
        if m is None:
            return found
        line = text.count("\n", 0, m.start()) + 1
        problem = None
        try:
            end = _word_end(text, m.end())
        except _Unterminated as exc:
            problem = f"unterminated {exc.what}"
            newline = text.find("\n", m.end())
            end = len(text) if newline < 0 else newline
        found.append(Assignment(file, m[1], line, m.end(), end, text[m.end():end], problem, label))
        pos = max(end, m.end() + 1)


Lookup = Callable[[str], str]


def evaluate(raw: str, env: Mapping[str, str] | Lookup, where: str, var: str = LINUX) -> str:
    """The value /bin/sh assigns for the word `raw` (no field splitting in an assignment).
    `env` gives the value of a variable the word names."""
    lookup: Lookup = env if callable(env) else (lambda name, m=env: m.get(name, ""))  # type: ignore[misc]
    out, i, quote = [], 0, None
    while i < len(raw):
        ch = raw[i]
        if quote == "'":
            if ch == "'":
                quote = None
            else:
                out.append(ch)
            i += 1
        elif ch == "\\":
            nxt = raw[i + 1:i + 2]
            if quote == '"' and nxt not in ('$', '`', '"', '\\', '\n'):
                out.append(ch)  # inside "...", a backslash escapes only $ ` " \ and newline
                i += 1
                continue
            if nxt != "\n":
                out.append(nxt)
            i += 2
        elif ch in "\"'" and (quote is None or ch == quote):
            quote = None if quote else ch
            i += 1
        elif ch == "`":
            raise GrubError(where, "uses backquote command substitution", var)
        elif ch == "$":
            value, i = _expand(raw, i, lookup, where, var)
            out.append(value)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _expand(raw: str, i: int, lookup: Lookup, where: str, var: str) -> tuple[str, int]:
    if raw.startswith("${", i):
        close = raw.find("}", i)
        name = raw[i + 2:close] if close > 0 else ""
        if not _NAME.fullmatch(name):
            raise GrubError(where, f"uses {raw[i:close + 1 if close > 0 else None]}, which vfalloc does "
                            "not evaluate", var)
        return lookup(name), close + 1
    m = _NAME.match(raw, i + 1)
    if m:
        return lookup(m[0]), m.end()
    if raw[i + 1:i + 2] == "(":
        raise GrubError(where, "uses $(...) command substitution", var)
    return "$", i + 1


def tokens(raw: str) -> list[Token]:
    """The kernel arguments inside one assignment's raw value, with their spans. A token is
    `literal` when its span holds no quote, backslash or $ (so cutting it out is safe)."""
    found: list[Token] = []
    start, quote, i = None, None, 0
    while i <= len(raw):
        ch = raw[i] if i < len(raw) else " "
        if ch == "\\" and quote != "'":
            start = i if start is None else start
            i += 2
            continue
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        elif ch.isspace() and (quote or i == len(raw)):
            if start is not None:
                span = raw[start:i].rstrip("\"'")
                found.append(Token(span, start, start + len(span), bool(_PLAIN.match(span))))
                start = None
        elif start is None and not ch.isspace():
            start = i
        i += 1
    return found


def _extends(a: Assignment) -> bool:
    """Whether the value takes in the variable's earlier value ($VAR or ${VAR} in it)."""
    return bool(re.search(rf"\$(?:{a.var}\b|\{{{a.var}\}})", a.raw))


@dataclass
class Grub:
    """The grub files of a root and the evaluated command line."""

    texts: dict[str, str]
    found: list[Assignment]
    label: Callable[[str], str] | None = None   # how messages name a file (RootFS.shown)
    _memo: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, texts: dict[str, str], label: Callable[[str], str] | None = None) -> Grub:
        found = [a for file, text in texts.items()
                 for a in assignments(file, text, label(file) if label else "")]
        grub = cls(texts, found, label)
        grub.values()  # refuse now what cannot be evaluated
        return grub

    def _value_of(self, index: int, needed_by: Assignment | None = None) -> str:
        if index in self._memo:
            return self._memo[index]
        a = self.found[index]
        var = needed_by.var if needed_by else a.var
        if a.problem:
            raise GrubError(a.where, a.problem + (f" (its value is needed for {needed_by.var} at "
                            f"{needed_by.where})" if needed_by else ""), var)

        def lookup(name: str) -> str:
            for j in range(index - 1, -1, -1):
                if self.found[j].var == name:
                    return self._value_of(j, needed_by or a)
            return ""

        value = evaluate(a.raw, lookup, a.where, var)
        self._memo[index] = value
        return value

    def values(self) -> dict[str, str]:
        vals = {LINUX: "", DEFAULT: ""}
        for i, a in enumerate(self.found):
            if a.var in CMDLINE_VARS:
                vals[a.var] = self._value_of(i)
        return vals

    def cmdline_tokens(self) -> list[str]:
        vals = self.values()
        return cmdline.split(f"{vals[LINUX]} {vals[DEFAULT]}")

    def effective(self, var: str = LINUX) -> Assignment | None:
        """The assignment new arguments go into: the last one of `var` that does not build on an
        earlier value (later ones that append to it, like Proxmox's grub.d/zfs.cfg, keep it)."""
        chain = [a for a in self.found if a.var == var]
        for a in reversed(chain):
            if not _extends(a):
                return a
        return chain[-1] if chain else None


def edit(grub: Grub, add: list[str], cut: list[str]) -> dict[str, str]:
    """New texts of the files that change: `cut` tokens removed wherever they are written
    literally in a GRUB_CMDLINE_LINUX(_DEFAULT) assignment, `add` appended to the effective
    GRUB_CMDLINE_LINUX (or a new line in /etc/default/grub when none exists)."""
    edits: dict[str, list[tuple[int, int, str]]] = {}
    for a in grub.found:
        if a.var in CMDLINE_VARS:
            for tok in tokens(a.raw):
                if tok.literal and tok.text in cut:
                    s, e = _cut_span(a.raw, tok)
                    edits.setdefault(a.file, []).append((a.start + s, a.start + e, ""))
    if add:
        _append(grub, add, edits)
    return {file: apply_edits(grub.texts[file], spans) for file, spans in edits.items()}


def _cut_span(raw: str, tok: Token) -> tuple[int, int]:
    s, e = tok.start, tok.end
    if s > 0 and raw[s - 1] in " \t":
        while s > 0 and raw[s - 1] in " \t":
            s -= 1
    else:
        while e < len(raw) and raw[e] in " \t":
            e += 1
    return s, e


def _append(grub: Grub, add: list[str], edits: dict[str, list[tuple[int, int, str]]]) -> None:
    words = " ".join(add)
    target = grub.effective(LINUX)
    if target is None:
        text = grub.texts.get(MAIN)
        if text is None:
            raise GrubError(grub.label(MAIN) if grub.label else MAIN,
                            "does not exist (is this a GRUB host, and is --root right?)")
        sep = "" if text.endswith("\n") or not text else "\n"
        edits.setdefault(MAIN, []).append((len(text), len(text), f'{sep}{LINUX}="{words}"\n'))
        return
    edits.setdefault(target.file, []).append(_append_span(target, words))


def _append_span(a: Assignment, words: str) -> tuple[int, int, str]:
    raw = a.raw
    if raw == "":
        return a.start, a.end, f'"{words}"'
    opening = _last_quoted(raw)
    if opening is not None:
        inner = raw[opening + 1:-1]
        space = "" if inner == "" or inner[-1] in " \t\n" else " "
        return a.end - 1, a.end - 1, f"{space}{words}"
    if _PLAIN.match(raw):
        return a.start, a.end, f'"{raw} {words}"'
    return a.end, a.end, f'" {words}"'


def _last_quoted(raw: str) -> int | None:
    """Where the quoted part that ends `raw` opens, or None when `raw` does not end in one."""
    quote, opened, last, i = None, -1, None, 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and quote != "'":
            i += 2
            continue
        if quote is None and ch in "\"'":
            quote, opened = ch, i
        elif ch == quote:
            quote, last = None, (opened if i == len(raw) - 1 else None)
        i += 1
    return last


def apply_edits(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Apply the edits; cuts that overlap (two neighbours each taking the blank between them)
    become one."""
    merged: list[tuple[int, int, str]] = []
    for start, end, new in sorted(spans):
        if merged and not new and not merged[-1][2] and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]), "")
        else:
            merged.append((start, end, new))
    for start, end, new in sorted(merged, reverse=True):
        text = text[:start] + new + text[end:]
    return text
