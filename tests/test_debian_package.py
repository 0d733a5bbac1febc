"""The Debian package `make deb` builds (tools/build-deb; debian/): its name, what it depends on,
where it puts each file, that what it ships is generated from this very parser, and that its
`vfalloc install-hook` writes a hook that runs /usr/bin/python3; and, with the real dpkg on a
scratch root, that removing and purging it take away the hook file vfalloc wrote, and only that,
and an upgrade keeps it. `make test` hands the package it built in VFALLOC_DEB; without it the
package is built here. dpkg -i and -r with a VM running: tests/e2e/steps_deb.py."""

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import hookfiles
import pytest
from conftest import REPO

from vfalloc import __version__, hookfile
from vfalloc.commandspec import spec
from vfalloc.completion import script
from vfalloc.manpage import render
from vfalloc.templates import HOOK_MARKER


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
    the lease table's and the FDB ledger's locks are taken with it, by Debian's /usr/bin/python3,
    and leave their lock files 0600."""
    code = ("import filelock, sys\n"
            "from vfalloc.state import StateStore\nfrom vfalloc.fdb.ledger import LedgerFile\n"
            "print(filelock.__version__)\n"
            "store = StateStore(sys.argv[1], lock_timeout=5)\n"
            "with store.transaction() as txn:\n    pass\n"
            "with LedgerFile(sys.argv[1], lock_timeout=5).transaction():\n    pass\n")
    state = tmp_path / "state.json"
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                           "exec(sys.argv.pop(1))", str(REPO), code, str(state)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3.9"), done.stdout
    for lock in (tmp_path / "state.json.lock", tmp_path / "fdb.json.lock"):
        assert lock.stat().st_mode & 0o777 == 0o600, lock


# --- the hook file at remove, purge and upgrade (debian/vfalloc.prerm, debian/vfalloc.postrm) ---
#
# The real dpkg installs, removes, purges and upgrades the real package in a scratch root: the
# machine's /usr under an overlay (the package's files land in the overlay), a plain /etc of the
# test's own, dpkg's database under the scratch root's /var/lib/dpkg. dpkg runs the maintainer
# scripts chrooted into it (dpkg --root), so they act on the scratch /etc/libvirt/hooks, with the
# very paths they use on a host. All of it inside a mount namespace of its own (unshare).

SCRATCH = r"""
set -eu
root=$1 upper=$2 work=$3; shift 3
mkdir -p "$root/usr" "$root/dev" "$root/tmp" "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" \
    "$root/var/lib/dpkg/triggers" "$upper" "$work"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
for d in bin sbin lib lib64; do
    if [ -L "/$d" ]; then ln -sfn "$(readlink "/$d")" "$root/$d"; fi
done
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$upper,workdir=$work" "$root/usr"
mount --bind /dev "$root/dev"
for cmd in "$@"; do
    eval "$cmd"
done
"""
HOOKS = Path("etc/libvirt/hooks")


def scratch_dpkg(tmp_path: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    """Run shell commands in a mount namespace with the scratch root $root mounted (dpkg="dpkg
    --root=$root --force-depends"); the root's /etc is tmp_path/"root"/etc, a plain directory."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("dpkg --root in a mount namespace needs root and unshare")
    root = tmp_path / "root"
    (root / HOOKS / "qemu.d").mkdir(parents=True, exist_ok=True)
    prelude = 'dpkg() { command dpkg --root="$root" --force-depends "$@"; }'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRATCH, "sh", str(root),
                           str(tmp_path / "usr-upper"), str(tmp_path / "usr-work"), prelude, *commands],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def newer_deb(deb, tmp_path_factory) -> Path:
    """The same package as a later version, for an upgrade from `deb`."""
    tree = tmp_path_factory.mktemp("newer") / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"\nVersion: {__version__}\n", f"\nVersion: {__version__}+1\n"))
    out = tree.parent / f"vfalloc_{__version__}+1_all.deb"
    subprocess.run(["dpkg-deb", "-b", str(tree), str(out)], check=True, capture_output=True, timeout=120)
    return out


def status(root: Path) -> str:
    done = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f", "${Status} ${Version}",
                           "vfalloc"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else "not-installed"


OTHERS = {"qemu": b"#!/bin/sh\n# an admin's own main hook\nexit 0\n",
          "qemu.d/zz-other": b"#!/bin/sh\n# another tool's hook\nexit 0\n"}
SOMEONE_ELSES = b"#!/bin/sh\n# my own qemu.d/vfalloc, not vfalloc's\nexit 0\n"


@pytest.mark.parametrize("action, hook, kept, after", [
    ("remove", "ours", False, "deinstall ok config-files"),
    ("remove", "someone-elses", True, "deinstall ok config-files"),
    ("remove", "none", False, "deinstall ok config-files"),
    ("purge", "ours", False, "not-installed"),
    ("purge", "someone-elses", True, "not-installed"),
    ("purge", "none", False, "not-installed"),
    ("upgrade", "ours", True, "install ok installed NEWER"),
    ("upgrade", "someone-elses", True, "install ok installed NEWER"),
    ("upgrade", "none", False, "install ok installed NEWER"),
    ("purge-after-remove", "ours", False, "not-installed"),
    ("purge-after-remove", "someone-elses", True, "not-installed"),
    ("purge-after-remove", "none", False, "not-installed"),
], ids=[f"{a}-{h}" for a in ("remove", "purge", "upgrade", "purge-after-remove")
        for h in ("ours", "someone-elses", "none")])
def test_the_package_takes_away_only_the_hook_vfalloc_wrote_and_only_at_remove_and_purge(
        deb, newer_deb, tmp_path, action, hook, kept, after):
    """dpkg -r, dpkg -P and an upgrade (dpkg -i of a later version) of an installed package, and
    dpkg -P of a package removed before, with the hook file `vfalloc install-hook` writes there
    (for purge-after-remove: written between the two), a file of that name someone else wrote,
    or none: vfalloc's goes at remove and purge (prerm at `remove`, postrm at `purge`) and stays
    at an upgrade, anyone else's always stays, and the other hooks in /etc/libvirt/hooks are
    never touched."""
    hooks = tmp_path / "root" / HOOKS
    (hooks / "qemu.d").mkdir(parents=True)
    text = {"ours": hookfiles.script("/usr/bin/python3").encode(), "someone-elses": SOMEONE_ELSES, "none": None}[hook]
    staged = hooks / ("staged" if action == "purge-after-remove" else "qemu.d/vfalloc")
    if text is not None:
        staged.write_bytes(text)
        staged.chmod(0o755)
    for name, data in OTHERS.items():
        (hooks / name).write_bytes(data)
    commands = {"remove": ["dpkg -r vfalloc"], "purge": ["dpkg -P vfalloc"], "upgrade": [f"dpkg -i {newer_deb}"],
                "purge-after-remove": ["dpkg -r vfalloc", f'[ ! -e "$root/{HOOKS}/staged" ] || '
                                       f'mv "$root/{HOOKS}/staged" "$root/{HOOKS}/qemu.d/vfalloc"',
                                       "dpkg -P vfalloc"]}[action]
    done = scratch_dpkg(tmp_path, f"dpkg -i {deb}", *commands)
    assert done.returncode == 0, done.stdout + done.stderr
    want = after.replace("NEWER", f"{__version__}+1").replace("config-files", f"config-files {__version__}")
    assert status(tmp_path / "root") == want
    path = hooks / "qemu.d/vfalloc"
    if kept:
        assert path.read_bytes() == text
    else:
        assert not path.exists()
    assert (f"vfalloc: removed /{HOOKS}/qemu.d/vfalloc" in done.stdout) == (hook == "ours" and action != "upgrade")
    for name, data in OTHERS.items():
        assert (hooks / name).read_bytes() == data, name


def test_a_hook_that_cannot_be_removed_stops_the_removal_with_one_line(deb, tmp_path):
    """prerm fails before anything else is done: dpkg keeps the package installed (a hook whose
    vfalloc is gone is worse than a package that stays), and says why and what to do."""
    hooks = tmp_path / "root" / HOOKS
    (hooks / "qemu.d").mkdir(parents=True)
    (hooks / "qemu.d/vfalloc").write_text(hookfiles.script("/usr/bin/python3"))
    done = scratch_dpkg(tmp_path, f"dpkg -i {deb}", f'mount --bind "$root/{HOOKS}/qemu.d" "$root/{HOOKS}/qemu.d"',
                        f'mount -o remount,bind,ro "$root/{HOOKS}/qemu.d"', "! dpkg -r vfalloc")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("vfalloc: ")]
    assert len(lines) == 1 and "Read-only file system" in lines[0] and "then remove the package again" in lines[0], \
        done.stderr
    assert status(tmp_path / "root").split()[1:] == ["ok", "installed", __version__]  # wanted away, still there
    assert (hooks / "qemu.d/vfalloc").read_text() == hookfiles.script("/usr/bin/python3")


MARKER = HOOK_MARKER.encode()
# What may be at /etc/libvirt/hooks/qemu.d/vfalloc: (kind, content). A symlink's content is its
# target, relative, so that it resolves alike in the scratch root and seen from outside it.
HOOK_FILES = {
    "as-install-hook-writes": ("file", hookfiles.script("/usr/bin/python3").encode()),
    "someone-elses": ("file", SOMEONE_ELSES),
    "empty": ("file", b""),
    "marker-ends-at-byte-512": ("file", b"#" * (512 - len(MARKER)) + MARKER + b"\n"),
    "marker-ends-at-byte-513": ("file", b"#" * (513 - len(MARKER)) + MARKER + b"\n"),
    "marker-past-byte-512": ("file", b"#!/bin/sh\n" + b"# x\n" * 200 + MARKER + b"\n"),
    "marker-broken-by-a-newline": ("file", b"#!/bin/sh\n" + MARKER[:9] + b"\n" + MARKER[9:] + b"\n"),
    "marker-after-nul-bytes": ("file", b"\0" * 100 + MARKER + b"\n"),
    "marker-after-bytes-not-utf8": ("file", b"\xff" * 100 + MARKER + b"\n"),
    "marker-after-utf8-within-512-bytes": ("file", "é".encode() * 200 + MARKER + b"\n"),
    "marker-after-utf8-past-512-bytes-within-512-characters": ("file", "é".encode() * 250 + MARKER + b"\n"),
    "symlink-to-vfalloc-s": ("symlink", b"../real"),
    "dangling-symlink": ("symlink", b"../nothing-here"),
    "directory": ("directory", b""),
}
REAL = hookfiles.script("/usr/bin/python3").encode()  # what ../real holds, for the symlink


def put(path: Path, kind: str, content: bytes) -> None:
    if kind == "file":
        path.write_bytes(content)
        path.chmod(0o755)
    elif kind == "symlink":
        path.symlink_to(content.decode())
    else:
        path.mkdir()


@pytest.fixture(scope="module")
def verdicts(deb, tmp_path_factory) -> dict[str, tuple[bool, bool]]:
    """For each of HOOK_FILES: (vfalloc.hookfile.is_ours says it is vfalloc's, the package's
    prerm removed it at `remove`). One scratch root: the package installed once, then each file
    put in place and the installed prerm run on it, chrooted, as dpkg runs it."""
    tmp = tmp_path_factory.mktemp("verdicts")
    hooks = tmp / "root" / HOOKS
    (hooks / "qemu.d").mkdir(parents=True)
    (hooks / "real").write_bytes(REAL)
    said = {}
    for name, (kind, content) in HOOK_FILES.items():
        put(hooks / "qemu.d/vfalloc", kind, content)
        said[name] = hookfile.is_ours(hooks / "qemu.d/vfalloc")
        remove_any(hooks / "qemu.d/vfalloc")
        (hooks / "cases").mkdir(exist_ok=True)
        put(hooks / "cases" / name, kind, content)
    run_each = (f'for case in "$root/{HOOKS}"/cases/*; do '
                f'hook="$root/{HOOKS}/qemu.d/vfalloc"; cp -P -R "$case" "$hook"; '
                'chroot "$root" /var/lib/dpkg/info/vfalloc.prerm remove >/dev/null; '
                'if [ -e "$hook" ] || [ -L "$hook" ]; then echo "kept ${case##*/}"; rm -rf "$hook"; '
                'else echo "removed ${case##*/}"; fi; done')
    done = scratch_dpkg(tmp, f"dpkg -i {deb} >/dev/null", run_each)
    assert done.returncode == 0, done.stdout + done.stderr
    removed = {line.split()[1]: line.split()[0] == "removed" for line in done.stdout.splitlines()}
    assert set(removed) == set(HOOK_FILES), done.stdout
    assert (hooks / "real").read_bytes() == REAL  # a symlink goes, not what it points at
    return {name: (said[name], removed[name]) for name in HOOK_FILES}


def remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize("name", list(HOOK_FILES))
def test_the_package_and_vfalloc_agree_on_which_hook_file_is_vfalloc_s(verdicts, name):
    """The maintainer scripts' shell rule (`head -c 512 | grep -F MARKER`) is
    vfalloc.hookfile.written_by_vfalloc's, the rule `vfalloc install-hook` overwrites and removes
    by: the marker in the first 512 bytes."""
    says, removed = verdicts[name]
    assert removed == says
    assert says == {"as-install-hook-writes": True, "marker-ends-at-byte-512": True, "marker-after-nul-bytes": True,
                    "marker-after-bytes-not-utf8": True, "marker-after-utf8-within-512-bytes": True,
                    "symlink-to-vfalloc-s": True}.get(name, False)


def test_both_scripts_look_for_vfallocs_marker():
    for script_name in ("vfalloc.prerm", "vfalloc.postrm"):
        text = (REPO / "debian" / script_name).read_text()
        assert f"grep -qaF -e '{HOOK_MARKER}'" in text and "head -c 512 " in text, script_name
