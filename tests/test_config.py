"""Pools from the TOML file (and without one), resolved against a realistic host."""


import pytest
from fakehost import FakeSys, connectx, i350

from vfalloc.config import load_settings, read_config, resolve_pools
from vfalloc.errors import ConfigError, UsageError
from vfalloc.model import PciAddress
from vfalloc.sysfs import Sysfs


@pytest.fixture
def host(tmp_path):
    fs = FakeSys(tmp_path / "sys")
    i350(fs)
    connectx(fs)
    fs.add_pf("0000:81:00.0", netdev=None, vendor="8086", device="1521", vf_device="1520",
              driver="igb", vf_driver="vfio-pci", totalvfs=7, numvfs=2)
    return Sysfs(fs.root).read_host()


def _config(tmp_path, text):
    path = tmp_path / "vfalloc.toml"
    path.write_text(text)
    return read_config(path, must_exist=True)


def test_no_file_gives_one_pool_per_pf(tmp_path, host):
    config = read_config(tmp_path / "absent.toml", must_exist=False)
    pools = resolve_pools(config, host)
    assert [p.name for p in pools] == ["enp1s0f0", "enp1s0f1", "enp1s0f2", "enp1s0f3",
                                       "ens5f0np0", "0000:81:00.0", "ens6f0np0"]
    assert all(p.policy == "pack" and len(p.members) == 1 for p in pools)


def test_pools_with_ranges_policy_and_defaults(tmp_path, host):
    config = _config(tmp_path, """
[pools.lan0]
pfs = ["enp1s0f0#0-3,6", "0000:01:00.1"]
policy = "spread"
vlan = 20
trust = "on"
spoofchk = "off"
numvfs = 7

[pools.san]
pfs = ["enp1s0f0#4-5"]

[pf."0000:01:00.1"]
numvfs = 4
""")
    lan0, san = resolve_pools(config, host)
    assert (lan0.policy, lan0.vlan, lan0.trust, lan0.spoofchk) == ("spread", 20, "on", "off")
    assert lan0.members[0].indexes == frozenset({0, 1, 2, 3, 6})
    assert lan0.members[0].numvfs == 7 and lan0.members[1].numvfs == 4
    assert lan0.members[1].pf == PciAddress.parse("0000:01:00.1") and lan0.members[1].indexes is None
    vf4 = host.pf("enp1s0f0").vfs[4]
    assert san.admits(vf4) and not lan0.admits(vf4)


@pytest.mark.parametrize("text,message", [
    ('[pools.a]\npfs = ["enp1s0f0"]\n[pools.b]\npfs = ["enp1s0f0#2"]\n',
     "VF 2 of 0000:01:00.0 is in pool a and pool b"),
    ('[pools.a]\npfs = ["enp1s0f0#1-3"]\n[pools.b]\npfs = ["0000:01:00.0#3-4"]\n',
     "VF 3 of 0000:01:00.0 is in pool a and pool b"),
    ('[pools.a]\npfs = ["enp1s0f0#1"]\n[pools.b]\npfs = ["enp1s0f0"]\n',
     "PF 0000:01:00.0 (all its VFs) is in pool a and pool b"),
    ('[pools.a]\npfs = ["eth9"]\n', "[pools.a] names PF 'eth9', which is not an SR-IOV PF"),
    ('[pools.a]\npfs = ["enp1s0f0#0-9"]\n', "VF index 9 on enp1s0f0 is past the PF's sriov_totalvfs (7)"),
], ids=["vf-in-two-pools", "overlapping-ranges", "whole-pf-and-range", "unknown-pf", "range-past-totalvfs"])
def test_resolution_errors(tmp_path, host, text, message):
    config = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve_pools(config, host)
    assert message in str(info.value)
    assert str(tmp_path / "vfalloc.toml") in str(info.value)


@pytest.mark.parametrize("text,message", [
    ('[pools.a]\npfs = ["enp1s0f0#3-1"]\n', "runs backwards"),
    ('[pools.a]\npfs = ["enp1s0f0#x"]\n', "VF range 'enp1s0f0#x' is not valid"),
    ('[pools.a]\npfs = ["enp1s0f0#1-"]\n', "is not valid"),
    ('[pools.a]\npfs = []\n', "[pools.a] needs pfs"),
    ('[pools.a]\npfs = ["enp1s0f0"]\npolicy = "random"\n', "policy = 'random' is unknown"),
    ('[pools.a]\npfs = ["enp1s0f0"]\nvlan = 5000\n', "vlan=5000 is out of range"),
    ('[pools.a]\npfs = ["enp1s0f0"]\ntrust = "yes"\n', "trust = 'yes' is not valid"),
    ('[pools.a]\npfs = ["enp1s0f0"]\ncolour = "red"\n', "unknown key 'colour' in [pools.a]"),
    ('[pool.a]\npfs = ["enp1s0f0"]\n', "unknown key 'pool' in the top level"),
    ('[settings]\nstat = "/x"\n', "unknown key 'stat' in [settings]"),
    ('[pools.a]\npfs = ["enp1s0f0"]\nnumvfs = -1\n', "numvfs = -1 must be a whole number"),
    ('[pools.a\npfs = 1\n', "is not valid TOML"),
    ('[pools.a]\npfs = "enp1s0f0"\n', "[pools.a] needs pfs"),
    ('[pools."lan 0"]\npfs = ["enp1s0f0"]\n', "pool name 'lan 0' is not valid"),
    ('[pools.a]\npfs = ["enp1s0f0;rm"]\n', "PF name 'enp1s0f0;rm' is not valid"),
    ('[pf.enp1s0f0]\n', "[pf.enp1s0f0] numvfs is missing"),
], ids=["backwards", "letters", "open-range", "no-pfs", "policy", "vlan", "trust", "unknown-pool-key",
        "unknown-top-key", "unknown-setting", "negative-numvfs", "toml-syntax", "pfs-not-list",
        "pool-name-space", "pf-name-semicolon", "pf-without-numvfs"])
def test_file_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, text)
    assert message in str(info.value)


def test_toml_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3"):
        _config(tmp_path, '[pools.a]\npfs = ["x"]\npolicy = \n')


def test_explicit_missing_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"config": str(tmp_path / "nope.toml")}, environ={})


def test_precedence_flag_env_file_default(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[settings]\nstate = "/from/file"\nsysfs_root = "/file/sys"\nlock_timeout = 3\n')
    env = {"VFALLOC_CONFIG": str(cfg), "VFALLOC_SYSFS_ROOT": "/env/sys", "VFALLOC_STATE": "/env/state"}
    s = load_settings({"state": "/flag/state"}, environ=env)
    assert (s.state, s.sysfs_root, s.proc_root, s.lock_timeout) == (
        "/flag/state", "/env/sys", "/proc", 3.0)
    s = load_settings({}, environ={"VFALLOC_CONFIG": str(cfg)})
    assert s.state == "/from/file"


@pytest.mark.parametrize("value", ["abc", "0", "-2", "nan", "inf"], ids=["text", "zero", "negative", "nan", "inf"])
def test_bad_lock_timeout(tmp_path, value):
    with pytest.raises(UsageError, match="lock timeout"):
        load_settings({}, environ={"VFALLOC_LOCK_TIMEOUT": value, "VFALLOC_CONFIG": ""})
