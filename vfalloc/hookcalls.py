"""The calls libvirt makes to the qemu hook and what vfalloc does at each: the one table that the
hook file's shell part (templates.hook_script renders its `case` lines from it) and vfalloc.hook
(its dispatch) both read, so the two cannot drift apart (tests/test_hook_rules.py runs every call
and every byte of a name through both).

Facts relied on (libvirt 11.3, src/qemu/qemu_process.c, qemu_migration.c, docs/hooks.rst): a
non-zero exit refuses the start at `prepare begin` and the incoming domain at `migrate begin` and
`restore begin`; at `reconnect begin` it makes libvirt kill the running domain; every other exit
status is logged and ignored.

Pure: no I/O. Must not: import anything the hook does not load anyway (it is read at every call).
"""

from __future__ import annotations

from .fdb import BRIDGED_MARKS
from .model import Phase

# The one word the shell part looks for in the XML: every name vfalloc.hook acts on contains it
# (domxml.NS, domxml.ALIAS_PREFIX; tests/test_hook_file.py checks).
WORD = "vfalloc"
BRIDGED = tuple(mark.decode() for mark in BRIDGED_MARKS)

# What the shell part looks for in the lease table's text: the domain's name as JSON writes it,
# or a lease that waits to be hot-plugged.
NAME = "name"
PENDING = Phase.PENDING


class Rule:
    """One call (`op subop`) vfalloc acts in.
    - refuses: a non-zero exit refuses the domain (libvirt); the hook exits 1 only there.
    - always: the shell part hands every such call to Python; otherwise it does so only when the
      XML holds one of `xml_words` or the table's text holds `table_word` (NAME or PENDING).
    - every_domain: vfalloc.hook acts whatever the XML (its own work is host-wide); otherwise it
      acts for a domain whose XML mentions vfalloc, and:
    - by_name: for a domain whose XML asks for nothing when the table holds a lease of it
      (reserved by hand with `vfalloc alloc`);
    - fdb: for a domain without VFs on a bridge, the PFs' FDB entries (docs/bridges.md): KEEP
      them or DROP them."""

    __slots__ = ("op", "subop", "refuses", "always", "xml_words", "table_word", "every_domain", "by_name", "fdb")

    def __init__(self, op: str, subop: str, *, refuses: bool, always: bool = False,
                 xml_words: tuple[str, ...] = (), table_word: str = "", every_domain: bool = False,
                 by_name: bool = False, fdb: str = "") -> None:
        self.op, self.subop, self.refuses, self.always = op, subop, refuses, always
        self.xml_words, self.table_word = xml_words, table_word
        self.every_domain, self.by_name, self.fdb = every_domain, by_name, fdb


KEEP, DROP = "keep", "drop"

RULES = (
    Rule("prepare", "begin", refuses=True, xml_words=(WORD,), table_word=NAME, by_name=True),
    Rule("started", "begin", refuses=False, xml_words=BRIDGED, table_word=PENDING, by_name=True, fdb=KEEP),
    Rule("release", "end", refuses=False, xml_words=(WORD, *BRIDGED), table_word=NAME, by_name=True, fdb=DROP),
    Rule("migrate", "begin", refuses=True, always=True),
    Rule("restore", "begin", refuses=True, always=True),
    Rule("reconnect", "begin", refuses=False, always=True, every_domain=True),
)
BY_CALL = {(rule.op, rule.subop): rule for rule in RULES}

# The start vfalloc may refuse when it cannot run at all (the hook file's cannot_run): the one
# call that refuses and is not handed over whatever it holds. At migrate and restore libvirt goes
# on with the XML it has when the hook prints nothing.
(START,) = [rule.op for rule in RULES if rule.refuses and not rule.always]

# A domain name the shell part looks up by itself: what JSON writes as it is (printable ASCII but
# `"` and `\`), and no `/` (the name is part of a start stamp's file name, hookfile.StartStamp).
PRINTABLE = (" ", "~")
ESCAPED = '"\\/'


def plain_name(name: str) -> bool:
    """Whether the hook file looks a domain up by its name itself."""
    low, high = PRINTABLE
    return all(low <= c <= high for c in name) and not any(c in name for c in ESCAPED)
