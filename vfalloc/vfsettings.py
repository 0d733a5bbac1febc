"""Trust and spoof checking of leased VFs: set on each VF through its PF with iproute2 (`ip link
set dev PF vf N trust on|off spoofchk on|off`; the PF's driver must support them) before QEMU
starts, at every start, as the domain's request asks now. Run by the hook at `prepare begin`,
and by `vfalloc start`, which does that call's work itself (hookfile.StartStamp).

Must not: choose VFs or touch the lease table; subprocess is imported only when a lease has
something to set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import VfallocError

if TYPE_CHECKING:
    from .hostview import HostView
    from .model import Lease

ENV_IP = "VFALLOC_IP"  # the `ip` binary (tests and admins may point it elsewhere)


def apply(environ: Mapping[str, str], domain: str, view: HostView, leases: Sequence[Lease]) -> None:
    for lease in leases:
        args = []
        if lease.trust:
            args += ["trust", lease.trust]
        if lease.spoofchk:
            args += ["spoofchk", lease.spoofchk]
        if args:
            _set(environ, domain, view, lease, args)


def _set(environ: Mapping[str, str], domain: str, view: HostView, lease: Lease, args: list[str]) -> None:
    pf = view.pf(lease.pf)
    vf = view.find_vf(lease.vf)
    if pf is None or pf.netdev is None or vf is None:
        raise VfallocError(f"cannot set {' '.join(args)} on VF {lease.vf} for {domain}: its PF "
                           f"{lease.pf} has no network interface; remove trust/spoofchk from the request")
    import subprocess

    cmd = [environ.get(ENV_IP, "ip"), "link", "set", "dev", pf.netdev, "vf", str(vf.index), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VfallocError(f"cannot run `{' '.join(cmd)}` for {domain}: {exc}; install iproute2") from exc
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise VfallocError(f"`{' '.join(cmd)}` failed for {domain}: {why}; "
                           "the PF's driver may not support it: remove trust/spoofchk from the request")
