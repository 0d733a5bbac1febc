"""What a libvirt user writes is bounded: a domain XML (whose author need not be root) with names
and values of megabytes costs the hook's files and lines no more than a small one does. Through
the hook file as libvirt runs it and in-process: the hook's counts (`hook-counts.json`, the
metrics' labels), its log lines, its line on stderr, and a counts file left huge by a vfalloc
that kept every name."""

import io
import json
import subprocess
import sys

import pytest
from fakehost import i350
from hookfiles import hook_file
from scrape import NOWHERE, families, samples
from test_hook import Hook, domain_xml

from vfalloc import hook
from vfalloc.errors import MAX_LINE, UsageError, VfallocError, cut
from vfalloc.log import one_line
from vfalloc.metrics import counts as hook_counts

MB = 1 << 20
POOLS = {"lan0", "san"}
STDERR_MAX = len("vfalloc: ") + MAX_LINE  # the hook's one line on stderr, without its newline
# One entry of hook-counts.json as indent=1 writes it, for a pool name of the config (64
# characters at most) or "(unknown)", an operation of libvirt's and a count of 20 digits.
ENTRY_MAX = 200


@pytest.fixture
def host(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n[pools.san]\npfs = ["enp1s0f2#0"]\n')
    return Hook(scratch, tmp_path)


def vf(attrs: str) -> str:
    return f"<vfalloc:vf {attrs}/>"


def libvirt_xml(n: int, requests: str) -> str:
    """domain_xml with its first line ending after `<domain ...>`, as libvirt writes it (indented,
    an element a line): the hook file reads that first line with the shell's `read`."""
    return domain_xml(n, requests).replace(">", ">\n", 1)


# A request with a value of megabytes, and a word of the refusal that must survive the cut.
HOSTILE = [
    pytest.param(vf(f'pool="{"p" * MB}"'), "no pool named", id="pool-1MB"),
    pytest.param(vf(f'pool="lan0" required="{"y" * 2 * MB}"'), "required=", id="required-2MB"),
    pytest.param(vf(f'pool="lan0" vlan="{"v" * 2 * MB}"'), "vlan=", id="vlan-2MB"),
    pytest.param(vf(f'pool="lan0" trust="{"t" * 2 * MB}"'), "trust=", id="trust-2MB"),
    pytest.param(vf(f'pool="lan0" type="{"h" * 2 * MB}"'), "type=", id="type-2MB"),
    pytest.param(vf(f'pool="lan0" mac="{"m" * 2 * MB}"'), "mac=", id="mac-2MB"),
    pytest.param(vf(f'pool="lan0" {"a" * 40_000}="1"'), "unknown attribute", id="attribute-name-40k"),
    pytest.param(vf(f'pool="lan0" required="{chr(0x200b) * MB}"'), "required=", id="required-1M-unprintable"),
]


def stderr_line(err: bytes) -> str:
    text = err.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text[:300]
    return text[:-1]


@pytest.mark.parametrize("request_xml, word", HOSTILE)
def test_a_refusal_through_the_hook_file_is_small_everywhere(host, scratch, request_xml, word):
    """Three refused starts, each with a value of megabytes: one short line on stderr each, log
    lines under MAX_LINE, and one small entry in hook-counts.json (no pool of the config is
    concerned: each is counted under "(unknown)")."""
    for n in (1, 2, 3):
        r = host.run(f"vm{n}", "prepare", "begin", xml=libvirt_xml(n, request_xml))
        assert r.returncode == 1, r.stderr[:300]
        line = stderr_line(r.stderr)
        assert line.startswith("vfalloc: ") and word in line and len(line) <= STDERR_MAX
        assert len(line) < 1000  # the value itself is shown cut (errors.shown), not just the line
    lines = host.log.read_text().splitlines()
    assert [x.split(": refused: ")[0] for x in lines] == [f"vm{n} prepare begin" for n in (1, 2, 3)]
    assert all(len(x) <= MAX_LINE for x in lines) and host.log.stat().st_size <= 3 * (4 * MAX_LINE + 1)
    counts = scratch.run_dir / "hook-counts.json"
    assert counts.stat().st_size <= ENTRY_MAX + 50  # one entry and the envelope
    assert json.loads(counts.read_text())["counts"] == [
        {"kind": "refused", "pool": "(unknown)", "operation": "prepare", "count": 3}]


def test_pools_not_configured_share_one_label_in_file_and_metrics(host, scratch):
    """Refusals naming forty pools the config does not define, two of them of 1 MB: the file
    holds (pools + 1) entries at most, and the exposition's labels are the config's pools and
    (unknown)."""
    names = [f"nosuch{n}" for n in range(38)] + ["x" * MB, "y" * MB]
    for n, name in enumerate(names):
        xml = domain_xml(n, vf(f'pool="{name}"')).encode()
        assert hook.main([f"vm{n}", "prepare", "begin", "-"], io.BytesIO(xml), io.StringIO(), io.StringIO(),
                         host.env) == 1
    r = host.run("vm99", "prepare", "begin", xml=domain_xml(99, vf('pool="san"') + vf('pool="san"')))
    assert r.returncode == 1 and b"no free VF in pool san" in r.stderr
    counts = scratch.run_dir / "hook-counts.json"
    kept = {(c["kind"], c["pool"], c["operation"]): c["count"] for c in json.loads(counts.read_text())["counts"]}
    assert kept == {("refused", "(unknown)", "prepare"): 40, ("refused", "san", "prepare"): 1}
    assert counts.stat().st_size <= (len(POOLS) + 1) * ENTRY_MAX
    result = scratch.run("metrics", *NOWHERE)
    assert result.code == 0, result.err
    refused = {(s["pool"], s["operation"]): v for s, v in samples(families(result.out), "vfalloc_hook_refusals")}
    assert refused == {("(unknown)", "prepare"): 40, ("san", "prepare"): 1}
    assert max(len(line) for line in result.out.splitlines()) < 1000


def test_operations_not_libvirts_share_one_label_and_every_handled_one_is_known():
    assert {op for op, _ in hook.HANDLERS} <= set(hook_counts.OPERATIONS)
    assert hook_counts.operation_label("prepare") == "prepare"
    assert hook_counts.operation_label("o" * MB) == hook_counts.OTHER_OPERATION


def test_a_leftover_file_is_folded_onto_the_configs_pools(host, scratch):
    """A file under MAX_BYTES that an older vfalloc wrote with every name a domain XML gave is
    read, its counts added up under the labels of now, by `vfalloc metrics` and by the next
    refusal, which writes it back small."""
    items = [{"kind": "refused", "pool": f"{n:0600d}", "operation": "prepare", "count": 1} for n in range(1000)]
    items += [{"kind": "failed", "pool": "san", "operation": "o" * 500, "count": 2},
              {"kind": "refused", "pool": "san", "operation": "prepare", "count": 5},
              {"kind": "failed", "pool": "", "operation": "release", "count": 1}]
    scratch.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    counts = scratch.run_dir / "hook-counts.json"
    counts.write_text(json.dumps({"version": 1, "counts": items}))
    assert MB // 2 < counts.stat().st_size <= hook_counts.MAX_BYTES
    result = scratch.run("metrics", *NOWHERE)
    assert result.code == 0, result.err
    parsed = families(result.out)
    refused = {(s["pool"], s["operation"]): v for s, v in samples(parsed, "vfalloc_hook_refusals")}
    failed = {(s["pool"], s["operation"]): v for s, v in samples(parsed, "vfalloc_hook_errors")}
    assert refused == {("(unknown)", "prepare"): 1000, ("san", "prepare"): 5}
    assert failed == {("san", "(other)"): 2, ("(unknown)", "release"): 1}
    r = host.run("vm1", "prepare", "begin", xml=domain_xml(1, vf('pool="nosuch"')))
    assert r.returncode == 1
    kept = {(c["kind"], c["pool"], c["operation"]): c["count"] for c in json.loads(counts.read_text())["counts"]}
    assert kept == {("refused", "(unknown)", "prepare"): 1001, ("refused", "san", "prepare"): 5,
                    ("failed", "san", "(other)"): 2, ("failed", "(unknown)", "release"): 1}
    assert counts.stat().st_size <= 4 * ENTRY_MAX


HUGE = 4 << 30  # a sparse file: reading it would take 4 GiB of memory and seconds
SMALL_MEMORY = 1 << 30  # the address space the processes below may have: reading HUGE fails there


def small_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (SMALL_MEMORY, SMALL_MEMORY))


def huge_leftover(scratch):
    scratch.run_dir.mkdir(parents=True, mode=0o700)
    path = scratch.run_dir / "hook-counts.json"
    with open(path, "wb") as fh:
        fh.truncate(HUGE)
    return path


RECORD = ("import sys\nfrom vfalloc.metrics import counts as hook_counts\n"
          "print(hook_counts.record(sys.argv[1], 'refused', ['x'], 'prepare', {'lan0'}))")
READ = ("import sys\nfrom vfalloc.metrics import counts as hook_counts\nfrom vfalloc.errors import VfallocError\n"
        "try:\n    hook_counts.read(sys.argv[1], {'lan0'})\nexcept VfallocError as exc:\n    print(exc)")


@pytest.mark.parametrize("code, said, size_after", [
    pytest.param(RECORD, "{path} held {HUGE} bytes, more than counts ever take ({MAX}); its counters start again "
                         "from 0", ENTRY_MAX + 50, id="hook-record-resets"),
    pytest.param(READ, "the hook's counts {path} hold {HUGE} bytes, more than counts ever take ({MAX}); remove the "
                       "file (the counters start again from 0, which Prometheus takes as a reset)", HUGE,
                 id="metrics-read-refuses"),
])
def test_a_huge_leftover_file_is_never_read(scratch, code, said, size_after):
    """In 1 GiB of address space, a 4 GiB file: the hook starts its counts again, `vfalloc
    metrics` refuses it in one line and changes nothing; neither reads it."""
    path = huge_leftover(scratch)
    r = subprocess.run([sys.executable, "-c", code, str(scratch.run_dir)], env=scratch.env(), capture_output=True,
                       text=True, timeout=60, preexec_fn=small_memory)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == said.format(path=path, HUGE=HUGE, MAX=hook_counts.MAX_BYTES)
    assert path.stat().st_size <= size_after


def test_the_hook_resets_a_huge_leftover_file_and_says_so(host, scratch):
    path = huge_leftover(scratch)
    r = subprocess.run([hook_file(), "vm1", "prepare", "begin", "-"], env=host.env, capture_output=True, timeout=60,
                       input=domain_xml(1, vf('pool="nosuch"')).encode(), preexec_fn=small_memory)
    assert r.returncode == 1 and "no pool named nosuch" in stderr_line(r.stderr)
    assert f"metrics: {path} held {HUGE} bytes" in host.log.read_text()
    assert json.loads(path.read_text())["counts"] == [
        {"kind": "refused", "pool": "(unknown)", "operation": "prepare", "count": 1}]


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
