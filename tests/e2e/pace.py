"""How fast the emulated SR-IOV host runs right now, against how fast it runs on a machine that
runs nothing else: the factor every wait inside the VM is scaled by.

The VM is QEMU under TCG: every instruction of the guest is translated and run by the host's
CPUs, so when other processes take those CPUs the whole guest slows down (its kernel, its QEMU
guests, libvirtd, each Python start), and a bound in seconds that holds on an idle machine runs
out on a busy one. So the VM times fixed work and divides by the time it takes on 2 idle cores:
that factor, never below 1, multiplies every step's bound and every wait in it (inside.Context).

Two kinds of work slow down differently, and the steps do both: Python computing, and Python
starting (every `vfalloc`, `virsh` and hook is a new process, whose start reads many small
files from the root this machine shares with the VM over 9p, each read a trip through QEMU).
So a sample times both: a fixed computation (pure Python, no I/O, no allocation that grows),
and a Python start that imports lxml and
vfalloc's command line from that root. The factor is the larger of the two ratios: on a
machine whose other processes take the CPUs, starts were seen slowing 2-5 times more than
computing.

It is measured once at boot (the median of a few samples) and again before every step (one
sample; the Python start at most every START_EVERY_S); a step uses the larger of the two, so a machine that gets busier during the run
lengthens the later steps' bounds, and a moment of calm does not shorten them below the boot's.
A load that starts inside a step is in none of these samples: a bound that runs out measures
again (Pace.remeasure) and, when the VM has slowed down since, is extended by as much, once
(inside.Context.stretch); only then does it fail.

Standard library only; importing it runs nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

# Seconds each kind of work takes inside the VM on the project's 2-core test machine when the
# rig has it to itself: the lowest of the samples of idle runs. WORK_LOOPS iterations of work():
# 0.39 s for twice the loops; most samples were 0.45-0.60 s with other test suites running
# beside it, 1.1-3.9 s with two CPU-bound loops as well. The Python start (START_CODE run by the
# VM's Python): 0.95-1.2 s at boot in a run beside one other test suite (2026-12-02).
REFERENCE_S = 0.20
REFERENCE_START_S = 1.0
WORK_LOOPS = 100_000
START_CODE = "import lxml.etree, vfalloc.cli"
BOOT_SAMPLES = 5
START_EVERY_S = 30.0


def work(loops: int = WORK_LOOPS) -> int:
    """The fixed piece of work: integer arithmetic and a small dict, the interpreter's bread and
    butter."""
    seen: dict[int, int] = {}
    total = 0
    for i in range(loops):
        total = (total * 31 + i) % 1_000_003
        seen[i & 255] = total
    return total + len(seen)


def python_start() -> None:
    """A new Python process that imports what a `vfalloc` command imports first."""
    subprocess.run([sys.executable, "-c", START_CODE], check=True, timeout=600)


class Sample:
    """Seconds each kind of work took once."""

    def __init__(self, work_s: float, start_s: float) -> None:
        self.work_s, self.start_s = work_s, start_s

    @property
    def factor(self) -> float:
        """How many times slower than on an idle machine; never below 1."""
        return max(1.0, self.work_s / REFERENCE_S, self.start_s / REFERENCE_START_S)

    def describe(self) -> str:
        return (f"computing {self.work_s:.2f} s (idle {REFERENCE_S:.2f} s), a Python start "
                f"{self.start_s:.2f} s (idle {REFERENCE_START_S:.2f} s)")


def sample(previous: Sample | None = None) -> Sample:
    """Both kinds of work, timed now; given `previous`, the computation only, and its start."""
    start = time.perf_counter()
    work()
    middle = time.perf_counter()
    if previous is not None:
        return Sample(middle - start, previous.start_s)
    python_start()
    return Sample(middle - start, time.perf_counter() - middle)


_latest: Pace | None = None


def current() -> float:
    """The factor of the latest measurement in this process (1 before any)."""
    return _latest.factor if _latest is not None else 1.0


class Pace:
    """The boot's measurement and the latest one; `factor` is what waits are multiplied by."""

    def __init__(self, boot: Sample) -> None:
        self.boot = boot
        self.now = boot
        self.start_timed_at = time.monotonic()

    @classmethod
    def at_boot(cls, samples: int = BOOT_SAMPLES) -> Pace:
        """Measured now; also what current() answers from now on."""
        global _latest
        taken = [sample() for _ in range(samples)]
        _latest = cls(Sample(statistics.median(s.work_s for s in taken), statistics.median(s.start_s for s in taken)))
        return _latest

    def describe(self) -> str:
        return f"{self.factor:.1f}x slower than on an idle machine (now: {self.now.describe()}; at boot: {self.boot.describe()})"

    def again(self) -> float:
        """Measure once more (before a step); the factor that step runs with. The Python start
        (about a second in the VM, several on a busy machine) is timed again only when the last
        time is START_EVERY_S old: load changes over tens of seconds, and most steps are shorter."""
        if time.monotonic() - self.start_timed_at < START_EVERY_S:
            self.now = sample(self.now)
        else:
            self.now = sample()
            self.start_timed_at = time.monotonic()
        return self.factor

    def remeasure(self) -> float:
        """Measure both kinds of work now, whenever the Python start was last timed: a bound that
        ran out asks (inside.Context.stretch), as a load that began since the step started is
        in no sample yet. The factor from now on."""
        self.now = sample()
        self.start_timed_at = time.monotonic()
        return self.factor

    @property
    def boot_factor(self) -> float:
        return self.boot.factor

    @property
    def factor(self) -> float:
        return max(self.boot.factor, self.now.factor)
