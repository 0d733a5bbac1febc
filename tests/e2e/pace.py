"""How fast the emulated SR-IOV host runs right now, against how fast it runs on a machine that
runs nothing else: the factor every wait inside the VM is scaled by.

The VM is QEMU under TCG: every instruction of the guest is translated and run by the host's
CPUs, so when other processes take those CPUs the whole guest slows down alike (its kernel, its
QEMU guests, libvirtd, each Python start), and a bound in seconds that holds on an idle machine
runs out on a busy one. So the VM times a fixed piece of work (pure Python, no I/O, no
allocation that grows) and divides by the time that work takes on 2 idle cores: that factor,
never below 1, multiplies every step's bound and every wait in it (inside.Context).

It is measured once at boot (the median of a few samples) and again before every step (one
sample); a step uses the larger of the two, so a machine that gets busier during the run
lengthens the later steps' bounds, and a moment of calm does not shorten them below the boot's.

Standard library only; importing it runs nothing.
"""

from __future__ import annotations

import statistics
import time

# Seconds WORK_LOOPS iterations of work() take inside the VM on the project's 2-core test machine
# when the rig has it nearly to itself: the lowest of 15 samples (0.39 s for twice the loops;
# most samples were 0.45-0.60 s with other test suites running beside it, 1.1-3.9 s with two
# CPU-bound loops as well).
REFERENCE_S = 0.20
WORK_LOOPS = 100_000
BOOT_SAMPLES = 5


def work(loops: int = WORK_LOOPS) -> int:
    """The fixed piece of work: integer arithmetic and a small dict, the interpreter's bread and
    butter (the rig's steps are mostly Python and process starts, which slow down alike)."""
    seen: dict[int, int] = {}
    total = 0
    for i in range(loops):
        total = (total * 31 + i) % 1_000_003
        seen[i & 255] = total
    return total + len(seen)


def sample() -> float:
    """Seconds one work() takes now."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def factor_of(seconds: float) -> float:
    """How many times slower than on an idle machine a sample of `seconds` is; never below 1."""
    return max(1.0, seconds / REFERENCE_S)


_latest: Pace | None = None


def current() -> float:
    """The factor of the latest measurement in this process (1 before any)."""
    return _latest.factor if _latest is not None else 1.0


class Pace:
    """The boot's measurement and the latest one; `factor` is what waits are multiplied by."""

    def __init__(self, boot_seconds: float) -> None:
        self.boot_seconds = boot_seconds
        self.now_seconds = boot_seconds

    @classmethod
    def at_boot(cls, samples: int = BOOT_SAMPLES) -> Pace:
        """Measured now; also what current() answers from now on."""
        global _latest
        _latest = cls(statistics.median(sample() for _ in range(samples)))
        return _latest

    def describe(self) -> str:
        return (f"{self.factor:.1f}x slower than on an idle machine (a fixed piece of work took "
                f"{self.now_seconds:.2f} s now, {self.boot_seconds:.2f} s at boot, "
                f"{REFERENCE_S:.2f} s idle)")

    def again(self) -> float:
        """Measure once more (before a step); the factor that step runs with."""
        self.now_seconds = sample()
        return self.factor

    @property
    def boot_factor(self) -> float:
        return factor_of(self.boot_seconds)

    @property
    def factor(self) -> float:
        return max(self.boot_factor, factor_of(self.now_seconds))
