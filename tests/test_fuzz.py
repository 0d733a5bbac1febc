"""The fuzz layer: random domain XML (metadata attributes, devices, names), command lines, config
files and lease tables, run through the real entry points (cli.main, hook.main) on a fake I350
host. For every input: exit 0, or exactly one line on stderr with a non-zero exit; never "internal
error", never a traceback; and a refused input leaves the config and the lease table as they were.

Values are drawn from what users and hostile files write: valid values, the same with a trailing
newline, non-ASCII digits, integers of thousands of digits, control characters, empty strings.
Seeds are fixed (the "vfalloc" hypothesis profile in conftest.py: derandomize) so a run is
reproducible; the example counts keep this module to well under a minute on an idle machine.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from conftest import REPO
from fakehost import FakeSys, i350
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vfalloc import hook
from vfalloc.cli import main as cli_main

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UUID = "00000000-0000-0000-0000-000000000001"
CONFIG = ('[settings]\nlock_timeout = 2\n[pools.lan]\npfs = ["enp1s0f0", "enp1s0f1#0-2"]\nvlan = 20\n'
          '[pools.dev]\npfs = ["enp1s0f2"]\n')

# Text that has broken parsers before: the dangerous neighbours of valid values.
TRICKY = st.sampled_from([
    "", " ", "0", "-1", "1", "4094", "4095", "65536", "9" * 5000, "²", "\u0661", "1\n", "1 ", "0x10", "1e3",
    "nan", "inf", "lan", "lan\n", "dev", "nope", "on", "off", "yes", "no", "interface", "hostdev",
    "52:54:00:12:34:56", "52:54:00:12:34:56\n", "01:00:5e:00:00:01", "00:00:00:00:00:00", UUID, UUID + "\n",
    "enp1s0f0", "enp1s0f0#0-20000000", "enp1s0f0#²", "0000:01:00.0", "0000:01:10.0", "a\nb", "a\x1bb",
    "a\x00b", "\u2028", "../x", "/dev/null", "x" * 300,
])
TEXT = st.one_of(TRICKY, st.text(max_size=12))


def one_line_or_ok(code: int, err: str) -> None:
    assert "internal error" not in err and "Traceback" not in err, err
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and err.endswith("\n"), f"exit {code} with {err!r}"


class Host:
    """A fake I350 host with its config and lease table, reset before every example."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        i350(FakeSys(self.sysfs), numvfs=4, ports=3)
        self.proc = root / "proc"
        (self.proc / "sys" / "kernel" / "random").mkdir(parents=True)
        (self.proc / "sys" / "kernel" / "random" / "boot_id").write_text("11111111-2222-3333-4444-555555555555\n")
        self.config = root / "etc" / "vfalloc.toml"
        self.config.parent.mkdir()
        self.state = root / "lib" / "state.json"
        self.libvirt_run = root / "libvirt-run"
        self.libvirt_run.mkdir()
        self.log = root / "hook.log"

    def reset(self, config: str = CONFIG, state: str | None = None) -> None:
        self.config.write_text(config)
        if self.state.parent.exists():
            for leftover in self.state.parent.iterdir():
                leftover.unlink()
        if state is not None:
            self.state.parent.mkdir(exist_ok=True)
            self.state.write_text(state)

    def env(self) -> dict[str, str]:
        return {"VFALLOC_SYSFS_ROOT": str(self.sysfs), "VFALLOC_STATE": str(self.state),
                "VFALLOC_CONFIG": str(self.config), "VFALLOC_PROC_ROOT": str(self.proc),
                "VFALLOC_LIBVIRT_RUN": str(self.libvirt_run), "VFALLOC_HOOK_LOG": str(self.log),
                "VFALLOC_RUN_DIR": str(self.root / "run"),
                "VFALLOC_IP": str(REPO / "tests" / "fakes" / "fake_ip.py"), "FAKE_IP_LOG": str(self.root / "ip.log")}

    def files(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in (self.config, self.state) if p.exists()}

    def cli(self, argv: list[str]) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(argv, out=out, err=err)
        return code, err.getvalue()

    def hook(self, name: str, op: str, subop: str, xml: bytes) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = hook.main([name, op, subop, "-"], stdin=io.BytesIO(xml), out=out, err=err, environ=self.env())
        return code, err.getvalue()


@pytest.fixture(scope="module")
def fuzz_host(tmp_path_factory):
    return Host(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def host(fuzz_host, monkeypatch):
    for key in list(os.environ):
        if key.startswith("VFALLOC_"):
            monkeypatch.delenv(key)
    for key, value in fuzz_host.env().items():
        monkeypatch.setenv(key, value)
    return fuzz_host


def check_refusal_changed_nothing(host: Host, code: int, err: str, before: dict[str, bytes]) -> None:
    one_line_or_ok(code, err)
    if code != 0:
        assert host.files() == before, f"refused ({err.strip()}) yet a file changed"


# -- command lines --

def flag(name: str, values=TEXT):
    return st.tuples(st.just(name), values).map(list)


# Paths that cannot reach outside the scratch host (the tests may run as root).
PATHS = st.sampled_from(["", "state.json", "../x", "/dev/null", "/dev/null/x", "\n", "x" * 300])

ALLOC_FLAGS = st.lists(st.one_of(
    flag("--domain"), flag("--uuid", st.one_of(st.just(UUID), TEXT)), flag("--pool", st.one_of(st.just("lan"), TEXT)),
    flag("--mac"), flag("--vlan"), flag("--trust"), flag("--spoofchk"), flag("--type"), flag("--index"),
    st.just(["--json"]), flag("--state", PATHS), flag("--config", PATHS)), max_size=6)

COMMANDS = st.one_of(
    st.tuples(st.just(["alloc", "--domain", "vm1", "--uuid", UUID, "--pool", "lan"]), ALLOC_FLAGS),
    st.tuples(st.just(["release"]), st.lists(flag("--uuid", st.one_of(st.just(UUID), TEXT)), max_size=2)),
    st.tuples(st.sampled_from([["list"], ["list", "--json"], ["pools"], ["pools", "--json"]]),
              st.lists(st.one_of(flag("--state", PATHS), flag("--config", PATHS), flag("--sysfs-root", PATHS)),
                       max_size=1)),
    st.tuples(st.sampled_from([["host", "numvfs", "--dry-run"], ["host", "persist", "--dry-run"]]),
              st.lists(TEXT, min_size=1, max_size=2)),
    st.lists(TEXT, max_size=4).map(lambda argv: (argv, [])),
).map(lambda parts: [*parts[0], *(x for group in parts[1] for x in (group if isinstance(group, list) else [group]))])


@FUZZ
@given(argv=COMMANDS)
# inputs that once gave an internal error, kept as examples: every run tries them
@example(argv=["alloc", "--domain", "vm1", "--uuid", UUID, "--pool", "lan", "--vlan", "9" * 5000])
@example(argv=["host", "persist", "--dry-run", "enp1s0f0=²"])
def test_fuzz_command_line(host, argv):
    host.reset()
    before = host.files()
    code, err = host.cli(argv)
    check_refusal_changed_nothing(host, code, err, before)


# -- config files --

def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string for these characters


TOML_VALUE = st.one_of(
    TEXT.map(toml_string), st.integers(-10, 70000).map(str), st.just("9" * 5000), st.just("9" * 4000),
    st.just("1.5"), st.just("inf"), st.just("true"), st.just("[]"), st.just('["enp1s0f0"]'),
    st.lists(TEXT, max_size=3).map(lambda xs: "[" + ", ".join(map(toml_string, xs)) + "]"),
)
POOL_KEYS = st.sampled_from(["pfs", "policy", "vlan", "trust", "spoofchk", "numvfs", "other"])
SETTINGS_KEYS = st.sampled_from(["state", "lock_timeout", "hook_log", "sysfs_root", "proc_root", "other"])


@st.composite
def config_text(draw) -> str:
    lines = []
    if draw(st.booleans()):
        lines.append("[settings]")
        for key, value in draw(st.dictionaries(SETTINGS_KEYS, TOML_VALUE, max_size=3)).items():
            lines.append(f"{key} = {value}")
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.one_of(st.sampled_from(["lan", "dev"]), TEXT))
        lines.append(f"[pools.{toml_string(name)}]")
        body = draw(st.dictionaries(POOL_KEYS, TOML_VALUE, max_size=4))
        if draw(st.booleans()):
            body["pfs"] = "[" + ", ".join(toml_string(p) for p in draw(st.lists(
                st.one_of(st.sampled_from(["enp1s0f0", "enp1s0f1#0-2", "enp1s0f2#1,3"]), TEXT,
                          st.tuples(st.sampled_from(["enp1s0f0#", "enp1s0f1#"]), TEXT).map("".join)),
                min_size=1, max_size=3))) + "]"
        lines += [f"{key} = {value}" for key, value in body.items()]
    if draw(st.booleans()):
        lines.append(f"[pf.{toml_string(draw(TEXT))}]")
        lines.append(f"numvfs = {draw(TOML_VALUE)}")
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=20)))  # a line that may not be TOML at all
    return "\n".join(lines) + "\n"


@FUZZ
@given(config=config_text(), argv=st.sampled_from([["list"], ["pools", "--json"],
                                                    ["alloc", "--domain", "vm1", "--uuid", UUID, "--pool", "lan"]]))
@example(config='[pools.lan]\npfs = ["enp1s0f0#0-20000000"]\n', argv=["list"])
def test_fuzz_config(host, config, argv):
    host.reset(config)
    before = host.files()
    code, err = host.cli(argv)
    check_refusal_changed_nothing(host, code, err, before)


@FUZZ
@given(config=config_text())
def test_fuzz_config_in_the_hook(host, config):
    host.reset(config)
    before = host.files()
    code, err = host.hook("vm1", "prepare", "begin", domain(requests='<vfalloc:vf pool="lan"/>'))
    check_refusal_changed_nothing(host, code, err, before)


# -- lease tables --

def lease_value(valid):
    return st.one_of(st.just(valid), TEXT, st.integers(-2, 70000), st.none(), st.booleans(), st.just([]),
                     st.just({}), st.just(10 ** 20))


LEASE = st.fixed_dictionaries({
    "vf": lease_value("0000:01:10.0"), "pf": lease_value("0000:01:00.0"), "pool": lease_value("lan"),
    "domain": lease_value("vm1"), "uuid": lease_value(UUID), "index": lease_value(0), "mac": lease_value(None),
    "vlan": lease_value(None), "since": lease_value("2026-01-01T00:00:00Z"),
    "boot_id": lease_value("11111111-2222-3333-4444-555555555555"), "phase": lease_value("reserved"),
}, optional={"type": lease_value("interface"), "trust": lease_value(None), "required": lease_value(False)})


@st.composite
def state_text(draw) -> str:
    kind = draw(st.sampled_from(["table", "table", "table", "raw", "nested"]))
    if kind == "raw":
        return draw(st.text(max_size=40))
    if kind == "nested":
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        return '{"version": 1, "leases": ' + "[" * depth + "]" * depth + "}"
    table = {"version": draw(st.one_of(st.just(1), lease_value(1))), "leases": draw(st.lists(LEASE, max_size=3))}
    if draw(st.booleans()):
        table["last"] = draw(st.one_of(st.just({}), st.dictionaries(TEXT, st.dictionaries(TEXT, TEXT, max_size=2),
                                                                     max_size=2), lease_value({})))
    return json.dumps(table)


@FUZZ
@given(state=state_text(), argv=st.sampled_from([["list"], ["pools"], ["release", "--uuid", UUID],
                                                  ["alloc", "--domain", "vm2", "--uuid",
                                                   "00000000-0000-0000-0000-000000000002", "--pool", "lan"]]))
def test_fuzz_state(host, state, argv):
    host.reset(state=state)
    before = host.files()
    code, err = host.cli(argv)
    check_refusal_changed_nothing(host, code, err, before)


@FUZZ
@given(state=state_text(), op=st.sampled_from([("prepare", "begin"), ("release", "end"), ("reconnect", "begin")]))
def test_fuzz_state_in_the_hook(host, state, op):
    host.reset(state=state)
    before = host.files()
    code, err = host.hook("vm1", *op, domain(requests='<vfalloc:vf pool="lan"/>'))
    check_refusal_changed_nothing(host, code, err, before)


# -- domain XML --

def attr(value: str) -> str:
    """An XML attribute value in single quotes; characters XML cannot hold as such go as references."""
    out = []
    for ch in value:
        if ch in "<&'" or ord(ch) < 0x20 or ch in "\ufffe\uffff" or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"&#{ord(ch)};" if ord(ch) >= 0x20 or ch in "\t\n\r" else "")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


VF_ATTRS = st.dictionaries(st.sampled_from(["pool", "mac", "vlan", "trust", "spoofchk", "type", "required", "x"]),
                           TEXT, max_size=4)


@st.composite
def request_xml(draw) -> str:
    requests = draw(st.lists(VF_ATTRS, max_size=3))
    return "".join("<vfalloc:vf " + " ".join(f"{k}={attr(v)}" for k, v in r.items()) + "/>" for r in requests)


@st.composite
def device_xml(draw) -> str:
    keys = ("domain", "bus", "slot", "function")
    address = " ".join(f"{k}={attr(draw(st.one_of(st.sampled_from(['0x0000', '0x01', '0x10', '0x0']), TEXT)))}"
                       for k in keys if draw(st.integers(0, 4)))
    alias = draw(st.one_of(st.just("ua-vfalloc-0"), st.just("ua-vfalloc-1"), TEXT))
    kind = draw(st.sampled_from(["interface type='hostdev' managed='yes'", "hostdev mode='subsystem' type='pci'"]))
    tag = kind.split()[0]
    return f"<{kind}><source><address type='pci' {address}/></source><alias name={attr(alias)}/></{tag}>"


def domain(name: str = "vm1", uuid: str = UUID, requests: str = "", devices: str = "") -> bytes:
    meta = f"<metadata><vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'>{requests}</vfalloc:vfs></metadata>"
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>{meta}<memory unit='KiB'>65536</memory>"
            f"<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{devices}</devices></domain>").encode()


XML_NAME = st.one_of(st.just("vm1"), TEXT).map(lambda t: attr(t)[1:-1])


@FUZZ
@example(name="vm1", uuid=UUID, requests=f"<vfalloc:vf pool='lan' vlan='{'9' * 5000}'/>", devices="",
         op=("prepare", "begin"))
@given(name=XML_NAME, uuid=st.one_of(st.just(UUID), TEXT.map(lambda t: attr(t)[1:-1])), requests=request_xml(),
       devices=st.lists(device_xml(), max_size=2).map("".join),
       op=st.sampled_from([("prepare", "begin"), ("restore", "begin"), ("release", "end"), ("reconnect", "begin")]))
def test_fuzz_domain_xml_in_the_hook(host, name, uuid, requests, devices, op):
    host.reset()
    before = host.files()
    code, err = host.hook("vm1", *op, domain(name, uuid, requests, devices))
    check_refusal_changed_nothing(host, code, err, before)
    if op == ("prepare", "begin") and code == 0:
        code, err = host.hook("vm1", "release", "end", domain(name, uuid, requests, devices))
        assert (code, err) == (0, "")


@FUZZ
@given(xml=st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                     st.builds(lambda a, b: (a + "urn:vfalloc:1" + b).encode(), st.text(max_size=20),
                               st.text(max_size=20))),
       op=st.sampled_from([("prepare", "begin"), ("migrate", "begin"), ("release", "end")]))
def test_fuzz_raw_bytes_in_the_hook(host, xml, op):
    host.reset()
    before = host.files()
    code, err = host.hook("vm1", *op, xml)
    check_refusal_changed_nothing(host, code, err, before)
