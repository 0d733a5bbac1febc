"""What a command needs, built lazily from the settings: the sysfs view, the host snapshot, the
pools and the lease store. Entry points make one Context per run; nothing here parses arguments
or prints.

What the host snapshot holds of each VF (Sysfs.read_host): everything (driver, netdev, NUMA
node, IOMMU group), or without its netdev (`vf_netdevs` False: `vfalloc list` does not show it),
or only what counting and allocating it needs (`vf_details` False: address and index, from its
virtfn link alone).
"""

from __future__ import annotations

import sys
from functools import cached_property

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from typing import TextIO

from .config import Settings, resolve_pools
from .model import Host, Pool


class Context:
    def __init__(self, settings: Settings, out: TextIO | None = None, err: TextIO | None = None,
                 vf_details: bool = True, vf_netdevs: bool = True) -> None:
        self.settings = settings
        self.vf_details = vf_details
        self.vf_netdevs = vf_netdevs
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err

    @cached_property
    def sysfs(self):
        from .sysfs import Sysfs

        return Sysfs(self.settings.sysfs_root)

    @cached_property
    def host(self) -> Host:
        return self.sysfs.read_host(brief=not self.vf_details, vf_netdevs=self.vf_netdevs)

    @cached_property
    def pools(self) -> tuple[Pool, ...]:
        return resolve_pools(self.settings.config, self.host)

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)

    @cached_property
    def store(self):
        from .state import StateStore

        return StateStore(self.settings.state, self.settings.lock_timeout)

    @cached_property
    def boot_id(self) -> str:
        from .procfs import boot_id

        return boot_id(self.settings.proc_root)
