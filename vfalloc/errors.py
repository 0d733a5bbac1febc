"""The one exception tree of vfalloc.

Every error vfalloc raises on purpose is a VfallocError. Each class keeps the inputs that caused
it as attributes and renders one line that names the thing and the fix; entry points (cli, hook)
print that line and exit non-zero. Nothing here does I/O.
"""

from __future__ import annotations

# The longest error line or log line, in characters, whatever its inputs hold (a domain XML may
# hold a value of megabytes): a longer one loses its middle (`cut`).
MAX_LINE = 4096


class VfallocError(Exception):
    """Base class: `str(err)` is the one line a user sees, at most MAX_LINE characters."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        message = cut(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VfallocError):
    """A command line or request value that cannot be used."""

    exit_code = 2


class OutputError(VfallocError):
    """The command's output could not be written (a full disk, an I/O error)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot write the output ({reason}); free space where it goes or send it elsewhere")


class _AboutOne(VfallocError):
    """An error about one thing (a file, a domain), rendered `LABEL: problem; fix`."""

    label = "{}"
    subject_limit: int | None = None  # a subject from outside is shown (`shown`) up to this

    def __init__(self, subject: object, problem: str, fix: str = "") -> None:
        self.subject = subject
        self.problem = problem
        self.fix = fix
        tail = f"; {fix}" if fix else ""
        named = shown(str(subject), self.subject_limit) if self.subject_limit else subject
        super().__init__(f"{self.label.format(named)}: {problem}{tail}")

    @property
    def path(self) -> object:
        return self.subject


class ConfigError(_AboutOne):
    """The config file cannot be read or says something impossible."""

    label = "config {}"


class SysfsError(_AboutOne):
    """sysfs could not be read or written where vfalloc needs it; `errno` is the kernel's
    error number when a write failed."""

    def __init__(self, path: object, problem: str, fix: str = "", errno: int | None = None) -> None:
        super().__init__(path, problem, fix)
        self.errno = errno


class StateError(_AboutOne):
    """The lease table cannot be read, locked or written."""

    label = "state file {}"


class FdbError(_AboutOne):
    """A PF's forwarding table could not be read or changed, or vfalloc's record of the
    entries it added cannot be used; the subject is the command or the file."""


class AllocationError(VfallocError):
    """A request for VFs cannot be met."""


def shown(name: str, limit: int = 80) -> str:
    """A name from outside (a domain XML, a command line) as it can stand in a one-line message:
    quoted when it holds anything but printable characters, cut when it is longer than `limit`."""
    text = name if name.isprintable() else repr(name)
    if len(text) > limit:
        return f"{text[:limit // 2]}... ({len(name)} characters)"
    return text


def cut(line: str, limit: int = MAX_LINE, total: int | None = None) -> str:
    """A whole line of at most `limit` characters. A longer one loses its middle, marked as
    `shown` marks a name it cuts, with the line's length (`total` when the caller cut it
    already): its start says what it is about, its end the fix, and both stay."""
    if len(line) <= limit:
        return line
    mark = f"... ({len(line) if total is None else total} characters) ..."
    if len(mark) > limit:
        return line[:limit]
    room = limit - len(mark)
    head = room // 2
    return f"{line[:head]}{mark}{line[len(line) - (room - head):]}"


class UnknownPool(AllocationError):
    def __init__(self, pool: str, domain: str, known: tuple[str, ...]) -> None:
        self.pool = pool
        self.domain = domain
        self.known = known
        names = ", ".join(known) if known else "none"
        super().__init__(
            f"no pool named {shown(pool)} for {shown(domain)} (pools: {names}); "
            "fix the request or define the pool in the config file"
        )


class PoolExhausted(AllocationError):
    def __init__(self, pool: str, domain: str, total: int, holders: tuple[str, ...]) -> None:
        self.pool = pool
        self.domain = domain
        self.total = total
        self.holders = holders
        if total == 0:
            detail = "the pool has no VFs"
            fix = "create VFs with `vfalloc host numvfs` or add PFs to the pool"
        else:
            leased = len(holders)
            names = _abbreviate(sorted(set(holders)))
            detail = f"{leased} of {total} leased: {names}"
            fix = "free one or add VFs to the pool"
        super().__init__(f"no free VF in pool {pool} for {domain} ({detail}); {fix}")


class VfConflict(AllocationError):
    def __init__(self, vf: str, domain: str, holder: str) -> None:
        self.vf = vf
        self.domain = domain
        self.holder = holder
        super().__init__(
            f"VF {vf} wanted by {domain} is leased to {holder}; "
            f"stop {holder} or remove the VF from {domain}'s XML"
        )


class LeaseInUse(AllocationError):
    """`vfalloc alloc` for a request whose lease may be in use: attached, pending attach, or
    reserved for a domain that runs. `state` says which; `free_index` is the domain's first
    request position without a lease."""

    def __init__(self, domain: str, uuid: str, vf: str, index: int, state: str, free_index: int) -> None:
        self.domain = domain
        self.uuid = uuid
        self.vf = vf
        self.index = index
        self.state = state
        self.free_index = free_index
        super().__init__(
            f"{shown(domain)} holds VF {vf} for request {index} ({state}); to lease it another VF, "
            f"`vfalloc release --uuid {uuid}` first (once {shown(domain)} is stopped), "
            f"or give --index {free_index} for a second VF"
        )


class VfsNotRead(VfallocError):
    """A decision on a host snapshot needs the VFs of PFs that were read without them.

    Not a user's error: leasing reads those PFs and decides again. `vf` is the VF address the
    decision was looking for, when it was one VF (its PF is then enough). Should it ever reach an
    entry point, it still renders one line."""

    def __init__(self, pfs: frozenset, vf: str | None = None) -> None:
        self.pfs = frozenset(pfs)
        self.vf = vf
        names = ", ".join(str(pf) for pf in sorted(self.pfs))
        super().__init__(f"the VFs of PF {names} were needed but not read; report this as a vfalloc bug")


class DomainXMLError(_AboutOne):
    """A domain XML that cannot be parsed or holds a bad vfalloc request."""

    label = "domain XML of {}"
    subject_limit = 200  # a domain's name comes from its XML or libvirt's argv

    @property
    def domain(self) -> str:
        return str(self.subject)


class HostError(VfallocError):
    """A host prerequisite command failed."""


class VirtError(VfallocError):
    """libvirt refused or failed."""


def _abbreviate(names: list[str], limit: int = 8) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"
