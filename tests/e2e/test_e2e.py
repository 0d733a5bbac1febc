"""The hardware test layer (docs/testing.md, "The emulated SR-IOV host"): the real kernel,
igb/igbvf, vfio and libvirt on an emulated SR-IOV host. One test per step of scenario.py, read from the records of
one run of the rig (the rig_run fixture in conftest.py; one or more boots). A failed step fails its test with
the step's output tail; a step that left no record fails too (the VM died or timed out first)."""

from __future__ import annotations

import pytest
import rig
import scenario

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", scenario.step_names())
def test_step(rig_run: rig.RigRun, name: str) -> None:
    result = rig_run.results.get(name)
    if result is None:
        pytest.fail(
            f"step {name!r} left no record: the VM stopped before it ({rig_run.describe_boot()})\n"
            f"--- console tail:\n{rig_run.console_tail()}",
            pytrace=False,
        )
    if not result.ok:
        log = rig_run.config.results_dir / result.log
        pytest.fail(
            f"step {name!r} failed after {result.seconds:.1f} s (full log: {log})\n{result.tail}",
            pytrace=False,
        )


def test_vm_powered_off(rig_run: rig.RigRun) -> None:
    """Each boot of the VM ends by powering itself off, well inside the time bound."""
    if len(rig_run.boots) < len(rig_run.config.boots) or not all(b.ok for b in rig_run.boots):
        message = f"{rig_run.describe_boot()}\n--- console tail:\n{rig_run.console_tail()}"
        pytest.fail(message, pytrace=False)
