"""The part of the host one domain's start needs, read as the choice needs it.

A host may have a thousand VFs; a start needs few of them. `HostView.for_domain` reads the PFs
the config names (every pool's, every [pf.NAME] table's) without their VFs (so the config gets the same verdict here as in every
command: a pool naming a missing PF, overlapping pools or a VF range past sriov_totalvfs is
refused the same way), the VFs of the PFs whose VFs the domain's XML names, and narrows the pools
to those the domain asks for or whose VFs it names. `decide` runs a choice of the allocator on
the snapshot and, each time the choice raises VfsNotRead, reads the VFs of the PF it names and
asks again, so the answer is always the one the whole host gives.

Owns: which PFs a start reads and when. Must not: choose VFs (allocator), touch the lease table
(leasing), or know sysfs paths (sysfs reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from .config import ConfigFile, resolve_pools
from .errors import UnknownPool, VfsNotRead
from .model import PF, VF, Host, PciAddress, Pool

if TYPE_CHECKING:
    from .sysfs import Sysfs

T = TypeVar("T")


class HostView:
    def __init__(self, sysfs: Sysfs, host: Host, pools: tuple[Pool, ...]) -> None:
        self.sysfs = sysfs
        self.host = host    # grows as PFs' VFs are read
        self.pools = pools  # only the pools the domain asks for or whose VFs it names

    @classmethod
    def for_domain(cls, sysfs: Sysfs, config: ConfigFile, domain: str, asked: Iterable[str],
                   pinned: Iterable[PciAddress] = ()) -> HostView:
        """The view for a domain asking for pools `asked` whose XML names the VFs `pinned`. A
        pool name that does not exist is refused here, naming the pools that do."""
        pinned_pfs = {pf for pf in (sysfs.physfn(vf) for vf in set(pinned)) if pf is not None}
        named = _named_addresses(sysfs, config)
        only = None if named is None else named | pinned_pfs
        host = sysfs.read_host(only=only, brief=True, vfs_of=pinned_pfs)
        pools = resolve_pools(config, host)
        names = set(asked)
        unknown = sorted(names - {p.name for p in pools})
        if unknown:
            raise UnknownPool(unknown[0], domain, tuple(p.name for p in pools))
        names |= {p.name for p in pools if any(p.has_pf(pf) for pf in pinned_pfs)}
        return cls(sysfs, host, tuple(p for p in pools if p.name in names))

    def decide(self, choose: Callable[[Host], T]) -> T:
        """`choose(host)`, reading a PF's VFs each time the snapshot lacks ones it needs. Each
        round reads at least one PF more, so this ends; a whole snapshot takes one round."""
        while True:
            try:
                return choose(self.host)
            except VfsNotRead as need:
                pfs = need.pfs & self.host.unread
                if not pfs:
                    raise  # asked for PFs that were read: a bug, shown as one line by the entry point
                if need.vf is not None:  # one VF wanted: its physfn link names the one PF to read
                    pf = self.sysfs.physfn(PciAddress.parse(need.vf))
                    pfs = frozenset((pf,)) if pf in pfs else pfs
                self.host = self.host.with_vfs(self.sysfs.read_pf(pf, brief=True) for pf in sorted(pfs))

    def find_vf(self, address: PciAddress | str) -> VF | None:
        text = str(address)
        return self.decide(lambda host: host.find_vf(text))

    def pf(self, ref: str) -> PF | None:
        return self.host.pf(ref)

    def pool_of(self, vf: VF) -> Pool | None:
        return next((p for p in self.pools if p.admits(vf)), None)


def _named_addresses(sysfs: Sysfs, config: ConfigFile) -> set[PciAddress] | None:
    """The PFs the config names: every pool's members and every [pf.NAME] table (which may name
    a PF in no pool); None when no pool is configured (then every SR-IOV PF is a pool of its own,
    and all of them are read). A name that is no network interface is left out: resolve_pools
    then refuses the pool or table that names it."""
    if not config.pools:
        return None
    refs = [ref for spec in config.pools for ref, _ in spec.members] + list(config.pf_numvfs)
    found = set()
    for ref in refs:
        address = PciAddress.parse(ref) if PciAddress.looks_like(ref) else sysfs.netdev_pci(ref)
        if address is not None:
            found.add(address)
    return found
