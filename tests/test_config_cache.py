"""vfalloc.config_cache: the hook's parse of the config file, kept in the runtime directory and
used only for the very same text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import i350
from hookfiles import hook_file

from vfalloc import config_cache
from vfalloc.config import read_config
from vfalloc.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
[settings]
lock_timeout = 3.5
hook_log = "/var/log/vfalloc-hook.log"

[pools.lan0]
pfs = ["enp1s0f0#0-3,6", "0000:01:00.1"]
policy = "spread"
vlan = 20
trust = "on"
numvfs = 7

[pf.enp1s0f2]
numvfs = 4
"""


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "etc" / "vfalloc.toml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    return config, str(tmp_path / "run" / "vfalloc")


def memos(run_dir: str) -> list[str]:
    return sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []


def test_kept_once_then_recalled_equal_to_a_fresh_parse(files):
    config, run = files
    parsed = read_config(config, True, run_dir=run, keep=True)
    (name,) = memos(run)
    path = f"{run}/{name}"
    assert os.stat(run).st_mode & 0o777 == 0o700 and os.stat(path).st_mode & 0o777 == 0o600
    assert config_cache.recall(run, str(config), CONFIG) is not None
    assert read_config(config, True, run_dir=run) == parsed == read_config(config, True)


def test_a_recall_does_not_import_tomllib(files):
    """The point of the memo: the second run never loads the TOML parser."""
    config, run = files
    read_config(config, True, run_dir=run, keep=True)
    code = ("import sys\nfrom vfalloc.config import read_config\n"
            f"c = read_config({str(config)!r}, True, run_dir={run!r})\n"
            "print(c.pools[0].name, 'tomllib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "lan0 False"), done.stderr


def test_any_change_of_the_text_is_parsed_again(files):
    """Same length, same second: only the text tells, and the text is what is compared."""
    config, run = files
    read_config(config, True, run_dir=run, keep=True)
    stat = config.stat()
    config.write_text(CONFIG.replace("vlan = 20", "vlan = 30"))
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert read_config(config, True, run_dir=run, keep=True).pools[0].vlan == 30
    assert read_config(config, True, run_dir=run).pools[0].vlan == 30


def test_a_refused_config_is_never_kept(files):
    config, run = files
    config.write_text(CONFIG + "\n[pools.bad]\npfs = []\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"\[pools.bad\] needs pfs"):
            read_config(config, True, run_dir=run, keep=True)
    assert memos(run) == []


def test_a_config_json_cannot_hold_is_parsed_every_time(files):
    """A TOML date in [settings] passes (settings are taken as text); JSON has no dates."""
    config, run = files
    config.write_text(CONFIG.replace("lock_timeout = 3.5", "lock_timeout = 1979-05-27T07:32:00Z"))
    read_config(config, True, run_dir=run, keep=True)
    assert memos(run) == []


def _memo(run, config, **changes):
    body = {"version": config_cache.VERSION, "path": os.path.abspath(config), "text": CONFIG,
            "data": {"pools": {"evil": {"pfs": ["enp9s0f0"]}}}}
    body.update(changes)
    return json.dumps(body)


@pytest.mark.parametrize("plant", [
    pytest.param(lambda path, run, config: open(path, "w").write("{not json"), id="not-json"),
    pytest.param(lambda path, run, config: open(path, "w").write(_memo(run, config, version=2)), id="other-version"),
    pytest.param(lambda path, run, config: open(path, "w").write(_memo(run, config, path="/etc/other.toml")),
                 id="other-path"),
    pytest.param(lambda path, run, config: open(path, "w").write(_memo(run, config, text=CONFIG + " ")),
                 id="other-text"),
    pytest.param(lambda path, run, config: open(path, "w").write(_memo(run, config, data=[1])), id="data-not-table"),
    pytest.param(lambda path, run, config: (open(path + ".real", "w").write(_memo(run, config)),
                                            os.symlink(path + ".real", path)), id="symlink"),
    pytest.param(lambda path, run, config: (open(path, "w").write(_memo(run, config)), os.chmod(path, 0o666)),
                 id="world-writable"),
    pytest.param(lambda path, run, config: (open(path, "w").write(_memo(run, config)), os.chown(path, 65534, 65534)),
                 id="another-users"),
])
def test_a_memo_that_is_not_trustworthy_is_not_used(files, plant):
    """Each planted memo would turn the config into one pool named `evil`."""
    config, run = files
    os.makedirs(run, mode=0o700)
    path = config_cache.memo_path(run, str(config))
    plant(path, run, config)
    assert [p.name for p in read_config(config, True, run_dir=run).pools] == ["lan0"]


def test_a_trustworthy_planted_memo_is_used(files):
    """The counterpart of the table above: the planting itself works."""
    config, run = files
    os.makedirs(run, mode=0o700)
    path = config_cache.memo_path(run, str(config))
    with open(path, "w") as fh:
        fh.write(_memo(run, config))
    os.chmod(path, 0o600)
    assert [p.name for p in read_config(config, True, run_dir=run).pools] == ["evil"]


@pytest.mark.parametrize("prepare", [
    pytest.param(lambda run: (os.makedirs(os.path.dirname(run)), open(run, "w").close()), id="run-dir-is-a-file"),
    pytest.param(lambda run: (os.makedirs(run), os.chmod(run, 0o777)), id="run-dir-world-writable"),
    pytest.param(lambda run: (os.makedirs(os.path.dirname(run)), os.symlink("/tmp", run)), id="run-dir-symlink"),
])
def test_nothing_kept_where_it_cannot_be_kept_safely_and_the_config_still_loads(files, prepare):
    config, run = files
    prepare(run)
    assert [p.name for p in read_config(config, True, run_dir=run, keep=True).pools] == ["lan0"]
    assert not os.path.lexists(config_cache.memo_path(run, str(config)))


def test_vfalloc_list_runs_on_the_parse_the_hook_kept(scratch):
    """On a host where a VM started, the hook has kept the config's parse: `vfalloc list` then
    does not load the TOML parser either, and lists what a fresh parse lists."""
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0#0-3", "enp1s0f1"]\n')
    xml = ("<domain type='kvm'><name>vm1</name><uuid>00000000-0000-0000-0000-000000000001</uuid><metadata>"
           "<vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'><vfalloc:vf pool='lan0'/></vfalloc:vfs></metadata>"
           "<devices/></domain>")
    hook = subprocess.run([hook_file(), "vm1", "prepare", "begin", "-"],
                          input=xml, capture_output=True, text=True, env=scratch.env())
    assert hook.returncode == 0 and len(memos(str(scratch.run_dir))) == 1, hook.stderr
    code = ("import sys, io\nfrom vfalloc.cli import main\nout = io.StringIO()\n"
            "rc = main(['list', '--json'], out)\nprint(rc, 'tomllib' in sys.modules)\nprint(out.getvalue(), end='')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=scratch.env())
    status, listing = done.stdout.split("\n", 1)
    fresh = read_config(scratch.config, True)
    assert fresh.pools and (status, listing) == ("0 False", scratch.run("list", "--json").out), done.stderr
    assert '"domain": "vm1"' in listing
