"""Other software that sets a PF's VF count at boot or link-up, found in its config files under
the root. Two owners of sriov_numvfs fight: whoever writes second over a non-zero count gets EBUSY,
or re-creates every VF under running guests.

Owns: reading NetworkManager keyfiles ([sriov] total-vfs, nm-settings(5)), netplan YAML
(virtual-function-count, or VFs declaring `link: PF`), systemd-networkd .link files
(SR-IOVVirtualFunctions=, systemd.link(5), systemd 250) and modprobe options (igb/ixgbe max_vfs)
and matching them to a PF. Must not: change any of them, or parse YAML beyond keys and indentation.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
from dataclasses import dataclass

from ..model import MAX_VFS, PF, whole_number
from .rootfs import RootFS

NM_DIRS = ("/etc/NetworkManager/system-connections", "/run/NetworkManager/system-connections",
           "/usr/lib/NetworkManager/system-connections")
NETPLAN_DIRS = ("/lib/netplan", "/etc/netplan", "/run/netplan")
NETWORKD_DIRS = ("/etc/systemd/network", "/run/systemd/network", "/usr/lib/systemd/network")
MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/lib/modprobe.d")


@dataclass(frozen=True)
class Owner:
    tool: str
    file: str
    numvfs: int | None
    detail: str


def find(rootfs: RootFS, pf: PF, mac: str | None = None) -> list[Owner]:
    return (_networkmanager(rootfs, pf, mac) + _netplan(rootfs, pf) + _networkd(rootfs, pf, mac)
            + _modprobe(rootfs, pf))


def _ini(text: str) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive in both formats
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    return parser


def _int(text: str | None) -> int | None:
    return None if text is None else whole_number(text.strip(), MAX_VFS)


def _networkmanager(rootfs: RootFS, pf: PF, mac: str | None) -> list[Owner]:
    found = []
    for file in (f for d in NM_DIRS for f in rootfs.glob(d, "*.nmconnection")):
        ini = _ini(rootfs.read(file) or "")
        if ini is None or not ini.has_section("sriov"):
            continue
        name = ini.get("connection", "interface-name", fallback=None)
        conn_mac = ini.get("ethernet", "mac-address", fallback=None)
        if name == pf.netdev or (mac and conn_mac and conn_mac.lower() == mac.lower()):
            count = _int(ini.get("sriov", "total-vfs", fallback=None))
            found.append(Owner("NetworkManager", file, count, f"[sriov] total-vfs={count}"))
    return found


def _netplan(rootfs: RootFS, pf: PF) -> list[Owner]:
    found = []
    for file in (f for d in NETPLAN_DIRS for f in rootfs.glob(d, "*.yaml")):
        for ident, key, value in _yaml_keys(rootfs.read(file) or ""):
            if key == "virtual-function-count" and ident == pf.netdev:
                found.append(Owner("netplan", file, _int(value), f"{ident}: virtual-function-count: {value}"))
            elif key == "link" and value == pf.netdev:
                found.append(Owner("netplan", file, None, f"{ident} is a VF with link: {value}"))
    return found


def _yaml_keys(text: str) -> list[tuple[str, str, str]]:
    """(ethernets id, key, value) for each `key: value` under network.ethernets.ID (any depth)."""
    stack: list[tuple[int, str]] = []
    found = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^(\s*)([^:#\s][^:#]*?)\s*:\s*(.*?)\s*(?:#.*)?$", line)
        if not m:
            continue
        indent, key, value = len(m[1]), m[2].strip("\"'"), m[3].strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack]
        if len(path) >= 3 and path[1] == "ethernets":
            found.append((path[2], key, value))
        stack.append((indent, key))
    return found


def _networkd(rootfs: RootFS, pf: PF, mac: str | None) -> list[Owner]:
    found = []
    for file in (f for d in NETWORKD_DIRS for f in rootfs.glob(d, "*.link")):
        ini = _ini(rootfs.read(file) or "")
        if ini is None or not ini.has_option("Link", "SR-IOVVirtualFunctions"):
            continue
        if _link_matches(ini, pf, mac):
            value = ini.get("Link", "SR-IOVVirtualFunctions")
            found.append(Owner("systemd-networkd", file, _int(value), f"SR-IOVVirtualFunctions={value}"))
    return found


def _link_matches(ini: configparser.ConfigParser, pf: PF, mac: str | None) -> bool:
    """systemd.link(5) [Match]: every key given must match; globs are space-separated lists.
    A .link file without conditions matches every link."""
    if not ini.has_section("Match"):
        return True
    subject = {"OriginalName": pf.netdev or "", "Path": f"pci-{pf.address}",
               "Driver": pf.driver or "", "MACAddress": (mac or "").lower(),
               "PermanentMACAddress": (mac or "").lower()}
    for key, value in ini.items("Match"):
        if key not in subject:
            continue
        patterns = value.split()
        if key.endswith("MACAddress"):
            patterns = [p.lower() for p in patterns]
        if not any(fnmatch.fnmatchcase(subject[key], p) for p in patterns):
            return False
    return True


def _modprobe(rootfs: RootFS, pf: PF) -> list[Owner]:
    """`options igb max_vfs=7`: igb/ixgbe create VFs on every port at probe (deprecated)."""
    if not pf.driver:
        return []
    found = []
    pattern = re.compile(rf"^\s*options\s+{re.escape(pf.driver)}\s+.*\bmax_vfs=([\d,]+)", re.M)
    for file in (f for d in MODPROBE_DIRS for f in rootfs.glob(d, "*.conf")):
        for m in pattern.finditer(rootfs.read(file) or ""):
            first = _int(m[1].split(",")[0])
            found.append(Owner("modprobe", file, first, f"options {pf.driver} max_vfs={m[1]}"))
    return found
