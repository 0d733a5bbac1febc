"""The hook's rules are one table (vfalloc.hookcalls) that the hook file's shell part and
vfalloc.hook both follow: every call libvirt can make and every byte of a domain name go through
both here, and the two must agree. The shell part runs as install-hook writes it, with a stand-in
interpreter that records whether it was started; vfalloc.hook runs in-process on a fake host."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import hookfiles
import pytest
from conftest import REPO
from fakehost import i350

from vfalloc import hook, hookcalls

DATA = REPO / "tests" / "data" / "libvirt"
# XML in which vfalloc acts at every call it handles: a request, and an interface on a bridge.
EVERYTHING = (DATA / "asks-prepare-begin.xml").read_bytes().replace(
    b"<devices>", b"<devices><interface type='bridge'><source bridge='br0'/><mac address='52:54:00:aa:bb:cc'/>"
                  b"</interface>", 1)
NOTHING = (DATA / "plain-prepare-begin.xml").read_bytes()
DOMAIN = "db1"

# libvirt's qemu hook operations and sub-operations (libvirt 11.3, src/util/virhook.c), and
# words it never passes.
OPS = ("prepare", "start", "started", "stopped", "release", "migrate", "restore", "reconnect", "attach", "bogus")
SUBOPS = ("begin", "end", "-", "bogus")
PAIRS = [(op, subop) for op in OPS for subop in SUBOPS]

RECORDER = "#!/bin/sh\ntouch {mark}\ncat >/dev/null\nexit 0\n"


@pytest.fixture
def shell(scratch, tmp_path):
    """Runs the hook file; returns whether it started its interpreter."""
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    mark = tmp_path / "started"
    python = tmp_path / "python"
    python.write_text(RECORDER.format(mark=mark))
    python.chmod(0o755)
    path = hookfiles.write(tmp_path / "vfalloc", str(python))
    env = {**scratch.env(), "LC_ALL": "C"}  # as libvirt runs hooks

    def run(argv: list, xml: bytes) -> bool:
        mark.unlink(missing_ok=True)
        done = subprocess.run([str(path), *argv], input=xml, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return mark.exists()

    return run


def python_acts(scratch, tmp_path, domain: str, op: str, subop: str, xml: bytes) -> bool:
    """Whether vfalloc.hook does anything at this call: every call it handles logs one line."""
    log = tmp_path / "hook.log"
    log.unlink(missing_ok=True)
    env = {**scratch.env(), "VFALLOC_HOOK_LOG": str(log), "VFALLOC_HOTPLUG_CMD": "true"}
    hook.main([domain, op, subop, "-"], stdin=io.BytesIO(xml), out=io.StringIO(), err=io.StringIO(), environ=env)
    return log.exists() and log.read_text() != ""


def test_every_call_the_table_names_has_its_handler_and_no_other():
    assert set(hook.HANDLERS) == set(hookcalls.BY_CALL)
    assert set(hook.FDB_STEPS) == {rule.fdb for rule in hookcalls.RULES if rule.fdb}
    assert [rule.op for rule in hookcalls.RULES if rule.refuses and not rule.always] == [hookcalls.START]


@pytest.mark.parametrize("op, subop", PAIRS, ids=[f"{op}-{subop}" for op, subop in PAIRS])
def test_shell_and_python_agree_on_every_call(shell, scratch, tmp_path, op, subop):
    rule = hookcalls.BY_CALL.get((op, subop))
    # A domain in which vfalloc acts: the shell hands over exactly the calls Python handles, and
    # Python acts in each of them.
    handed = shell([DOMAIN, op, subop, "-"], EVERYTHING)
    assert handed == (rule is not None)
    assert python_acts(scratch, tmp_path, DOMAIN, op, subop, EVERYTHING) == (rule is not None)
    # A domain that asks for nothing: the shell hands over only the calls it always hands over,
    # and Python leaves the others alone too (a superset: the shell never ends a call Python acts in).
    handed = shell(["web1", op, subop, "-"], NOTHING)
    assert handed == (rule is not None and rule.always)
    acts = python_acts(scratch, tmp_path, "web1", op, subop, NOTHING)
    assert not acts or handed


BYTES = [bytes([b]) for b in range(1, 256)] + ["é".encode(), "\u2028".encode(), "名".encode(), b"\xc3"]


@pytest.mark.parametrize("byte", BYTES, ids=[b.hex() for b in BYTES])
def test_shell_and_python_agree_on_every_byte_of_a_name(shell, byte):
    name = b"web" + byte + b"1"
    handed = shell([name, "prepare", "begin", "-"], NOTHING)
    assert handed == (not hookcalls.plain_name(os.fsdecode(name)))


def test_no_name_holds_a_nul_byte():
    """execve(2) passes argv as C strings: libvirt cannot hand the hook a NUL in a name."""
    with pytest.raises(ValueError, match="null byte"):
        subprocess.run(["true", "web\x001"], check=False)


def test_the_hook_file_holds_the_tables_words():
    text = hookfiles.script("/usr/bin/python3")
    for rule in hookcalls.RULES:
        assert f"{rule.op}.{rule.subop}" in text
        assert all(f'*"{word}"*' in text for word in rule.xml_words)
    assert Path(REPO / "hooks" / "qemu").read_text() == hookfiles.script("python3")
