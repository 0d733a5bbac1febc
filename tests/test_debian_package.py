"""The Debian package `make deb` builds (tools/build-deb; debian/): its name, what it depends on,
where it puts each file, that what it ships is generated from this very parser, and that its
`vfalloc install-hook` writes a hook that runs /usr/bin/python3. `make test` hands the package it
built in VFALLOC_DEB; without it the package is built here. dpkg -i and a VM started through the
packaged hook: tests/e2e/steps_deb.py."""

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from vfalloc import __version__
from vfalloc.commandspec import spec
from vfalloc.completion import script
from vfalloc.manpage import render


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    given = os.environ.get("VFALLOC_DEB")
    if given:
        return Path(given)
    if shutil.which("dpkg-buildpackage") is None or shutil.which("pybuild") is None:
        pytest.skip("debhelper and dh-python are not installed (tools/setup-debian installs them)")
    out = tmp_path_factory.mktemp("deb") / f"vfalloc_{__version__}_all.deb"
    done = subprocess.run([str(REPO / "tools" / "build-deb"), str(out)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_name_version_architecture(deb):
    assert deb.name == f"vfalloc_{__version__}_all.deb"
    assert (field(deb, "Package"), field(deb, "Version"), field(deb, "Architecture")) == ("vfalloc", __version__, "all")


def test_depends_on_debians_libraries_at_the_setup_cfg_floors(deb):
    depends = dict(re.findall(r"([\w.:+-]+)(?: \(([^)]*)\))?", field(deb, "Depends")))
    floors = dict(re.findall(r"^\s+([\w-]+) >= ([\d.]+)$", (REPO / "setup.cfg").read_text(), re.M))
    assert depends["python3-lxml"] == f">= {floors['lxml']}"
    assert depends["python3-filelock"] == f">= {floors['filelock']}"
    assert depends["python3-libvirt"] == f">= {floors['libvirt-python']}"


@pytest.mark.parametrize("path", [
    "usr/bin/vfalloc", "usr/share/man/man8/vfalloc.8.gz", "usr/share/bash-completion/completions/vfalloc",
    "usr/share/zsh/vendor-completions/_vfalloc", "usr/share/vfalloc/hooks/qemu",
    "usr/lib/python3/dist-packages/vfalloc/hook.py",
], ids=["command", "man-page", "bash-completion", "zsh-completion", "hook-template", "library"])
def test_installs(unpacked, path):
    assert (unpacked / path).is_file()


def test_ships_what_the_parser_generates(unpacked):
    assert gzip.decompress((unpacked / "usr/share/man/man8/vfalloc.8.gz").read_bytes()).decode() == render(spec())
    assert (unpacked / "usr/share/bash-completion/completions/vfalloc").read_text() == script("bash", spec())
    assert (unpacked / "usr/share/zsh/vendor-completions/_vfalloc").read_text() == script("zsh", spec())
    # the hook file's template, a shell script running `python3` (Debian's, on libvirt's PATH)
    assert (unpacked / "usr/share/vfalloc/hooks/qemu").read_text() == (REPO / "hooks" / "qemu").read_text()


def test_command_runs_debians_python(unpacked):
    assert (unpacked / "usr/bin/vfalloc").read_text().splitlines()[0] in ("#!/usr/bin/python3", "#! /usr/bin/python3")


def test_packaged_install_hook_writes_a_usr_bin_python3_hook(unpacked, tmp_path):
    """Run as /usr/bin/vfalloc runs: Debian's python3 on the packaged library."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(unpacked / "usr/lib/python3/dist-packages"),
           "VFALLOC_RUN_DIR": str(tmp_path / "run")}
    done = subprocess.run(["/usr/bin/python3", str(unpacked / "usr/bin/vfalloc"), "install-hook", "--hooks-dir",
                           str(tmp_path / "hooks")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hook = (tmp_path / "hooks" / "qemu.d" / "vfalloc").read_text()
    assert hook.startswith("#!/bin/sh\n") and "\npython=/usr/bin/python3\n" in hook


@pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/filelock").is_dir(),
                    reason="Debian's python3-filelock is not installed (tools/setup-debian installs it)")
def test_both_locks_work_with_debians_filelock(tmp_path):
    """The package depends on Debian 12's python3-filelock 3.9, whose FileLock takes no mode=:
    the lease table's and the FDB record's locks are taken with it, by Debian's /usr/bin/python3,
    and leave their lock files 0600."""
    code = ("import filelock, sys\n"
            "from vfalloc.state import StateStore\nfrom vfalloc.fdb_book import FdbBook\n"
            "print(filelock.__version__)\n"
            "store = StateStore(sys.argv[1], lock_timeout=5)\n"
            "with store.transaction() as txn:\n    pass\n"
            "with FdbBook(sys.argv[1], lock_timeout=5).transaction():\n    pass\n")
    state = tmp_path / "state.json"
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                           "exec(sys.argv.pop(1))", str(REPO), code, str(state)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3.9"), done.stdout
    for lock in (tmp_path / "state.json.lock", tmp_path / "fdb.json.lock"):
        assert lock.stat().st_mode & 0o777 == 0o600, lock
