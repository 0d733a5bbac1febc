"""Usage errors of every kind are one line with one `vfalloc:` prefix and exit code 2: the
parser's own (unknown command, missing or bad argument, bad choice, in a subcommand of a
subcommand) and a handler's UsageError; through main() and through the installed executable."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import i350

from vfalloc.cli import main

VFALLOC = str(Path(sys.executable).with_name("vfalloc"))

CASES = [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
    (["alloc", "--domain", "vm1"], "the following arguments are required: --uuid, --pool"),
    (["alloc", "--domain", "vm1", "--uuid", "x", "--pool", "p", "--trust", "maybe"], "invalid choice: 'maybe'"),
    (["host"], "the following arguments are required: SUBCOMMAND"),
    (["host", "numvfs", "enp1s0f0", "many"], "'many' is not a number of VFs from 0 to 65535"),
    (["host", "kernel-args", "--bogus"], "unrecognized arguments: --bogus"),
    (["host", "numvfs", "enp9s0", "2"], "enp9s0 is not an SR-IOV PF on this host"),
    (["host", "kernel-args", "--add", "a;b"], "has characters vfalloc will not write"),
    (["alloc", "--domain", "vm1", "--uuid", "not-a-uuid", "--pool", "enp1s0f0"], "not-a-uuid"),
]
IDS = ["unknown-command", "no-command", "missing-option", "bad-choice", "no-subcommand", "bad-int",
       "unknown-option", "handler-bad-pf", "handler-bad-arg", "handler-bad-uuid"]


@pytest.fixture
def host(scratch):
    i350(scratch.fs, ports=1)
    return scratch


def one_prefix(err: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith("vfalloc: ") and not err.startswith("vfalloc: vfalloc:"), err
    assert err.count("vfalloc: ") == 1, err


@pytest.mark.parametrize("argv, message", CASES, ids=IDS)
def test_usage_error_in_process(host, argv, message):
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv[:2], *host.flags(), *argv[2:]] if argv[:1] == ["host"] and len(argv) > 1 else argv,
                out=out, err=err)
    assert code == 2
    one_prefix(err.getvalue())
    assert message in err.getvalue()
    assert out.getvalue() == ""


@pytest.mark.parametrize("argv, message", [CASES[0], CASES[5], CASES[7]], ids=[IDS[0], IDS[5], IDS[7]])
def test_usage_error_from_the_executable(host, argv, message):
    r = subprocess.run([VFALLOC, *argv], env=host.env(), capture_output=True, text=True)
    assert r.returncode == 2
    one_prefix(r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
