"""The one place vfalloc changes or reads a forwarding table: iproute2's `bridge` command.

Why the command and not netlink from Python: iproute2 is on every host that has Linux bridges
(vfalloc already sets VF trust and spoof checking with its `ip`); speaking RTM_NEWNEIGH /
RTM_DELNEIGH / RTM_GETNEIGH (PF_BRIDGE) ourselves means packing and parsing netlink messages by
hand, or a new dependency (pyroute2) for three requests. The command is run with an argument
list, never through a shell, under LC_ALL=C so the kernel's errors read the same everywhere.

Facts relied on (iproute2 6.1, bridge/fdb.c; Linux 6.x, net/core/rtnetlink.c):
- `bridge fdb add MAC dev IF self` reaches the device's own table (ndo_fdb_add; for drivers
  without one, ndo_dflt_fdb_add adds a unicast address, which fails with EEXIST when the
  address is there already); `bridge fdb del MAC dev IF self` fails with ENOENT when it is not.
- `bridge -j fdb show dev IF` prints a JSON list of {"mac", "ifname", "flags": [...], "state",
  "master"?}; the device's own entries carry the flag "self". `bridge -j fdb show br BR` lists
  what the bridge learnt: entries with "master": BR; the bridge's local addresses have state
  "permanent".

Must not: decide which entries should exist (vfalloc.fdb.entries does), or know where MACs come from.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

from ..errors import FdbError

ENV_BRIDGE = "VFALLOC_BRIDGE"  # tests and admins may point this at another `bridge` binary
TIMEOUT = 10.0


class BridgeTool:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.binary = environ.get(ENV_BRIDGE) or "bridge"
        # libvirt gives hooks a PATH without /usr/sbin on some distributions: add the usual places
        path = environ.get("PATH") or "/usr/bin:/bin"
        self._env = {**environ, "PATH": f"{path}:/usr/sbin:/sbin", "LC_ALL": "C"}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=self._env,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise FdbError(" ".join(argv), "cannot run: the `bridge` command is missing",
                           "install iproute2") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FdbError(" ".join(argv), f"cannot run: {exc}") from exc

    @staticmethod
    def _why(proc: subprocess.CompletedProcess[str]) -> str:
        return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]

    def own(self, dev: str) -> frozenset[str]:
        """The unicast and multicast MACs in `dev`'s own table (entries flagged self)."""
        return frozenset(e["mac"].lower() for e in self._show("dev", dev)
                         if "self" in e.get("flags", ()) and isinstance(e.get("mac"), str))

    def learned(self, bridge: str) -> list[tuple[str, str]]:
        """(port, MAC) of what `bridge` learnt on its ports (not its own local addresses)."""
        return [(e["ifname"], e["mac"].lower()) for e in self._show("br", bridge)
                if e.get("master") == bridge and e.get("state") != "permanent"
                and isinstance(e.get("ifname"), str) and isinstance(e.get("mac"), str)
                and e["ifname"] != bridge]

    def _show(self, what: str, name: str) -> list[dict]:
        proc = self._run("-j", "fdb", "show", what, name)
        if proc.returncode != 0:
            raise FdbError(f"bridge fdb show {what} {name}", self._why(proc))
        try:
            data = json.loads(proc.stdout or "[]")
        except json.JSONDecodeError as exc:
            raise FdbError(f"bridge -j fdb show {what} {name}", f"printed no JSON ({exc})",
                           "use iproute2 4.13 or newer") from exc
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    def add(self, dev: str, mac: str) -> bool:
        """Add MAC to dev's own table: True if added, False if it was there already."""
        proc = self._run("fdb", "add", mac, "dev", dev, "self")
        if proc.returncode == 0:
            return True
        if "File exists" in proc.stderr:
            return False
        raise FdbError(f"bridge fdb add {mac} dev {dev} self", self._why(proc),
                       "the PF's driver may not take extra addresses (check `bridge fdb show dev "
                       f"{dev}`), or turn this off: fdb = false in [pf.{dev}]")

    def delete(self, dev: str, mac: str) -> bool:
        """Remove MAC from dev's own table: True if removed, False if it was not there."""
        proc = self._run("fdb", "del", mac, "dev", dev, "self")
        if proc.returncode == 0:
            return True
        if "No such file or directory" in proc.stderr or "Cannot find device" in proc.stderr:
            return False
        raise FdbError(f"bridge fdb del {mac} dev {dev} self", self._why(proc))
