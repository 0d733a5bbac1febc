"""vfalloc(8), generated from the parser: every command and every flag of it is in the page,
and man-db renders it through groff with all warnings on (-ww) without one."""

import re
import shutil
import subprocess
import sys

import pytest

from vfalloc.commandspec import spec
from vfalloc.manpage import render


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("man") / "vfalloc.8"
    done = subprocess.run([sys.executable, "-m", "vfalloc.manpage"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    path.write_text(done.stdout)
    return path


def rendered(path, *options) -> subprocess.CompletedProcess:
    if shutil.which("man") is None:
        pytest.skip("man-db is not installed")
    return subprocess.run(["man", *options, "-l", str(path)], capture_output=True, text=True, timeout=120,
                          env={"MANWIDTH": "80", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "MAN_KEEP_FORMATTING": ""})


def test_renders_without_warnings(page):
    done = rendered(page, "--warnings=w")  # man-db hands groff -ww: every warning
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("VFALLOC(8)")
    groff = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60)
    assert (groff.returncode, groff.stderr) == (0, "")


def test_every_command_and_flag(page):
    text = re.sub(r"\s+", " ", rendered(page).stdout.replace("\u2010", "-").replace("\u2212", "-"))
    seen = 0
    for command in spec().walk():
        if command.hidden:
            assert command.path[-1] not in text.split()
            continue
        if command.path:
            assert command.name in text, command.name
        for option in command.options:
            for flag in option.flags:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{command.name} {flag}"
                seen += 1
            if option.positional:
                assert (option.metavar or option.dest) in text, f"{command.name} {option.dest}"
    assert seen > 100


def test_the_page_follows_the_parser(monkeypatch):
    """A flag added to the parser is in the page without touching the generator."""
    from vfalloc import cli

    build = cli.build_parser

    def more():
        parser = build()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        sub.choices["list"].add_argument("--brand-new-flag", help="something new")
        return parser

    monkeypatch.setattr(cli, "build_parser", more)
    assert r"\fB\-\-brand\-new\-flag\fR" in render() and "something new" in render()
