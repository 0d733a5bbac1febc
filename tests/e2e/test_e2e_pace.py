"""The e2e rig's pace (tests/e2e/pace.py): how much slower the emulated host runs scales every
bound of a step, the host's bound on a boot grows with what the VM reports, and the summary says
it. Run here, on this machine, without booting the VM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import inside
import pace
import pytest
import rig
import scenario


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


# A bound that runs out measures the pace again (inside.Context.stretch). The commands below
# cannot end before the bound runs out: each waits for a file that only the re-measure (the
# stand-in for "the load has been seen") creates, so no assertion depends on how fast this
# machine is.
WAIT_FOR_FLAG = 'while [ ! -e "$1" ]; do sleep 0.01; done; echo done'


def remeasured(flag: Path | None, new_pace: float, calls: list[float]):
    """A re-measure that finds `new_pace` and, as the load it sees, lets the command go on."""

    def repace() -> float:
        calls.append(new_pace)
        if flag is not None:
            flag.touch()
        return new_pace

    return repace


def test_a_command_whose_bound_runs_out_gets_the_time_the_new_pace_gives_once(tmp_path):
    calls: list[float] = []
    ctx = inside.Context(tmp_path, deadline=time.monotonic() + 0.5, pace=1.0,
                         repace=remeasured(tmp_path / "flag", 1000.0, calls))
    proc = ctx.run("sh", "-c", WAIT_FOR_FLAG, "sh", str(tmp_path / "flag"), timeout=0.2)
    assert proc.stdout.strip() == "done" and calls == [1000.0]
    assert ctx.pace == 1000.0 and ctx.deadline - ctx.started == pytest.approx(0.5 * 1000, rel=0.01)
    assert any("ran out; the pace measured again is 1000.0x, was 1.0x: extended 1000.0 times, once" in line
               for line in ctx.lines), ctx.lines


@pytest.mark.parametrize("new_pace, within", [(1.0, 0.2), (0.5, 0.2), (3.0, 0.6)],
                         ids=["same-pace", "faster-now", "slower-but-stuck"])
def test_a_command_that_is_really_stuck_fails_after_one_re_measure(tmp_path, new_pace, within):
    calls: list[float] = []
    ctx = inside.Context(tmp_path, deadline=time.monotonic() + 60, pace=1.0,
                         repace=remeasured(None, new_pace, calls))  # the flag never comes
    with pytest.raises(inside.StepFailed, match=f"did not finish within {within:.0f} s"):
        ctx.run("sh", "-c", WAIT_FOR_FLAG, "sh", str(tmp_path / "never"), timeout=0.2)
    assert calls == [new_pace]  # measured once, not again and again
    said = "no more time" if new_pace <= 1.0 else "extended 3.0 times, once"
    assert any(said in line for line in ctx.lines), ctx.lines


def test_a_wait_whose_bound_runs_out_gets_the_time_the_new_pace_gives(tmp_path):
    calls: list[float] = []
    flag = tmp_path / "flag"
    ctx = inside.Context(tmp_path, deadline=time.monotonic() + 0.5, pace=2.0,
                         repace=remeasured(flag, 2000.0, calls))
    assert ctx.wait_for("the flag", flag.exists, timeout=0.1, interval=0.01)
    assert calls == [2000.0] and ctx.pace == 2000.0


def test_a_wait_for_what_never_comes_fails_after_one_re_measure(tmp_path):
    calls: list[float] = []
    ctx = inside.Context(tmp_path, deadline=time.monotonic() + 60, pace=1.0,
                         repace=remeasured(None, 2.0, calls))
    with pytest.raises(inside.StepFailed, match="waiting for nothing"):
        ctx.wait_for("nothing", lambda: False, timeout=0.1, interval=0.01)
    assert calls == [2.0]


def test_the_steps_own_bound_is_re_measured_once_before_it_fails(tmp_path):
    calls: list[float] = []
    ctx = inside.Context(tmp_path, deadline=time.monotonic() - 1, pace=1.0,
                         repace=remeasured(None, 1.0, calls))
    for _ in range(2):
        with pytest.raises(inside.StepFailed, match="step timed out"):
            ctx.remaining()
    assert calls == [1.0]


def test_the_re_measure_times_real_work_and_a_real_python_start_and_raises_the_pace():
    speed = pace.Pace(idle(0.001, 0.001))  # a boot that was impossibly fast: now is slower
    speed.start_timed_at = time.monotonic() + 3600  # the Python start is not due
    before = speed.start_timed_at
    factor = speed.remeasure()
    assert speed.start_timed_at < before  # timed again although not due
    assert speed.now.work_s > 0 and speed.now.start_s > 0 and factor == speed.factor >= 1.0


def test_a_step_hands_its_context_the_re_measure_and_records_the_pace_it_ended_at(tmp_path, monkeypatch):
    flag = tmp_path / "flag"

    def slow(ctx):
        ctx.run("sh", "-c", WAIT_FOR_FLAG, "sh", str(flag), timeout=0.2)

    step = scenario.Step("slow", slow, timeout=10, needs=(), boot=1)
    speed = pace.Pace(idle(1, 1))

    def sample(previous=None):
        """Before the step, the computation only: as at boot. The re-measure: 50 times slower."""
        if previous is not None:
            return idle(1, 1)
        flag.touch()
        return idle(50, 1)

    monkeypatch.setattr(pace, "sample", sample)
    record = scenario.run_step(step, tmp_path, set(), speed)
    assert record["ok"], record["tail"]
    assert record["pace"] == pytest.approx(50.0)
