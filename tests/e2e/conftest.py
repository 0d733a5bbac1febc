"""pytest plumbing of the hardware test layer: the session fixture that boots the rig once,
and the step timings printed at the end of the run. The step tests are in test_e2e.py;
test_e2e_lanes.py and test_e2e_pace.py test the rig itself and boot nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# rig.py and scenario.py are plain modules next to this file (tests/e2e is no package); put
# them on the path whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rig  # noqa: E402
import scenario  # noqa: E402

_RUN = pytest.StashKey[rig.RigRun]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """The layer's temp root in the rig's work dir unless --basetemp names one. pytest's default
    root is numbered (/tmp/pytest-of-USER/pytest-N), and the session that made it deletes its
    older siblings at exit (all but three): after the unit layer's fake hosts, minutes of disk
    work with nothing of this layer's in it. The work dir need not exist (it does not before the
    first run on a machine, nor ever under tools/test-layers): tests/conftest.py makes the root's
    parents."""
    if config.option.basetemp is None:
        config.option.basetemp = str(rig.DEFAULT_WORK_DIR / "pytest")


@pytest.fixture(scope="session")
def rig_run(request: pytest.FixtureRequest) -> rig.RigRun:
    """Run the emulated SR-IOV host once (each of its boots); every step test reads its results."""
    missing = rig.missing_prerequisites()
    if missing:
        pytest.skip("the e2e rig cannot boot here: " + "; ".join(missing))
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        """The VM's progress ("e2e step NAME: ok (S s)"), live: a run takes minutes."""
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", end="", flush=True)

    run = rig.run_rig(rig.scenario_config(), on_line=progress)
    request.config.stash[_RUN] = run
    return run


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    terminalreporter.section("e2e steps (seconds inside the VM)")
    for line in rig.format_results(run, scenario.step_boots()).splitlines():
        terminalreporter.write_line(line)
