"""Text of the files vfalloc installs on a host. Pure: rendering only, no paths, no writes."""

from __future__ import annotations

HOOK_MARKER = "# vfalloc libvirt qemu hook"


def hook_script(interpreter: str) -> str:
    """The hook libvirt runs. `-I` keeps PYTHONPATH and the user's site-packages out of a
    program that runs as root inside libvirtd."""
    return f"""#!{interpreter} -I
{HOOK_MARKER}: hands SR-IOV VFs to domains that ask for them.
# libvirt runs it as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on stdin.
import sys

from vfalloc.hook import main

sys.exit(main(sys.argv[1:]))
"""
