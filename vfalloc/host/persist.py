"""`vfalloc host persist`: what makes each PF's VF count survive a reboot, either a systemd oneshot
unit or one udev rule per PF, rendered from the pools' numvfs (config) or PF=N arguments.

Owns: the unit and rule text, their paths, which PFs and counts they carry. Must not: write
sysfs (the unit calls `vfalloc host numvfs` at boot), or write files other than through RootFS.

Facts relied on:
- systemd.unit(5): After=/Before= order only; the unit runs after the network managers that might
  also set VFs (network-pre.target, NetworkManager, ifupdown's networking, systemd-networkd) and
  before libvirt (monolithic libvirtd or modular virtqemud) autostarts guests. Each PF's netdev
  device unit (sys-subsystem-net-devices-IFACE.device, systemd-escape --path) is wanted and
  waited for, so the PF's driver is bound before `numvfs` writes (else ENOENT). ExecStartPost=
  runs after every ExecStart= succeeded; a "-" prefix makes its failure not fail the unit.
- udev: a PCI device's "add" uevent comes before its driver probes; "bind" (Linux 4.14) after.
  At boot the coldplug replays "add" with the driver already bound, after a hotplug or a driver
  (re)load only "bind" carries it. So the rule matches both with DRIVER=="?*", by PCI address
  (KERNEL), and only while sriov_numvfs is 0 (writing over a non-zero count is EBUSY). Matching
  "every igb NIC" instead also hits ports that should get no VFs; that is the rule that failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError, shown
from ..model import MAX_VFS, Host, Pool, whole_number

UNIT_NAME = "vfalloc-numvfs.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
RULE_PATH = "/etc/udev/rules.d/70-vfalloc-numvfs.rules"
HEADER = "# Written by `vfalloc host persist`; rerun it to change this file, `--remove` to delete it."
METHODS = ("systemd", "udev")


@dataclass(frozen=True)
class Target:
    address: str
    netdev: str | None
    numvfs: int


def targets(host: Host, pools: tuple[Pool, ...], specs: list[str],
            pf_counts: dict[str, int] | None = None) -> list[Target]:
    """PFs with a VF count: from the pools' numvfs and the [pf.NAME] tables (a PF in no pool
    too), then PF=N arguments (which win)."""
    counts: dict[str, tuple[int, str]] = {a: (n, "[pf]") for a, n in (pf_counts or {}).items()}
    for pool in pools:
        for m in pool.members:
            if m.numvfs is None:
                continue
            key = str(m.pf)
            if key in counts and counts[key][0] != m.numvfs and counts[key][1] != "[pf]":
                raise UsageError(f"PF {key} has numvfs {counts[key][0]} in pool {counts[key][1]} and "
                                 f"{m.numvfs} in pool {pool.name}; set it once, in [pf.NAME]")
            counts[key] = (m.numvfs, pool.name)
    for spec in specs:
        ref, sep, num = spec.partition("=")
        pf = host.pf(ref.strip())
        count = whole_number(num.strip(), MAX_VFS)
        if not sep or count is None or pf is None:
            raise UsageError(f"{shown(repr(spec))}: write PF=N with an SR-IOV PF's name or PCI address and a "
                             "number of VFs, e.g. enp1s0f0=7")
        counts[str(pf.address)] = (count, "the command line")
    found = []
    for address, (n, _) in sorted(counts.items()):
        pf = host.pf(address)
        if pf is None:
            raise UsageError(f"PF {address} is not an SR-IOV PF on this host")
        if n > pf.totalvfs:
            raise UsageError(f"{pf.name}: numvfs {n} is more than its sriov_totalvfs {pf.totalvfs}")
        found.append(Target(address, pf.netdev, n))
    if not found:
        raise UsageError("no PF has a VF count to persist; set `numvfs = N` on a pool or in "
                         "[pf.NAME] of the config file, or pass PF=N")
    return found


def escape(name: str) -> str:
    """systemd-escape of one name (systemd.unit(5) "String Escaping"): "/" becomes "-", anything
    but ASCII letters, digits, ":" "_" and a non-leading "." becomes \\xNN."""
    out = []
    for i, ch in enumerate(name):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out)


def device_unit(netdev: str) -> str:
    """The device unit systemd makes for a network interface: its sysfs path
    (subsystem/net/devices/IFACE under the sysfs mount) escaped, `systemd-escape --path`."""
    return f"sys-subsystem-net-devices-{escape(netdev)}.device"


def render_unit(items: list[Target], exe: str, autoprobe: bool | None, config: str | None = None,
                metrics_textfile: str | None = None) -> str:
    """The oneshot unit. `config`: a config file other than the default, passed on to each
    command (a unit runs with no VFALLOC_* environment). `metrics_textfile`: the metrics are
    written there once the VFs exist, judged without libvirt (`--offline`: the unit runs before
    libvirt, and asking a socket-activated libvirtd from it would wait for this very unit)."""
    devices = " ".join(device_unit(t.netdev) for t in items if t.netdev)
    lines = [HEADER, "[Unit]",
             "Description=vfalloc: create the SR-IOV VFs of the configured pools",
             "After=network-pre.target NetworkManager.service networking.service systemd-networkd.service",
             "Before=libvirtd.service virtqemud.service"]
    if devices:
        lines += [f"Wants={devices}", f"After={devices}"]
    lines += ["", "[Service]", "Type=oneshot", "RemainAfterExit=yes"]
    tail = "" if autoprobe is None else f" --autoprobe {'on' if autoprobe else 'off'}"
    if config:
        tail += f" --config {config}"
    lines += [f"ExecStart={exe} host numvfs {t.address} {t.numvfs}{tail}" for t in items]
    # New VFs come with a reset PF whose own FDB is empty: put back the entries bridged guests,
    # containers and the bridge's address need (docs/bridges.md). "-": a failure there leaves
    # the VFs made and the unit good; `vfalloc host check` reports missing entries.
    lines.append(f"ExecStartPost=-{exe} fdb sync" + (f" --config {config}" if config else ""))
    if metrics_textfile:
        lines.append(f"ExecStart={exe} metrics --offline --textfile {check_exe(metrics_textfile, 'metrics_textfile')}"
                     + (f" --config {config}" if config else ""))
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render_rules(items: list[Target], autoprobe: bool | None) -> str:
    lines = [HEADER]
    probe = "" if autoprobe is None else f'ATTR{{sriov_drivers_autoprobe}}="{1 if autoprobe else 0}", '
    for t in items:
        lines.append(f"# {t.address}{f' ({t.netdev})' if t.netdev else ''}: {t.numvfs} VFs once its driver is bound")
        lines.append(f'ACTION=="add|bind", SUBSYSTEM=="pci", KERNEL=="{t.address}", DRIVER=="?*", '
                     f'ATTR{{sriov_numvfs}}=="0", {probe}ATTR{{sriov_numvfs}}="{t.numvfs}"')
    return "\n".join(lines) + "\n"


def check_exe(exe: str, what: str = "--exec") -> str:
    if not exe.startswith("/") or re.search(r"\s", exe):
        raise UsageError(f"{what} {exe!r}: systemd needs an absolute path without spaces")
    return exe


def persisted(unit_text: str | None, rule_text: str | None) -> dict[str, tuple[str, int]]:
    """PF address -> (method, count) that the files vfalloc wrote carry (for `host check`)."""
    found: dict[str, tuple[str, int]] = {}
    # [0-9]{1,5}: ASCII digits, at most MAX_VFS (\d would take any script's digits, int() past 4300 fails)
    for m in re.finditer(r"^ExecStart=\S+ host numvfs (\S+) ([0-9]{1,5})\b", unit_text or "", re.M):
        found[m[1]] = ("systemd", int(m[2]))
    for m in re.finditer(r'KERNEL=="([^"]+)".*ATTR\{sriov_numvfs\}="([0-9]{1,5})"', rule_text or ""):
        found[m[1]] = ("udev", int(m[2]))
    return found
