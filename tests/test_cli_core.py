"""`vfalloc list / pools / alloc / release` through main(argv) and as the installed executable."""

import io
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from fakehost import connectx, i350

VFALLOC = shutil.which("vfalloc") or os.path.join(os.path.dirname(os.sys.executable), "vfalloc")
LIST_KEYS = {"vf", "pf", "pf_netdev", "vf_index", "pool", "state", "domain", "domain_uuid", "mac", "vlan",
             "numa_node", "iommu_group", "driver"}


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


@pytest.fixture
def i350_host(scratch):
    i350(scratch.fs)
    return scratch


def test_list_json_keys_and_states(i350_host):
    s = i350_host
    s.write_config('[pools.lan0]\npfs = ["enp1s0f0#0-3", "enp1s0f1"]\n')
    assert s.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "lan0").code == 0
    r = s.run("list", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert len(rows) == 28 and all(LIST_KEYS <= set(row) for row in rows)
    by_vf = {row["vf"]: row for row in rows}
    leased = by_vf["0000:01:10.0"]
    assert (leased["state"], leased["domain"], leased["domain_uuid"], leased["pool"], leased["pf_netdev"]) == (
        "leased", "vm1", uuid(1), "lan0", "enp1s0f0")
    assert by_vf["0000:01:12.0"]["state"] == "unusable"      # VF 4 of port 0 is outside the range
    assert by_vf["0000:01:10.2"]["state"] == "unusable"      # port 2 is in no pool
    assert by_vf["0000:01:10.1"]["state"] == "free" and by_vf["0000:01:10.1"]["driver"] == "igbvf"


def test_list_table_for_people(i350_host):
    s = i350_host
    s.run("alloc", "--domain", "web1", "--uuid", uuid(7), "--pool", "enp1s0f3", "--vlan", "30")
    r = s.run("list")
    lines = r.out.splitlines()
    assert lines[0].split() == ["VF", "PF", "#", "POOL", "STATE", "DOMAIN", "MAC", "VLAN", "NUMA", "GROUP", "DRIVER"]
    row = next(line for line in lines if "web1" in line).split()
    assert row[:6] == ["0000:01:10.3", "enp1s0f3", "0", "enp1s0f3", "leased", "web1"] and row[7] == "30"


def test_stale_after_reboot_is_shown(i350_host):
    s = i350_host
    s.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp1s0f0")
    s.set_boot_id("99999999-2222-3333-4444-555555555555")
    r = s.run("list")
    assert "stale: 0000:01:10.0 leased to vm1: taken in an earlier boot" in r.out
    rows = json.loads(s.run("list", "--json").out)
    assert [row["state"] for row in rows if row["domain"]] == ["stale"]


def test_pools_capacity(i350_host):
    s = i350_host
    s.write_config('[pools.lan0]\npfs = ["enp1s0f0", "enp1s0f1"]\npolicy = "spread"\n[pools.san]\npfs = ["enp1s0f2#0-1"]\n')
    for n in range(3):
        s.run("alloc", "--domain", f"vm{n}", "--uuid", uuid(n), "--pool", "lan0")
    pools = json.loads(s.run("pools", "--json").out)
    lan0 = pools[0]
    assert (lan0["pool"], lan0["total"], lan0["free"], lan0["leased"], lan0["stale"]) == ("lan0", 14, 11, 3, 0)
    assert [(pf["pf_netdev"], pf["leased"]) for pf in lan0["pfs"]] == [("enp1s0f0", 2), ("enp1s0f1", 1)]
    assert (pools[1]["pool"], pools[1]["total"]) == ("san", 2)
    text = s.run("pools").out
    assert text.splitlines()[0].split() == ["POOL", "PF", "TOTAL", "FREE", "LEASED", "STALE"]
    assert "lan0  (spread)  14     11    3       0" in text


def test_pool_of_pf_without_vfs_is_listed(scratch):
    scratch.fs.add_pf("0000:02:00.0", netdev="enp2s0", vendor="8086", device="1521", vf_device="1520",
                      driver="igb", vf_driver="igbvf", totalvfs=7, numvfs=0)
    pools = json.loads(scratch.run("pools", "--json").out)
    assert [(p["pool"], p["total"], len(p["pfs"])) for p in pools] == [("enp2s0", 0, 1)]
    r = scratch.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp2s0")
    assert r.code == 1 and "the pool has no VFs" in r.err


def test_alloc_is_idempotent_and_release_is_isolated(i350_host):
    s = i350_host
    a = json.loads(s.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp1s0f0", "--json").out)
    again = s.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp1s0f0", "--json")
    b = json.loads(again.out)
    assert a["vf"] == b["vf"] and again.err == ""  # the same request: no reservation replaced
    s.run("alloc", "--domain", "vm2", "--uuid", uuid(2), "--pool", "enp1s0f0")
    r = s.run("release", "--uuid", uuid(1))
    assert r.out == f"released {a['vf']} from vm1\n"
    rows = json.loads(s.run("list", "--json").out)
    assert [row["domain"] for row in rows if row["domain"]] == ["vm2"]
    assert s.run("release", "--uuid", uuid(1)).out == f"no leases held by {uuid(1)}\n"


def _state_bytes(s):
    return s.state.read_bytes() if s.state.exists() else None


@pytest.mark.parametrize("argv,message", [
    (["alloc", "--domain", "x", "--uuid", "not-a-uuid", "--pool", "enp1s0f0"], "'not-a-uuid' is not a domain UUID"),
    (["alloc", "--domain", "x", "--uuid", uuid(1), "--pool", "nope"], "no pool named nope for x"),
    (["alloc", "--domain", "x", "--uuid", uuid(1), "--pool", "enp1s0f0", "--mac", "zz"], "mac='zz' is not a MAC"),
    (["alloc", "--domain", "x", "--uuid", uuid(1), "--pool", "enp1s0f0", "--mac", "01:00:5e:00:00:01"], "multicast"),
    (["alloc", "--domain", "x", "--uuid", uuid(1), "--pool", "enp1s0f0", "--vlan", "4095"], "vlan=4095 is out of range"),
    (["alloc", "--domain", "x", "--uuid", uuid(1), "--pool", "enp1s0f0", "--type", "pci"], "invalid choice: 'pci'"),
    (["alloc", "--domain", "x"], "the following arguments are required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["release", "--uuid", "x"], "'x' is not a domain UUID"),
], ids=["bad-uuid", "unknown-pool", "bad-mac", "multicast-mac", "vlan", "type", "missing-args", "unknown-command",
        "release-bad-uuid"])
def test_bad_input_is_one_line_and_changes_nothing(i350_host, argv, message):
    s = i350_host
    s.run("alloc", "--domain", "keep", "--uuid", uuid(9), "--pool", "enp1s0f1")
    before = _state_bytes(s)
    r = s.run(*argv)
    assert r.code != 0 and r.out == ""
    assert r.err.count("\n") == 1 and r.err.startswith("vfalloc: ") and message in r.err
    assert _state_bytes(s) == before


def test_broken_config_is_one_line(i350_host):
    i350_host.write_config("[pools.x]\npfs = [\"eth7\"]\n")
    r = i350_host.run("list")
    assert r.code == 1 and r.err.count("\n") == 1 and "names PF 'eth7'" in r.err


def test_broken_state_is_one_line_and_kept(i350_host):
    i350_host.state.parent.mkdir(parents=True)
    i350_host.state.write_text("{broken")
    for argv in (["list"], ["alloc", "--domain", "a", "--uuid", uuid(1), "--pool", "enp1s0f0"]):
        r = i350_host.run(*argv)
        assert r.code == 1 and "is not valid JSON" in r.err and r.err.count("\n") == 1
    assert i350_host.state.read_text() == "{broken"


def test_real_executable_with_env(i350_host):
    env = i350_host.env()
    r = subprocess.run([VFALLOC, "alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp1s0f2"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "leased to vm1" in r.stdout
    r = subprocess.run([VFALLOC, "list", "--json"], env=env, capture_output=True, text=True)
    assert [row["pool"] for row in json.loads(r.stdout) if row["domain"] == "vm1"] == ["enp1s0f2"]
    r = subprocess.run([VFALLOC, "alloc", "--pool"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run([VFALLOC, "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "list" in r.stdout and "pools" in r.stdout


def test_racing_processes_never_share_a_vf(scratch):
    """Many `vfalloc alloc` processes at once against one state file: every VF once, one refused."""
    connectx(scratch.fs, numvfs=8)
    scratch.write_config('[pools.cx]\npfs = ["ens5f0np0", "ens6f0np0"]\n')
    env = scratch.env()

    def one(n):
        return subprocess.run([VFALLOC, "alloc", "--domain", f"vm{n}", "--uuid", uuid(n), "--pool", "cx", "--json"],
                              env=env, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=17) as pool:
        results = list(pool.map(one, range(17)))
    ok = [json.loads(r.stdout) for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert len(ok) == 16 and len({x["vf"] for x in ok}) == 16
    assert len(refused) == 1 and "no free VF in pool cx" in refused[0].stderr
    rows = json.loads(subprocess.run([VFALLOC, "list", "--json"], env=env, capture_output=True, text=True).stdout)
    assert sorted(r["domain_uuid"] for r in rows if r["state"] == "leased") == sorted(x["uuid"] for x in ok)


def test_lease_of_a_vanished_vf_is_listed_stale_without_a_vf_index(i350_host):
    s = i350_host
    s.run("alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp1s0f0", "--index", "2")
    vf0 = s.sysfs / "bus/pci/devices/0000:01:00.0/virtfn0"
    vf0.unlink()  # the kernel removed VF 0 (e.g. numvfs changed behind vfalloc's back)
    rows = json.loads(s.run("list", "--json").out)
    gone = [r for r in rows if r["vf"] == "0000:01:10.0"]
    assert [(r["state"], r["reason"], r["vf_index"], r["domain"]) for r in gone] == [
        ("stale", "its VF no longer exists", None, "vm1")]


@pytest.mark.parametrize("argv", [["alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "enp1s0f0"], ["list"],
                                  ["pools"], ["release", "--uuid", uuid(1)]], ids=["alloc", "list", "pools", "release"])
def test_commands_without_domain_xml_do_not_load_lxml(i350_host, argv):
    """lxml is the largest import vfalloc has; only commands that read domain XML pay for it."""
    code = ("import sys\nfrom vfalloc.cli import main\nrc = main(sys.argv[1:])\n"
            "assert 'lxml' not in sys.modules, 'lxml was imported'\nsys.exit(rc)")
    done = subprocess.run([os.sys.executable, "-c", code, argv[0], *i350_host.flags(), *argv[1:]],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("columns", ["50", "100", None], ids=["COLUMNS=50", "COLUMNS=100", "no-COLUMNS"])
def test_help_is_laid_out_as_argparse_lays_it_out(monkeypatch, columns):
    """vfalloc's help formatter looks the terminal's width up once, without shutil: every
    command's help is the text argparse's own formatter gives for the same width."""
    import argparse

    from vfalloc import cli

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setattr(cli, "_COLUMNS", [])
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = [parser, *commands.choices.values()]
    parsers += [p for sub in commands.choices.values() for a in sub._actions
                if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
    assert len(parsers) >= 15
    for p in parsers:
        ours = p.format_help()
        p.formatter_class = argparse.HelpFormatter
        assert ours == p.format_help(), p.prog


def _commands_of(parser):
    import argparse

    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices


def test_each_command_is_parsed_as_by_the_parser_of_every_command():
    """main() builds only the parser of the command it runs and those defined beside it
    (cli.build_parser(command)): cli.COMMANDS names exactly the parser's commands, and each
    narrowed parser gives that command the help every command's parser gives it, sub-commands
    included, and the same values for the same arguments."""
    from vfalloc import cli

    full = _commands_of(cli.build_parser())
    assert set(full) == cli.COMMANDS
    for name in sorted(cli.COMMANDS):
        narrowed = _commands_of(cli.build_parser(name))
        group = next(names for names, _, _ in cli._GROUPS if name in names)
        assert list(narrowed) == list(group) and set(group) <= set(full), name
        pairs = [(narrowed[name], full[name])]
        if name in ("host", "fdb"):  # their sub-commands
            pairs += [(sub, _commands_of(full[name])[key]) for key, sub in _commands_of(narrowed[name]).items()]
        for ours, theirs in pairs:
            assert ours.format_help() == theirs.format_help(), ours.prog
            assert ours.format_usage() == theirs.format_usage(), ours.prog
    for argv in (["alloc", "--domain", "vm1", "--uuid", uuid(1), "--pool", "lan0", "--vlan", "30", "--state", "/x"],
                 ["list", "--json", "-c", "test:///default"], ["host", "numvfs", "enp1s0f0", "4", "--dry-run"]):
        ours, theirs = vars(cli.build_parser(argv[0]).parse_args(argv)), vars(cli.build_parser().parse_args(argv))
        assert ours.pop("func").spec == theirs.pop("func").spec and ours == theirs, argv


@pytest.mark.parametrize("argv", [["lst"], ["--help"], ["list", "--nope"], ["host", "nope"], []],
                         ids=["unknown-command", "help", "unknown-flag", "unknown-subcommand", "none"])
def test_usage_errors_and_help_are_those_of_the_parser_of_every_command(argv, capsys):
    """What main() says for a wrong or missing command, and for --help, is what the parser of
    every command says: a wrong name is told every command that exists."""
    from vfalloc import cli
    from vfalloc.errors import UsageError

    err = io.StringIO()
    code = cli.main(argv, out=io.StringIO(), err=err)
    printed = capsys.readouterr().out
    try:
        cli.build_parser().parse_args(argv)
        raise AssertionError(f"{argv} parsed")
    except SystemExit as exc:  # --help
        assert (code, printed, err.getvalue()) == (exc.code, capsys.readouterr().out, "")
    except UsageError as exc:  # one line, as main() reports it
        assert (code, printed, err.getvalue()) == (exc.exit_code, "", f"vfalloc: {exc}\n")
    if argv in (["lst"], ["--help"]):
        assert all(name in printed + err.getvalue() for name in ("pools", "install-hook", "fdb", "completion"))


def test_the_executable_runs_without_the_cycle_collector(i350_host):
    """cli.run, the `vfalloc` executable's entry, switches the cycle collector off (as the hook
    does); main(), which tests and other callers use, leaves it as it is."""
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: sys.stderr.write(f'collector on: {gc.isenabled()}\\n'))\n"
            "from vfalloc.cli import main, run\n"
            "assert main(['--version']) == 0 and gc.isenabled()\n"
            "sys.argv = ['vfalloc', *sys.argv[1:]]\nrun()\n")
    done = subprocess.run([os.sys.executable, "-c", code, "list", *i350_host.flags()], capture_output=True, text=True)
    assert done.returncode == 0 and "0000:01:10.0" in done.stdout, done.stderr
    assert done.stderr.endswith("collector on: False\n"), done.stderr
