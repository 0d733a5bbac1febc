"""`vfalloc completion bash|zsh`: the scripts loaded into the real shells. bash: the function
called as bash's programmable completion calls it (COMP_WORDS, COMP_CWORD), and `complete -p`;
zsh: an interactive zsh on a pseudo-terminal with compinit, the script in $fpath, and real Tab
presses. Every subcommand and flag of the parser is offered; live values (pools, PFs, domains in
the lease table) come from `vfalloc __complete` on a fake host."""

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fakehost import i350
from test_hook import Hook, domain_xml

from vfalloc.commandspec import spec
from vfalloc.completion import script

VFALLOC = shutil.which("vfalloc", path=os.path.dirname(os.path.realpath(os.sys.executable))) or ""
VENV_BIN = str(Path(os.sys.executable).parent)


@pytest.fixture
def host(scratch, tmp_path):
    """An I350 in two pools, and two domains holding VFs in the lease table."""
    i350(scratch.fs, ports=2)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n[pools.storage]\npfs = ["enp1s0f1#0-3"]\n')
    hook = Hook(scratch, tmp_path)
    for n, pool in ((1, "lan0"), (2, "storage")):
        assert hook.run(f"vm{n}", "prepare", "begin", xml=domain_xml(n, f'<vfalloc:vf pool="{pool}"/>')).returncode == 0
    env = scratch.env()
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    return env


def bash_complete(env: dict, words: list[str], tmp_path: Path) -> list[str]:
    """COMPREPLY of _vfalloc for the words typed (the last one is being completed)."""
    path = tmp_path / "vfalloc.bash"
    path.write_text(script("bash", spec()))
    words_sh = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (f"source {path}\nCOMP_WORDS=({words_sh})\nCOMP_CWORD={len(words) - 1}\n"
               "COMP_LINE=\"${COMP_WORDS[*]}\"\nCOMP_POINT=${#COMP_LINE}\n_vfalloc\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


CASES = [
    ("commands", ["vfalloc", ""], None),
    ("prefix", ["vfalloc", "me"], ["metrics"]),
    ("host-subcommands", ["vfalloc", "host", ""], None),
    ("host-prefix", ["vfalloc", "host", "nu"], ["numvfs"]),
    ("flag", ["vfalloc", "metrics", "--te"], ["--textfile"]),
    ("flags-after-value", ["vfalloc", "alloc", "--pool", "lan0", "--ty"], ["--type"]),
    ("choices", ["vfalloc", "alloc", "--type", ""], ["interface", "hostdev"]),
    ("choices-prefix", ["vfalloc", "host", "persist", "--method", "u"], ["udev"]),
    ("shell", ["vfalloc", "completion", ""], ["bash", "zsh"]),
    ("pools", ["vfalloc", "alloc", "--pool", ""], ["lan0", "storage"]),
    ("pools-prefix", ["vfalloc", "request", "web1", "--pool", "st"], ["storage"]),
    ("pf-positional", ["vfalloc", "host", "numvfs", ""], ["enp1s0f0", "enp1s0f1"]),
    ("count-positional", ["vfalloc", "host", "numvfs", "enp1s0f0", ""], []),
    ("pf-spec", ["vfalloc", "host", "persist", "enp1s0f1"], ["enp1s0f1="]),
    ("pfs-repeat", ["vfalloc", "host", "vf-driver", "enp1s0f0", "enp"], ["enp1s0f0", "enp1s0f1"]),
    ("domains", ["vfalloc", "start", ""], ["vm1", "vm2"]),
    ("uuids", ["vfalloc", "release", "--uuid", "00000000-0000-0000-0000-00000000000"],
     ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"]),
    ("typed-value", ["vfalloc", "alloc", "--mac", ""], []),
    ("hidden-helper-not-offered", ["vfalloc", "__"], []),
]


@pytest.mark.parametrize("words, want", [(w, x) for _, w, x in CASES], ids=[c[0] for c in CASES])
def test_bash(host, tmp_path, words, want):
    got = bash_complete(host, words, tmp_path)
    if want is None:  # every subcommand the parser has, in its order
        path = tuple(w for w in words[1:-1])
        want = [c.path[-1] for c in spec().find(path).subcommands if not c.hidden]
    assert got == want


def test_bash_files_and_passed_config(host, scratch, tmp_path):
    """--config FILE completes file names; a --config typed earlier reaches the helper (whose
    environment here names no config), so the pools come from that file."""
    (tmp_path / "other.toml").write_text('[pools.from_flag]\npfs = ["enp1s0f0"]\n')
    assert bash_complete(host, ["vfalloc", "list", "--config", "oth"], tmp_path) == ["other.toml"]
    env = {k: v for k, v in host.items() if k != "VFALLOC_CONFIG"}
    got = bash_complete(env, ["vfalloc", "alloc", "--config", str(tmp_path / "other.toml"), "--pool", ""], tmp_path)
    assert got == ["from_flag"]


def test_bash_registration(tmp_path):
    path = tmp_path / "vfalloc.bash"
    path.write_text(script("bash", spec()))
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", f"source {path}; complete -p vfalloc"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "complete -F _vfalloc vfalloc"


def test_every_command_and_flag_is_offered(host, tmp_path):
    for command in spec().walk():
        if command.hidden:
            continue
        flags = {f for o in command.options for f in o.flags}
        if not flags:
            continue
        got = set(bash_complete(host, ["vfalloc", *command.path, "-"], tmp_path))
        assert got == flags, command.name


def test_broken_config_offers_nothing(scratch, host, tmp_path):
    """The helper fails as every command does (one line on stderr, exit 1, nothing on stdout);
    the script drops its stderr, so the line being typed stays clean."""
    scratch.config.write_text("[pools.x\n")
    done = subprocess.run(["vfalloc", "__complete", "pools"], env=host, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"vfalloc: config {scratch.config}: is not valid TOML")
    assert bash_complete(host, ["vfalloc", "alloc", "--pool", ""], tmp_path) == []


# -- zsh --

ZSH = shutil.which("zsh")


class Zsh:
    """An interactive zsh on a pseudo-terminal: compinit with vfalloc's script as _vfalloc in
    $fpath. `complete(text)` types text and Tab, and returns the command line zsh made of it."""

    def __init__(self, env: dict, fpath: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(ZSH, ["zsh", "-f", "-i"], {**env, "TERM": "dumb", "PS1": "% "})
        self.buf = b""
        self.n = 0
        self.send(f"fpath=({fpath} $fpath); autoload -Uz compinit; compinit -u -D; unsetopt beep\n")
        self.send("print -r -- RE''ADY\n")
        self.read_until(b"READY")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, marker: bytes, bound: float = 120.0) -> bytes:
        """Output up to the marker. The bound is a backstop against a hung shell, not a figure
        tuned to this machine: zsh answers in milliseconds."""
        end = time.monotonic() + bound
        while marker not in self.buf:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                self.buf += os.read(self.fd, 65536)
            if time.monotonic() > end:
                raise AssertionError(f"zsh printed no {marker!r}; its output ends: {self.buf[-500:]!r}")
        out, _, self.buf = self.buf.partition(marker)
        return out

    def complete(self, text: str) -> str:
        """Type text, Tab; then put `print -r -- MARK` before the line (^A) and run it."""
        self.n += 1
        self.send(text + "\t")
        self.send(f"\x01print -r -- LI''NE{self.n}:\n")
        self.read_until(f"LINE{self.n}:".encode())
        return self.read_until(b"\n").decode(errors="replace").strip()

    def close(self) -> None:
        self.send("exit\n")
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def zsh(host, tmp_path):
    if ZSH is None:
        pytest.skip("zsh is not installed (tools/setup-debian installs it)")
    fpath = tmp_path / "zfunc"
    fpath.mkdir()
    (fpath / "_vfalloc").write_text(script("zsh", spec()))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "settings.toml").write_text("")
    shell = Zsh({**host, "HOME": str(tmp_path)}, fpath)
    shell.send(f"cd {tmp_path / 'work'}\n")
    yield shell
    shell.close()


ZSH_CASES = [
    ("command", "vfalloc metr", "vfalloc metrics"),
    ("host-subcommand", "vfalloc host nu", "vfalloc host numvfs"),
    ("flag", "vfalloc metrics --tex", "vfalloc metrics --textfile"),
    ("choice", "vfalloc host persist --method ud", "vfalloc host persist --method udev"),
    ("pool", "vfalloc alloc --pool sto", "vfalloc alloc --pool storage"),
    ("pf", "vfalloc host numvfs enp1s0f1", "vfalloc host numvfs enp1s0f1"),
    ("pf-unique", "vfalloc host acs enp1s0f0", "vfalloc host acs enp1s0f0"),
    ("domain", "vfalloc start vm2", "vfalloc start vm2"),
    ("uuid", "vfalloc release --uuid 00000000-0000-0000-0000-0000000000", None),
    ("file", "vfalloc list --config sett", "vfalloc list --config settings.toml"),
    ("pf-spec", "vfalloc host persist enp1s0f1", "vfalloc host persist enp1s0f1="),
]


def test_zsh(zsh):
    for name, typed, want in ZSH_CASES:
        got = zsh.complete(typed)
        if want is None:  # two UUIDs share the prefix: zsh completes up to where they differ
            want = "vfalloc release --uuid 00000000-0000-0000-0000-00000000000"
        assert got == want, name


def test_zsh_vm_prefix_lists_both(zsh):
    """An ambiguous prefix is left as typed up to what the candidates share."""
    assert zsh.complete("vfalloc start v") == "vfalloc start vm"
