"""The e2e rig's pace (tests/e2e/pace.py): how much slower the emulated host runs scales every
bound of a step, the host's bound on a boot grows with what the VM reports, and the summary says
it. Run here, on this machine, without booting the VM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

import inside  # noqa: E402
import pace  # noqa: E402
import rig  # noqa: E402
import scenario  # noqa: E402


def idle(work: float = 1.0, start: float = 1.0) -> pace.Sample:
    """A sample that took `work` and `start` times what each kind takes on an idle machine."""
    return pace.Sample(pace.REFERENCE_S * work, pace.REFERENCE_START_S * start)


@pytest.mark.parametrize("work, start, factor", [
    (0.5, 0.5, 1.0), (3, 1, 3.0), (1, 4, 4.0), (2, 6, 6.0), (6, 2, 6.0),
], ids=["faster-than-idle", "computing-slow", "starts-slow", "starts-slower", "computing-slower"])
def test_a_samples_factor_is_the_larger_slowdown_never_below_one(work, start, factor):
    assert idle(work, start).factor == pytest.approx(factor)


def test_the_boots_factor_is_a_floor_and_a_busier_moment_raises_it():
    speed = pace.Pace(idle(2, 1))
    speed.now = idle(1, 5)  # busier now than at boot: the larger one counts
    assert speed.factor == pytest.approx(5.0)
    speed.now = idle(1, 1)  # a moment of calm does not go below the boot's
    assert speed.factor == pytest.approx(2.0)
    text = speed.describe()
    assert "slower than on an idle machine" in text and "a Python start" in text


def test_the_python_start_is_timed_again_only_every_so_often():
    speed = pace.Pace(idle(1, 7))
    speed.again()  # within START_EVERY_S: the computation is timed, the start is the boot's
    assert speed.now.start_s == pytest.approx(pace.REFERENCE_START_S * 7) and speed.now.work_s != speed.boot.work_s
    speed.start_timed_at -= pace.START_EVERY_S
    speed.again()  # a real Python start, far quicker than 7 idle ones
    assert speed.now.start_s < pace.REFERENCE_START_S * 7
    assert speed.start_timed_at > time.monotonic() - 5


def test_a_sample_times_real_work_and_a_real_python_start():
    assert pace.work(1000) == pace.work(1000)  # fixed work: the same result every time
    taken = pace.sample()
    assert taken.work_s > 0 and taken.start_s > 0
    with pytest.raises(subprocess.CalledProcessError):  # the start runs and must succeed
        subprocess.run([sys.executable, "-c", pace.START_CODE + ", no_such_module"], check=True,
                       capture_output=True)


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_wait_for_waits_its_timeout_times_the_pace(tmp_path, factor):
    ctx = inside.Context(tmp_path, deadline=time.monotonic() + 60, pace=factor)
    start = time.monotonic()
    with pytest.raises(inside.StepFailed, match=f"at pace {factor:.1f}x"):
        ctx.wait_for("nothing", lambda: False, timeout=0.1, interval=0.02)
    assert time.monotonic() - start >= 0.1 * factor


def test_run_gives_a_command_its_timeout_times_the_pace(tmp_path):
    ctx = inside.Context(tmp_path, deadline=time.monotonic() + 60, pace=5.0)
    start = time.monotonic()
    with pytest.raises(inside.StepFailed, match="did not finish within 2 s"):  # 0.4 s idle, at pace 5
        ctx.run("sleep", "30", timeout=0.4)
    assert time.monotonic() - start >= 2.0


def test_a_step_runs_with_its_bound_times_the_pace(tmp_path, monkeypatch):
    seen = {}

    def probe(ctx):
        seen["pace"], seen["left"] = ctx.pace, ctx.deadline - time.monotonic()

    step = scenario.Step("probe", probe, timeout=10, needs=(), boot=1)
    speed = pace.Pace(idle(3, 1))
    monkeypatch.setattr(pace, "sample", lambda previous=None: idle(1, 1))
    record = scenario.run_step(step, tmp_path, set(), speed)
    assert record["ok"] and record["pace"] == pytest.approx(3.0)
    assert seen["pace"] == pytest.approx(3.0) and 25 < seen["left"] <= 30


def test_the_host_bound_grows_with_the_pace_the_vm_reports():
    lines = []
    watcher = rig.PaceWatcher(lines.append)
    watcher.line("e2e pace: boot 1 runs 2.5x slower than on an idle machine (...)")
    watcher.line("e2e step vm: ok (0.13 s, pace 6.9x)")
    watcher.line("e2e step pfs: ok (0.35 s, pace 3.0x)")
    assert watcher.factor == pytest.approx(6.9) and len(lines) == 3


def test_the_summary_says_how_much_slower_the_vm_ran(tmp_path):
    config = rig.RigConfig(kernel=rig.Kernel("r", tmp_path, tmp_path), work_dir=tmp_path)
    results = {name: rig.StepResult(name, True, 1.0, "", pace=p) for name, p in (("a", 2.0), ("b", 3.0), ("c", 7.5))}
    run = rig.RigRun(config, (rig.Boot(1, 0, False, 100.0, pace=7.5),), results)
    text = rig.format_results(run, [("a", 1), ("b", 1), ("c", 1)])
    assert "the VM ran 3.0x slower than on an idle machine" in text and "2.0x to 7.5x" in text
