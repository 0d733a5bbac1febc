"""What a libvirt user writes is bounded: a domain XML (whose author need not be root) with names
and values of megabytes costs the hook's lines no more than a small one does: its log lines and
its line on stderr."""

import io

import pytest
from fakehost import i350
from test_hook import Hook, domain_xml

from vfalloc import hook
from vfalloc.errors import MAX_LINE, UsageError, VfallocError, cut
from vfalloc.log import one_line

MB = 1 << 20
STDERR_MAX = len("vfalloc: ") + MAX_LINE  # the hook's one line on stderr, without its newline


@pytest.fixture
def host(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n[pools.san]\npfs = ["enp1s0f2#0"]\n')
    return Hook(scratch, tmp_path)


def vf(attrs: str) -> str:
    return f"<vfalloc:vf {attrs}/>"


def stderr_line(err: bytes) -> str:
    text = err.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text[:300]
    return text[:-1]


@pytest.mark.parametrize("argv_domain, xml", [
    pytest.param("\x1b" * 100_000, domain_xml(1, vf('pool="nosuch"')), id="argv-name-100k-escapes"),
    pytest.param("v" * 100_000, domain_xml(1, vf('pool="nosuch"')), id="argv-name-100k"),
    pytest.param("vm1", domain_xml(1, vf('pool="nosuch"')).replace("<name>vm1<", f"<name>{'n' * MB}<"),
                 id="xml-name-1MB"),
    pytest.param("vm1", domain_xml(1, vf('pool="lan0"')).replace("<uuid>", f"<uuid>{'u' * MB}"), id="uuid-1MB"),
    pytest.param("vm1", domain_xml(1, vf('pool="lan0"')).replace("<domain ", f"<{'d' * 40_000} ", 1)
                 .replace("</domain>", f"</{'d' * 40_000}>"), id="root-tag-40k"),
])
def test_in_process_lines_are_bounded(host, argv_domain, xml):
    err = io.StringIO()
    code = hook.main([argv_domain, "prepare", "begin", "-"], io.BytesIO(xml.encode()), io.StringIO(), err, host.env)
    assert code == 1
    line = stderr_line(err.getvalue().encode())
    assert len(line) <= STDERR_MAX
    logged = host.log.read_text().splitlines()
    assert logged and all(len(x) <= MAX_LINE and x.isprintable() for x in logged)
    assert "prepare begin: refused: " in logged[0]  # the event itself survives the cut


@pytest.mark.parametrize("text, limit, head, tail, total", [
    pytest.param("a" * 2 * MB, MAX_LINE, "aaaa", "aaaa", 2 * MB, id="2MB-printable"),
    pytest.param("\x00\x1b" * MB, MAX_LINE, "\\x00\\x1b", "\\x00\\x1b", 2 * MB, id="2M-control"),
    pytest.param("x" * 100 + "\n" * 5000, 300, "xxxx", "\\n\\n", 5100, id="escapes-past-the-limit"),
    pytest.param("x" * 50 + "\n" * 100, 200, "xxxx", "\\n\\n", 250, id="longer-once-escaped"),
    pytest.param("head " + "\x7f" * MB + " tail", 120, "head ", " tail", MB + 10, id="both-ends-kept"),
])
def test_one_line_is_bounded_and_keeps_both_ends(text, limit, head, tail, total):
    line = one_line(text, limit)
    assert len(line) <= limit and line.isprintable() and "\n" not in line
    assert line.startswith(head) and line.endswith(tail) and f"... ({total} characters) ..." in line


def test_one_line_leaves_a_short_line_alone():
    assert one_line("vm1 prepare begin: nothing to do") == "vm1 prepare begin: nothing to do"
    assert one_line("a\nb") == "a\\nb"


@pytest.mark.parametrize("make, fix", [
    pytest.param(lambda v: VfallocError(f"value {v}; do this"), "; do this", id="vfalloc-error"),
    pytest.param(lambda v: UsageError(f"{v} is no number; write digits"), "; write digits", id="usage-error"),
])
def test_an_error_line_is_at_most_max_line_and_keeps_the_fix(make, fix):
    long = str(make("z" * 2 * MB))
    assert len(long) == MAX_LINE and long.endswith(fix)
    assert f"... ({2 * MB + len(str(make('')))} characters) ..." in long
    assert cut(str(make("z"))) == str(make("z"))
