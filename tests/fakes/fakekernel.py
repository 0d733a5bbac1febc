"""The kernel's side of `sriov_numvfs`, played by a Sysfs subclass whose write_attr follows
drivers/pci/iov.c (Linux 6.x) and can fail with any errno; and `vfalloc host numvfs` run with it
as the context's sysfs."""

from __future__ import annotations

import errno
import io
import os

from vfalloc.cli import build_parser, make_context
from vfalloc.errors import SysfsError
from vfalloc.sysfs import Sysfs


class FakeKernel(Sysfs):
    """sriov_numvfs as iov.c handles it (ERANGE past totalvfs, EBUSY from non-zero to another
    non-zero count, VFs created and removed), plus injected failures: {(attr, value): errno}."""

    def __init__(self, fs, fail=None, create=True, vf_driver="igbvf"):
        super().__init__(fs.root)
        self.fs, self.fail, self.create, self.vf_driver = fs, fail or {}, create, vf_driver
        self.writes: list[tuple[str, str, str]] = []

    def write_attr(self, address, attr, value):
        self.writes.append((str(address), attr, value))
        path = self.describe(address, attr)
        code = self.fail.get((attr, value))
        if code is None and attr == "sriov_numvfs":
            code = self._kernel_says(address, int(value))
        if code is not None:
            raise SysfsError(path, f"write of {value!r} failed ({os.strerror(code)})", errno=code)
        if attr == "sriov_numvfs" and self.create:
            self.fs.set_vfs(str(address), int(value), vf_device="1520", vf_driver=self.vf_driver)
        elif attr != "sriov_numvfs":
            super().write_attr(address, attr, value)

    def _kernel_says(self, address, n):
        current = int(self.read_attr(address, "sriov_numvfs"))
        if n > int(self.read_attr(address, "sriov_totalvfs")):
            return errno.ERANGE
        if n and current and n != current:
            return errno.EBUSY
        return None


def command(scratch, kernel, *argv):
    """Run `vfalloc host numvfs ARGV` with `kernel` as the context's sysfs."""
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["host", "numvfs", *scratch.flags(), *argv])
    ctx = make_context(args, out, err)
    ctx.sysfs = kernel
    code = args.func(args, ctx)
    return code, out.getvalue(), err.getvalue()
