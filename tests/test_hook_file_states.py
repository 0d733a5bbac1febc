"""The hook file as `vfalloc install-hook` writes it, with the real Python behind it, in every
state vfalloc's own things may be in: its interpreter or package gone, the runtime directory and
the lease table odd or planted by someone else.

What must hold (docs/reliability.md, "What the hook needs, and what it does without it"): a domain that asks for no VF starts
and stops whatever the state, with no hang; every call but `prepare begin` of a domain that asks
for a VF exits 0 (libvirt kills a running domain whose `reconnect begin` hook fails); a domain
that asks for a VF is served or refused with one line that names the path or the fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hookfiles
import pytest
from conftest import REPO
from fakehost import i350

from vfalloc import templates

DATA = REPO / "tests" / "data" / "libvirt"
PLAIN, ASKS = "web1", "db1"
XML = {PLAIN: (DATA / "plain-prepare-begin.xml").read_bytes(), ASKS: (DATA / "asks-prepare-begin.xml").read_bytes()}
CALLS = [("prepare", "begin", "-"), ("started", "begin", "-"), ("release", "end", "destroyed"),
         ("reconnect", "begin", "-"), ("migrate", "begin", "-"), ("restore", "begin", "-")]


@pytest.fixture
def host(scratch, tmp_path):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    return scratch


def run(hook: Path, env: dict[str, str], domain: str, op: str, subop: str, extra: str = "-",
        xml: bytes | None = None) -> subprocess.CompletedProcess:
    """One call as libvirt makes it. The bound is only there to turn a hang into a failure."""
    return subprocess.run([str(hook), domain, op, subop, extra], input=XML[domain] if xml is None else xml,
                          env=env, capture_output=True, timeout=120)


def leases(scratch) -> list[str]:
    return [x["domain"] for x in json.loads(scratch.state.read_text())["leases"]] if scratch.state.exists() else []


# -- vfalloc cannot run: its interpreter, its package or its Python gone --

def _bare_venv(tmp: Path) -> str:
    """A real venv of this Python without vfalloc in it: what is left of an install whose
    package was removed (or a Python upgrade that left the venv's site-packages behind)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "bare")], check=True, timeout=120)
    return str(tmp / "bare" / "bin" / "python")


def _aborting(tmp: Path) -> str:
    """An interpreter that dies at start-up as a broken Python does (several lines, SIGABRT)."""
    path = tmp / "python"
    path.write_text("#!/bin/sh\necho 'Fatal Python error: init_fs_encoding: failed to get the Python codec' >&2\n"
                    "echo 'Python runtime state: core initialized' >&2\nkill -ABRT $$\n")
    path.chmod(0o755)
    return str(path)


def _not_executable(tmp: Path) -> str:
    path = tmp / "python"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o644)
    return str(path)


BROKEN = {
    "interpreter-gone": lambda tmp: "/opt/vfalloc-removed/bin/python",
    "package-gone": _bare_venv,
    "python-aborts": _aborting,
    "interpreter-not-executable": _not_executable,
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_when_vfalloc_cannot_run_only_a_start_that_asks_for_a_vf_is_refused(host, tmp_path, broken):
    hook = hookfiles.write(tmp_path / "vfalloc", BROKEN[broken](tmp_path))
    env = host.env()
    for domain in (PLAIN, ASKS):
        for op, subop, extra in CALLS:
            r = run(hook, env, domain, op, subop, extra)
            refused = (domain, op) == (ASKS, "prepare")
            ran_python = op in ("reconnect", "migrate", "restore") or (domain == ASKS and op != "started")
            assert r.returncode == (1 if refused else 0), (domain, op, r.stderr)
            assert r.stdout == b""  # migrate/restore: libvirt goes on with the XML it has
            err = r.stderr.decode()
            if not ran_python:
                assert err == ""
                continue
            assert err.count("\n") == 1, err
            if refused:
                assert err.startswith("vfalloc: cannot run vfalloc (") and f"and {ASKS} asks for a VF: " in err
            else:
                assert err.startswith("vfalloc: warning: cannot run vfalloc (") and f"{domain} {op} goes on" in err
            assert "`vfalloc install-hook --remove`" in err


def test_a_lease_reserved_by_hand_asks_for_a_vf_too(host, tmp_path):
    r = host.run("alloc", "--domain", PLAIN, "--uuid", "00000000-0000-0000-0000-0000000000aa", "--pool", "lan0")
    assert r.code == 0, r.err
    hook = hookfiles.write(tmp_path / "vfalloc", "/opt/vfalloc-removed/bin/python")
    r = run(hook, host.env(), PLAIN, "prepare", "begin")
    assert r.returncode == 1 and f"and {PLAIN} asks for a VF" in r.stderr.decode()
    assert run(hook, host.env(), PLAIN, "release", "end", "destroyed").returncode == 0


def test_why_vfalloc_could_not_run_is_its_first_line(host, tmp_path):
    hook = hookfiles.write(tmp_path / "vfalloc", _bare_venv(tmp_path))
    err = run(hook, host.env(), ASKS, "prepare", "begin").stderr.decode()
    assert (f"exited with {templates.EXIT_CANNOT_LOAD}: cannot import vfalloc.hook: ModuleNotFoundError: "
            "No module named 'vfalloc'") in err


# -- the runtime directory and the lease table in every odd state --

def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _linked_table(scratch) -> None:
    real = scratch.state.with_name("real.json")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text('{"version": 1, "leases": [], "last": {}}\n')
    scratch.state.symlink_to(real)


def _run_dir_file(run: Path) -> None:
    run.parent.mkdir(parents=True, exist_ok=True)
    run.write_text("")


def _run_dir_mode(run: Path, mode: int) -> None:
    run.mkdir(parents=True)
    run.chmod(mode)


def _run_dir_owner(run: Path) -> None:
    run.mkdir(parents=True, mode=0o700)
    os.chown(run, 65534, 65534)


def _run_dir_link(run: Path) -> None:
    elsewhere = run.parent / "elsewhere"
    elsewhere.mkdir(parents=True, mode=0o700)
    run.symlink_to(elsewhere)


# What a domain that asks for a VF gets: served (the runtime directory is only caches, counters
# and stamps) or refused with the table's path.
STATES = {
    "run-dir-missing": (lambda s: None, "served"),
    "run-dir-symlink": (lambda s: _run_dir_link(s.run_dir), "served"),
    "run-dir-regular-file": (lambda s: _run_dir_file(s.run_dir), "served"),
    "run-dir-fifo": (lambda s: _fifo(s.run_dir), "served"),
    "run-dir-other-owner": (lambda s: _run_dir_owner(s.run_dir), "served"),
    "run-dir-mode-0777": (lambda s: _run_dir_mode(s.run_dir, 0o777), "served"),
    "table-missing": (lambda s: None, "served"),
    "table-symlink": (_linked_table, "refused"),
    "table-fifo": (lambda s: _fifo(s.state), "refused"),
    "table-unreadable": (lambda s: s.state.mkdir(parents=True), "refused"),
    "table-malformed": (lambda s: (s.state.parent.mkdir(parents=True), s.state.write_text('{"web1": [')), "refused"),
    "table-empty": (lambda s: (s.state.parent.mkdir(parents=True), s.state.write_text("")), "refused"),
}


@pytest.mark.parametrize("state", STATES, ids=list(STATES))
def test_a_domain_that_asks_for_nothing_starts_and_stops_whatever_the_state(host, tmp_path, state):
    STATES[state][0](host)
    log = tmp_path / "hook.log"
    env = {**host.env(), "VFALLOC_HOOK_LOG": str(log)}
    table_unusable = state in ("table-symlink", "table-fifo", "table-unreadable", "table-malformed", "table-empty")
    for op, subop, extra in CALLS:
        r = run(Path(hookfiles.hook_file()), env, PLAIN, op, subop, extra)
        err = r.stderr.decode()
        if op == "reconnect" and table_unusable:  # it frees the leases of stopped domains: it says why it could not
            assert r.returncode == 0 and err.count("\n") == 1 and str(host.state) in err, err
        else:
            assert (r.returncode, err) == (0, ""), (op, err)
    text = log.read_text() if log.exists() else ""
    if table_unusable and state != "table-empty":  # the shell part found no name in an empty file
        # the shell part could not search the table (or found the name in it): Python looked,
        # and says in one line that it could not look for a lease reserved by hand
        warned = [x for x in text.splitlines() if "cannot look for a lease reserved by hand" in x]
        # at prepare and release; at started too unless the shell part could search the text
        assert len(warned) == (2 if state == "table-malformed" else 3), text
        assert all(str(host.state) in x for x in warned), text


@pytest.mark.parametrize("state", STATES, ids=list(STATES))
def test_a_domain_that_asks_for_a_vf_is_served_or_refused_in_one_line(host, state):
    make, outcome = STATES[state]
    make(host)
    before = host.state.read_bytes() if host.state.is_file() and not host.state.is_symlink() else None
    r = run(Path(hookfiles.hook_file()), host.env(), ASKS, "prepare", "begin")
    if outcome == "served":
        assert (r.returncode, r.stderr) == (0, b"") and leases(host) == [ASKS]
        assert run(Path(hookfiles.hook_file()), host.env(), ASKS, "release", "end", "destroyed").returncode == 0
        assert leases(host) == []
    else:
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1 and str(host.state) in err, err
        assert not host.state.is_file() or host.state.is_symlink() or host.state.read_bytes() == before


def test_the_start_of_a_domain_that_asks_for_nothing_never_touches_a_planted_link(host, tmp_path):
    """A runtime directory others may write to, with links planted where hook files used to keep
    a domain's XML and where the config memo goes: nothing is written through them."""
    run_dir = host.run_dir
    _run_dir_mode(run_dir, 0o777)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    for name in (f"hook-xml.{PLAIN}", f"hook-xml.{ASKS}", f"start.{ASKS}", "hook-counts.json", "metrics.pending"):
        (run_dir / name).symlink_to(target)
    for domain in (PLAIN, ASKS):
        for op, subop, extra in CALLS:
            assert run(Path(hookfiles.hook_file()), host.env(), domain, op, subop, extra).returncode == 0
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        (f"hook-xml.{PLAIN}", f"hook-xml.{ASKS}", f"start.{ASKS}", "hook-counts.json", "metrics.pending"))


def test_nothing_per_domain_outlives_its_call(host):
    for n in range(5):
        xml = XML[PLAIN].replace(b"<name>web1</name>", f"<name>vm{n}</name>".encode())
        for op, subop, extra in CALLS[:3]:
            assert run(Path(hookfiles.hook_file()), host.env(), PLAIN, op, subop, extra, xml=xml).returncode == 0
    for op, subop, extra in CALLS[:3]:
        assert run(Path(hookfiles.hook_file()), host.env(), ASKS, op, subop, extra).returncode == 0
    left = sorted(p.name for p in host.run_dir.iterdir()) if host.run_dir.exists() else []
    assert [x for x in left if not x.startswith("config-")] == [], left


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a full tmpfs in a private mount namespace needs root")
def test_a_full_runtime_directory_refuses_no_start(host, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    for domain in (PLAIN, ASKS):
        for op, subop, extra in CALLS[:3]:
            script = (f"mount -t tmpfs -o size=4k,mode=0700 none {full} && "
                      f"(dd if=/dev/zero of={full}/fill bs=1k 2>/dev/null; :) && "
                      f"VFALLOC_RUN_DIR={full} exec {hookfiles.hook_file()} {domain} {op} {subop} {extra}")
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                  input=XML[domain], env=host.env(), capture_output=True, timeout=120)
            assert (done.returncode, done.stderr) == (0, b""), (domain, op, done.stderr)
    assert leases(host) == []  # db1 was leased at prepare and given back at release


# -- the hook file's text --

@pytest.mark.parametrize("path", ["/etc/vfalloc/$(touch PWNED).toml", "/etc/vfalloc/@STATE@ `touch PWNED`.toml",
                                  "/etc/vfalloc/it's @PYTHON@.toml"], ids=["command", "placeholder", "quote"])
def test_a_config_path_is_one_word_of_the_script_whatever_it_holds(host, tmp_path, path):
    recorder = tmp_path / "python"
    recorder.write_text(f"#!/bin/sh\nprintf '%s' \"$VFALLOC_CONFIG\" > {tmp_path}/seen\n")
    recorder.chmod(0o755)
    hook = hookfiles.write(tmp_path / "vfalloc", str(recorder), config=path)
    env = {k: v for k, v in host.env().items() if k != "VFALLOC_CONFIG"}
    r = subprocess.run([str(hook), ASKS, "prepare", "begin", "-"], input=XML[ASKS], env=env, cwd=tmp_path,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seen").read_text() == path and not (tmp_path / "PWNED").exists()
    assert subprocess.run(["sh", "-n", str(hook)]).returncode == 0


FILLS = {
    "value-without-placeholder": ("a @A@ b", {"A": "1", "B": "2"}),
    "placeholder-without-value": ("a @A@ @B@", {"A": "1"}),
}


@pytest.mark.parametrize("case", FILLS, ids=list(FILLS))
def test_a_placeholder_left_or_unused_is_an_error(case):
    template, values = FILLS[case]
    with pytest.raises(ValueError, match="placeholders"):
        templates.fill(template, values)


def test_a_value_is_never_searched_for_placeholders_again():
    assert templates.fill("@A@ @B@", {"A": "@B@", "B": "x"}) == "@B@ x"


def test_the_hook_file_is_a_shell_program_sh_accepts():
    for config in (None, "/etc/vfalloc/other.toml"):
        text = hookfiles.script("/usr/bin/python3", config)
        r = subprocess.run(["sh", "-n"], input=text.encode(), capture_output=True, timeout=60)
        assert (r.returncode, r.stderr) == (0, b"")
        assert re.search(r"@[A-Z]+@", text) is None


def test_install_hook_makes_missing_parents_0755_under_umask_000(scratch, tmp_path):
    hooks_dir = tmp_path / "etc" / "libvirt" / "hooks"
    old = os.umask(0)
    try:
        r = scratch.run("install-hook", "--hooks-dir", str(hooks_dir))
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in (tmp_path / "etc", tmp_path / "etc/libvirt", hooks_dir, hooks_dir / "qemu.d")}
    assert modes == {"etc": 0o755, "etc/libvirt": 0o755, "etc/libvirt/hooks": 0o755, "etc/libvirt/hooks/qemu.d": 0o755}
    assert (hooks_dir / "qemu.d" / "vfalloc").stat().st_mode & 0o777 == 0o755


PLANTED_FIFOS = ["hook-counts.json", "hook-counts.json.lock", "metrics.pending", "metrics.lock", f"start.{ASKS}"]


def test_fifos_in_the_runtime_directory_hold_no_call(host, tmp_path):
    """FIFOs where vfalloc keeps its files, in a private runtime directory: every call, a refused
    one (which counts itself) among them, ends without waiting for a writer."""
    target = tmp_path / "vfalloc.prom"
    host.write_config(f'[settings]\nmetrics_textfile = "{target}"\n\n' + host.config.read_text())
    host.run_dir.mkdir(parents=True, mode=0o700)
    for name in PLANTED_FIFOS:
        os.mkfifo(host.run_dir / name)
    memo = Path(config_cache_memo(host))
    os.mkfifo(memo)
    refused = XML[ASKS].replace(b'pool="lan0"', b'pool="nosuch"')
    assert b'pool="nosuch"' in refused
    r = run(Path(hookfiles.hook_file()), host.env(), ASKS, "prepare", "begin", xml=refused)
    assert r.returncode == 1 and r.stderr.decode().startswith("vfalloc: ") and r.stderr.count(b"\n") == 1
    for domain in (PLAIN, ASKS):
        for op, subop, extra in CALLS:
            assert run(Path(hookfiles.hook_file()), host.env(), domain, op, subop, extra).returncode == 0
    assert sorted(p.name for p in host.run_dir.iterdir()) == sorted([*PLANTED_FIFOS, memo.name])


def test_a_refusal_counts_nothing_in_a_runtime_directory_others_may_write(host, tmp_path):
    _run_dir_mode(host.run_dir, 0o777)
    log = tmp_path / "hook.log"
    refused = XML[ASKS].replace(b'pool="lan0"', b'pool="nosuch"')
    r = run(Path(hookfiles.hook_file()), {**host.env(), "VFALLOC_HOOK_LOG": str(log)}, ASKS, "prepare", "begin",
            xml=refused)
    assert r.returncode == 1 and list(host.run_dir.iterdir()) == []
    assert f"cannot count the hook's refused call: the runtime directory is not used: {host.run_dir} has mode 0777" \
        in log.read_text()


def config_cache_memo(scratch) -> str:
    from vfalloc import config_cache

    return config_cache.memo_path(str(scratch.run_dir), str(scratch.config))


@pytest.mark.parametrize("length", [240, 247, 250, 255], ids=lambda n: f"name-{n}-bytes")
def test_a_long_name_starts_and_gets_its_vf(host, length):
    """A domain name as long as libvirt allows: nothing vfalloc keeps is named after it past what
    a file name may be. `vfalloc start` then leaves no stamp (hookfile.StartStamp)."""
    from vfalloc.hookfile import StartStamp

    name = "v" * length
    for domain, xml in ((name, XML[PLAIN].replace(b"<name>web1</name>", f"<name>{name}</name>".encode())),
                        (name, XML[ASKS].replace(b"<name>db1</name>", f"<name>{name}</name>".encode()))):
        for op, subop, extra in CALLS[:3]:
            r = subprocess.run([hookfiles.hook_file(), domain, op, subop, extra], input=xml, env=host.env(),
                               capture_output=True, timeout=120)
            assert (r.returncode, r.stderr) == (0, b""), (op, r.stderr)
    stamp = StartStamp(str(host.run_dir), name)  # ".start.NAME.PID.tmp" would be past 255 bytes
    assert (stamp.path, stamp.write(), stamp.taken()) == (None, None, False)
    assert [p for p in host.run_dir.iterdir() if p.name.startswith("start.")] == []
    shorter = StartStamp(str(host.run_dir), "v" * 200)
    assert shorter.write() is None and shorter.path is not None and not shorter.taken()
