"""Shared fixtures: scratch hosts built as real fake sysfs trees, a scratch /proc with a boot id,
and a runner for `vfalloc` through `main(argv)` with the settings pointed at them."""

from __future__ import annotations

import io
import os
import sys
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests: no per-example deadline (a loaded 2-core CI machine makes timing meaningless)
# and a fixed seed, so a run in CI is reproducible; speed is measured in bench/, not here.
settings.register_profile("vfalloc", deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vfalloc")

sys.path.insert(0, str(Path(__file__).parent / "fakes"))

from fakehost import FakeSys  # noqa: E402

from vfalloc.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """pytest makes its temp root (--basetemp, or what tests/e2e/conftest.py sets) but not the
    root's parents, which tools/test-layers names new for every run: they are made here."""
    if config.option.basetemp is not None:
        Path(config.option.basetemp).parent.mkdir(parents=True, exist_ok=True)


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Scratch:
    """A fake host: sysfs tree, /proc with a boot id, state path, config path."""

    root: Path
    fs: FakeSys

    @property
    def sysfs(self) -> Path:
        return self.fs.root

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "vfalloc" / "state.json"

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / "vfalloc"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "vfalloc" / "vfalloc.toml"

    def set_boot_id(self, value: str | None = None) -> str:
        value = value or str(uuidlib.uuid4())
        path = self.proc / "sys" / "kernel" / "random" / "boot_id"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        return value

    def write_config(self, text: str) -> Path:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text)
        return self.config

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VFALLOC_")}
        env.update(VFALLOC_SYSFS_ROOT=str(self.sysfs), VFALLOC_STATE=str(self.state),
                   VFALLOC_CONFIG=str(self.config), VFALLOC_PROC_ROOT=str(self.proc),
                   VFALLOC_RUN_DIR=str(self.run_dir))
        if not self.config.exists():
            del env["VFALLOC_CONFIG"]
        return env

    def flags(self) -> list[str]:
        flags = ["--sysfs-root", str(self.sysfs), "--state", str(self.state), "--proc-root", str(self.proc)]
        if self.config.exists():
            flags += ["--config", str(self.config)]
        return flags

    def run(self, *argv: str) -> Result:
        """`vfalloc ARGV` in-process through main(), with this host's flags after the command."""
        out, err = io.StringIO(), io.StringIO()
        argv = list(argv)
        cmd_len = 2 if argv[:1] == ["host"] else 1
        code = main([*argv[:cmd_len], *self.flags(), *argv[cmd_len:]], out=out, err=err)
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Scratch:
    """An empty scratch host; tests add NICs with tests/fakes/fakehost.py."""
    for key in list(os.environ):
        if key.startswith("VFALLOC_"):
            monkeypatch.delenv(key)
    s = Scratch(tmp_path, FakeSys(tmp_path / "sys"))
    s.set_boot_id("11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("VFALLOC_RUN_DIR", str(s.run_dir))
    return s


@pytest.fixture(autouse=True, scope="session")
def private_run_dir(tmp_path_factory):
    """Keep the parsed-config memo (vfalloc.config_cache) of every test out of the real /run/vfalloc."""
    os.environ["VFALLOC_RUN_DIR"] = str(tmp_path_factory.mktemp("run") / "vfalloc")
    yield
    os.environ.pop("VFALLOC_RUN_DIR", None)
