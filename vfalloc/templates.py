"""Text of the files vfalloc installs on a host. Pure: rendering only, no paths, no writes."""

from __future__ import annotations

HOOK_MARKER = "# vfalloc libvirt qemu hook"


def hook_script(interpreter: str, config: str | None = None) -> str:
    """The hook libvirt runs. `-I` keeps PYTHONPATH and the user's site-packages out of a
    program that runs as root inside libvirtd. libvirt runs hooks with a minimal environment
    (PATH, LANG and little else), so a config file other than the default is written into the
    script."""
    env = f"os.environ.setdefault(\"VFALLOC_CONFIG\", {config!r})\n" if config else ""
    return f"""#!{interpreter} -I
{HOOK_MARKER}: hands SR-IOV VFs to domains that ask for them.
# libvirt runs it as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on stdin.
import gc
import os
import sys

# A hook process lives for some 50 ms and makes no garbage cycles; the collector's passes
# while Python, lxml and vfalloc load cost it about 2 ms.
gc.disable()

from vfalloc.hook import main

{env}sys.exit(main(sys.argv[1:]))
"""
