"""The hook file's shell part (templates.hook_script): which of libvirt's calls start Python.

The file runs as libvirt runs it, with the XML libvirt hands a hook (tests/data/libvirt, see
SOURCES.md there) and lease tables vfalloc wrote; its interpreter is a stand-in that records its
arguments, environment and stdin. A call goes on to Python whenever vfalloc.hook may act in it,
with the XML byte for byte as sent; every other call ends in the shell with exit 0."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import hookfiles
import pytest
from conftest import REPO
from fakehost import i350
from hookfiles import hook_file

from vfalloc import config_cache

DATA = REPO / "tests" / "data" / "libvirt"

# Records what the hook file started: argv, the environment's VFALLOC_* and stdin.
RECORDER = """#!/bin/sh
rec={rec}
printf '%s\\0' "$@" > "$rec.argv"
env | grep '^VFALLOC_' | sort > "$rec.env"
cat > "$rec.stdin"
exit 0
"""


def xml(name: str) -> bytes:
    return (DATA / f"{name}.xml").read_bytes()


def spelled(change):
    return lambda: change(xml("asks-prepare-begin"))


class HookFile:
    def __init__(self, scratch, tmp_path: Path, config: str | None = None):
        self.scratch = scratch
        self.rec = tmp_path / "rec"
        python = tmp_path / "python"
        python.write_text(RECORDER.format(rec=self.rec))
        python.chmod(0o755)
        self.path = hookfiles.write(tmp_path / "vfalloc", str(python), config)
        self.env = scratch.env()

    def run(self, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        for old in self.rec.parent.glob("rec.*"):
            old.unlink()
        return subprocess.run([str(self.path), *argv], input=stdin, env=self.env, capture_output=True, timeout=60)

    def python_ran(self) -> bool:
        return self.rec.with_suffix(".argv").exists()

    def seen(self) -> tuple[list[str], bytes, dict[str, str]]:
        argv = self.rec.with_suffix(".argv").read_text().split("\0")[:-1]
        env = dict(line.split("=", 1) for line in self.rec.with_suffix(".env").read_text().splitlines())
        return argv, self.rec.with_suffix(".stdin").read_bytes(), env


@pytest.fixture
def host(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    return HookFile(scratch, tmp_path)


def lease_by_hand(scratch, domain: str) -> None:
    r = scratch.run("alloc", "--domain", domain, "--uuid", "00000000-0000-0000-0000-0000000000aa", "--pool", "lan0")
    assert r.code == 0, r.err


def lease_pending(scratch, domain: str) -> None:
    """What the real hook leaves after `prepare begin` of a domain that asks for a VF."""
    done = subprocess.run([hook_file(), domain, "prepare", "begin", "-"], input=xml("asks-prepare-begin"),
                          env=scratch.env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [x["phase"] for x in json.loads(scratch.state.read_text())["leases"]] == ["pending-attach"]


TABLES = {
    "no-table": lambda s: None,
    "others-lease": lambda s: lease_by_hand(s, "mail3"),
    "reserved-by-hand": lambda s: lease_by_hand(s, "web1"),
    "reserved-web2": lambda s: lease_by_hand(s, "web2"),
    "pending-hot-plug": lambda s: lease_pending(s, "db1"),
}

CASES = [
    # op, subop, the XML, the table, whether Python starts
    ("prepare", "begin", "plain-prepare-begin", "no-table", False),
    ("prepare", "begin", "plain-prepare-begin", "others-lease", False),
    ("prepare", "begin", "plain-prepare-begin", "pending-hot-plug", False),
    ("prepare", "begin", "plain-prepare-begin", "reserved-by-hand", True),
    ("prepare", "begin", "bridged-prepare-begin", "others-lease", False),
    ("prepare", "begin", "asks-prepare-begin", "no-table", True),
    ("started", "begin", "plain-started-begin", "others-lease", False),
    ("started", "begin", "plain-started-begin", "reserved-by-hand", False),
    ("started", "begin", "plain-started-begin", "pending-hot-plug", True),
    ("started", "begin", "asks-started-begin", "others-lease", False),
    ("started", "begin", "asks-started-begin", "pending-hot-plug", True),
    ("release", "end", "plain-release-end", "others-lease", False),
    ("release", "end", "plain-release-end", "reserved-by-hand", True),
    ("release", "end", "bridged-release-end", "no-table", True),
    ("release", "end", "asks-release-end", "no-table", True),
    ("start", "begin", "asks-prepare-begin", "reserved-by-hand", False),
    ("stopped", "end", "asks-release-end", "reserved-by-hand", False),
    ("prepare", "end", "asks-prepare-begin", "reserved-by-hand", False),
    ("migrate", "begin", "plain-prepare-begin", "no-table", True),
    ("restore", "begin", "plain-prepare-begin", "no-table", True),
    ("reconnect", "begin", "plain-started-begin", "no-table", True),
]


def _id(case) -> str:
    op, subop, name, table, python = case
    return f"{op}-{subop}-{name.split('-')[0]}-{table}-{'python' if python else 'shell'}"


@pytest.mark.parametrize("op, subop, name, table, python", CASES, ids=[_id(c) for c in CASES])
def test_which_calls_start_python(host, op, subop, name, table, python):
    TABLES[table](host.scratch)
    domain = {"plain": "web1", "bridged": "web2", "asks": "db1"}[name.split("-")[0]]
    before = host.scratch.state.read_bytes() if host.scratch.state.exists() else None
    files = listing(host.scratch.run_dir)
    r = host.run(domain, op, subop, "-", stdin=xml(name))
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert host.python_ran() == python
    if python:
        argv, stdin, env = host.seen()
        assert argv[:3] == ["-I", "-c", argv[2]] and "from vfalloc.hook import main" in argv[2]
        assert argv[3:] == [domain, op, subop, "-"]
        assert stdin == xml(name)
        assert env["VFALLOC_HOOK_TABLE"] == str(host.scratch.state) and "VFALLOC_HOOK_XML" not in env
    after = host.scratch.state.read_bytes() if host.scratch.state.exists() else None
    assert after == before
    assert listing(host.scratch.run_dir) == files  # the shell part writes no file


def listing(folder: Path) -> list[str] | None:
    return sorted(f.name for f in folder.iterdir()) if folder.exists() else None


# XML that is not in libvirt's own form goes to Python whatever it says, exactly as sent.
SPELLINGS = {
    "utf-16": spelled(lambda x: x.decode().encode("utf-16")),
    "utf-16-no-bom": spelled(lambda x: x.decode().encode("utf-16-le")),
    "utf-32": spelled(lambda x: x.decode().encode("utf-32")),
    "declaration": spelled(lambda x: b"<?xml version='1.0' encoding='ISO-8859-1'?>\n" + x),
    "character-reference": spelled(lambda x: x.replace(b"urn:vfalloc:1", b"urn:&#118;falloc:1")
                                   .replace(b"<vfalloc:", b"<v:").replace(b"</vfalloc:", b"</v:")
                                   .replace(b"xmlns:vfalloc", b"xmlns:v")),
    "nul-inside": lambda: xml("plain-prepare-begin").replace(b"<devices>", b"<devices>\0"),
    "leading-blank-line": lambda: b"\n" + xml("plain-prepare-begin"),
    "empty": lambda: b"",
}


@pytest.mark.parametrize("spelling", SPELLINGS, ids=list(SPELLINGS))
def test_xml_in_another_form_goes_to_python_byte_for_byte(host, spelling):
    data = SPELLINGS[spelling]()
    assert b"vfalloc" not in data or spelling == "declaration"
    r = host.run("web1", "prepare", "begin", "-", stdin=data)
    assert r.returncode == 0 and host.python_ran()
    assert host.seen()[1] == data


@pytest.mark.parametrize("name", ["wëb1", 'we"b1', "we\\b1", "web 1\t", "we/b1"],
                         ids=["non-ascii", "quote", "backslash", "tab", "slash"])
def test_a_name_json_would_escape_goes_to_python(host, name):
    """The table is searched for `"NAME"`: only names JSON writes as they are can be found so."""
    host.run(name, "prepare", "begin", "-", stdin=xml("plain-prepare-begin"))
    assert host.python_ran() and host.seen()[0][3] == name


def test_the_names_json_writes_as_they_are_are_found_in_a_real_table(host):
    """Every printable ASCII name but `"`, `\\` and `/` is found; the search is a fixed string."""
    name = "a-b.c_d+e:f@g(h)[i]*j?k$l`m!n^o|p{q}r~s's#t%u&v,w;x<y=z>0 1"
    lease_by_hand(host.scratch, name)
    host.run(name, "prepare", "begin", "-", stdin=xml("plain-prepare-begin"))
    assert host.python_ran()
    host.run(name[:-1], "prepare", "begin", "-", stdin=xml("plain-prepare-begin"))
    assert not host.python_ran()


def stamped(stamp: str) -> bytes:
    """db1's XML as `vfalloc start` hands it to libvirt: the request element stamped."""
    return xml("asks-prepare-begin").replace(b'<vfalloc:vfs xmlns:vfalloc="urn:vfalloc:1">',
                                             f'<vfalloc:vfs xmlns:vfalloc="urn:vfalloc:1" start="{stamp}">'.encode())


STAMPS = [
    # the stamp file's text, the XML, the call, whether Python starts, whether the file is taken
    ("0123abcd\n", stamped("0123abcd"), "prepare", False, True),
    ("0123abcd\n", xml("asks-prepare-begin"), "prepare", True, False),   # a `virsh start` meanwhile
    ("\n", stamped("0123abcd"), "prepare", True, False),
    ("0123abcd\n", stamped("0123abcd"), "started", False, False),       # only prepare's work is done
    ("0123abcd\n", stamped("0123abcd"), "release", True, False),
]


@pytest.mark.parametrize("text, data, op, python, taken", STAMPS,
                         ids=["stamped", "not-this-start", "empty-stamp", "started", "release"])
def test_a_start_stamped_by_vfalloc_start_needs_no_python_at_prepare(host, text, data, op, python, taken):
    run_dir = host.scratch.run_dir
    run_dir.mkdir(parents=True, mode=0o700)
    stamp = run_dir / "start.db1"
    stamp.write_text(text)
    r = host.run("db1", op, "end" if op == "release" else "begin", "-", stdin=data)
    assert (r.returncode, r.stderr) == (0, b"")
    assert host.python_ran() == python and stamp.exists() != taken
    assert sorted(f.name for f in run_dir.iterdir()) == ([] if taken else ["start.db1"])


def _planted_elsewhere(run_dir: Path) -> Path:
    """The runtime directory is a link to a directory that is private itself."""
    real = run_dir.parent / "elsewhere"
    real.mkdir(parents=True, mode=0o700)
    run_dir.symlink_to(real)
    return real


# Runtime directories in which nobody but root could have put the stamp: the stamp is not taken
# (whoever could write there could have written it), and Python does prepare's checks again.
UNTRUSTED = {
    "mode-0777": lambda run: (run.mkdir(parents=True), run.chmod(0o777), run),
    "mode-0750": lambda run: (run.mkdir(parents=True), run.chmod(0o750), run),
    "other-owner": lambda run: (run.mkdir(parents=True, mode=0o700), os.chown(run, 65534, 65534), run),
    "symlink": lambda run: (None, None, _planted_elsewhere(run)),
}


@pytest.mark.parametrize("state", UNTRUSTED, ids=list(UNTRUSTED))
def test_a_stamp_in_a_directory_others_could_write_is_not_taken(host, state):
    where = UNTRUSTED[state](host.scratch.run_dir)[2]
    stamp = where / "start.db1"
    stamp.write_text("0123abcd\n")
    r = host.run("db1", "prepare", "begin", "-", stdin=stamped("0123abcd"))
    assert (r.returncode, r.stderr) == (0, b"")
    assert host.python_ran() and stamp.read_text() == "0123abcd\n"


def test_the_stamp_vfalloc_start_writes_is_what_the_hook_file_takes(host):
    from vfalloc import domxml
    from vfalloc.hookfile import StartStamp

    stamp = StartStamp(str(host.scratch.run_dir), "db1")
    stamp.write()
    live = domxml.add_devices(xml("asks-prepare-begin"), [], stamp.value)
    assert domxml.read_domain(live).requests == domxml.read_domain(xml("asks-prepare-begin")).requests
    r = host.run("db1", "prepare", "begin", "-", stdin=live)
    assert r.returncode == 0 and not host.python_ran()
    assert stamp.taken()  # the hook file removed it
    again = StartStamp(str(host.scratch.run_dir), "db1")
    again.write()
    assert again.value != stamp.value and not again.taken() and not host.scratch.run_dir.joinpath("start.db1").exists()


@pytest.mark.parametrize("name", ["we/b1", "wëb1", 'we"b1'], ids=["slash", "non-ascii", "quote"])
def test_no_stamp_for_a_name_the_hook_file_cannot_look_up(tmp_path, name):
    from vfalloc.hookfile import StartStamp

    stamp = StartStamp(str(tmp_path), name)
    stamp.write()
    assert (stamp.path, stamp.value, list(tmp_path.iterdir()), stamp.taken()) == (None, None, [], False)


def test_the_word_the_shell_looks_for_is_in_every_name_python_acts_on():
    from vfalloc import domxml, hookcalls
    from vfalloc.fdb import BRIDGED_MARKS

    assert hookcalls.WORD in domxml.NS and hookcalls.WORD in domxml.ALIAS_PREFIX
    script = hookfiles.script("python3")
    assert all(mark.decode() in script for mark in BRIDGED_MARKS)


def test_too_few_arguments_go_to_python_which_says_what_it_expects(host):
    assert host.run("web1", "prepare").returncode == 0 and host.seen()[0][3:] == ["web1", "prepare"]


def test_an_unreadable_table_goes_to_python(host):
    host.scratch.state.mkdir(parents=True)  # grep cannot read it: in doubt, Python looks
    host.run("web1", "prepare", "begin", "-", stdin=xml("plain-prepare-begin"))
    assert host.python_ran()


def test_config_written_into_the_file_unless_the_environment_names_one(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    hook = HookFile(scratch, tmp_path, config="/etc/vfalloc/other place.toml")
    del hook.env["VFALLOC_CONFIG"]
    hook.run("db1", "prepare", "begin", "-", stdin=xml("asks-prepare-begin"))
    assert hook.seen()[2]["VFALLOC_CONFIG"] == "/etc/vfalloc/other place.toml"
    hook.env["VFALLOC_CONFIG"] = str(scratch.config)
    hook.run("db1", "prepare", "begin", "-", stdin=xml("asks-prepare-begin"))
    assert hook.seen()[2]["VFALLOC_CONFIG"] == str(scratch.config)


def test_the_real_hook_behind_the_shell_part_serves_a_start(scratch, tmp_path):
    """The hook file as install-hook writes it, with the real Python behind it: the lease is made
    and the kept XML is gone."""
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    done = subprocess.run([hook_file(), "db1", "prepare", "begin", "-"], input=xml("asks-prepare-begin"),
                          env=scratch.env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [x["domain"] for x in json.loads(scratch.state.read_text())["leases"]] == ["db1"]
    assert sys.executable in Path(hook_file()).read_text()
    assert [f.name for f in scratch.run_dir.iterdir()] == [config_cache.memo_path(str(scratch.run_dir),
                                                                                 str(scratch.config)).rsplit("/", 1)[1]]


@pytest.mark.parametrize("there", [True, False], ids=["kept-file", "already-gone"])
def test_python_removes_the_xml_an_earlier_hook_file_kept(scratch, tmp_path, there):
    """vfalloc.hook reads the XML from stdin and removes the file a hook file of an earlier
    vfalloc kept it in (VFALLOC_HOOK_XML), until `install-hook` writes the current one."""
    from vfalloc.hook import main

    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    kept = tmp_path / "hook-xml.1"
    if there:
        kept.write_bytes(xml("asks-prepare-begin"))
    err = io.StringIO()
    env = {**scratch.env(), "VFALLOC_HOOK_XML": str(kept)}
    code = main(["db1", "prepare", "begin", "-"], stdin=io.BytesIO(xml("asks-prepare-begin")), out=io.StringIO(),
                err=err, environ=env)
    assert (code, err.getvalue()) == (0, "") and not kept.exists()
    assert [x["domain"] for x in json.loads(scratch.state.read_text())["leases"]] == ["db1"]


@pytest.mark.parametrize("looked, warned", [("same", False), ("other", True), (None, False)],
                         ids=["same-table", "moved-table", "not-run-by-the-hook-file"])
def test_python_warns_when_the_hook_file_looks_in_another_table(scratch, tmp_path, looked, warned):
    """The hook file searches the table whose path it was written with (VFALLOC_HOOK_TABLE): when
    the config names another, leases reserved by hand go unseen, and the log says what to do."""
    from vfalloc.hook import main

    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    log = tmp_path / "hook.log"
    env = {**scratch.env(), "VFALLOC_HOOK_LOG": str(log)}
    if looked is not None:
        env["VFALLOC_HOOK_TABLE"] = str(scratch.state) if looked == "same" else "/var/lib/vfalloc/old.json"
    err = io.StringIO()
    code = main(["db1", "prepare", "begin", "-"], stdin=io.BytesIO(xml("asks-prepare-begin")), out=io.StringIO(),
                err=err, environ=env)
    assert (code, err.getvalue()) == (0, "")
    lines = log.read_text().splitlines()
    warning = [x for x in lines if x.startswith("warning: the hook file looks for reserved leases in")]
    assert bool(warning) == warned and lines[-1].startswith("db1 prepare begin: leased ")
    if warned:
        assert warning == [f"warning: the hook file looks for reserved leases in /var/lib/vfalloc/old.json, "
                           f"the config names {scratch.state}: run `vfalloc install-hook` again"]
