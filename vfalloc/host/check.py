"""`vfalloc host check`: every prerequisite of the admin's manual process, checked on this host,
one line each: ok, warn or fail, with the fix. A fail means guests cannot get working VFs.

Owns: the list of checks and their verdicts. Must not: change anything (every fix is a command
the admin runs), or print (commands/host_show renders the lines and the JSON).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .. import HOOKS_DIR
from ..errors import VfallocError
from ..fdb.entries import Entry
from ..hookfile import written_by_vfalloc
from ..model import PF, Host
from ..sysfs import Sysfs
from . import acs, bootsetup, cmdline, owners, persist, vfdriver
from .bootsetup import Setup
from .rootfs import RootFS

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    status: str
    check: str
    subject: str
    message: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Facts:
    """What the checks look at, gathered by the command (so each check is a pure function)."""

    sysfs: Sysfs
    host: Host
    rootfs: RootFS
    cmdline: list[str] | None
    vendor: str | None
    wanted: dict[str, int]          # PF address -> numvfs from the config
    config_error: str | None = None
    hooks_dir: str = HOOKS_DIR
    # the boot set-up under the root, each of its files' place and arguments, or why unreadable
    boot: tuple[Setup | None, list[tuple[str, list[str]]], str | None] = (None, [], None)
    # PF interface -> the FDB entries it lacks, for PFs that are bridge ports (fdb.upkeep.missing)
    fdb_missing: dict[str, list[Entry]] = field(default_factory=dict)
    fdb_kept_by_vfalloc: frozenset[str] = frozenset()  # PFs whose entries vfalloc keeps (config)
    fdb_error: str | None = None
    hook_text: str | None = None  # the hook `vfalloc install-hook` would write now


def run(f: Facts) -> list[Check]:
    checks = iommu(f) + [boot(f), vfio(f.sysfs), hook(f.rootfs, f.hooks_dir, f.hook_text)]
    if f.config_error:
        checks.append(Check(FAIL, "config", "host", f.config_error, "fix the config file"))
    if not f.host.pfs:
        checks.append(Check(FAIL, "sr-iov", "host", "no SR-IOV physical function found",
                            "enable SR-IOV in the BIOS/UEFI setup and load the NIC's driver"))
    groups = f.sysfs.iommu_groups()
    black = vfdriver.blacklisted("".join(f.rootfs.read(p) or "" for p in
                                         f.rootfs.glob("/etc/modprobe.d", "*.conf")))
    files = persist.persisted(f.rootfs.read(persist.UNIT_PATH), f.rootfs.read(persist.RULE_PATH))
    for pf in f.host.pfs:
        want = f.wanted.get(str(pf.address))
        checks += [sriov(pf, want), link(pf), isolation(f.sysfs, pf, groups),
                   driver_policy(f.sysfs, pf, black), persisted(pf, want, files, f.rootfs)]
        checks += competing(f.rootfs, f.sysfs, pf, want)
    return checks + fdb_entries(f)


def fdb_entries(f: Facts) -> list[Check]:
    """A PF with VFs that is a bridge port needs the MACs behind the bridge in its own FDB, or
    its VFs cannot reach them (docs/bridges.md)."""
    if f.fdb_error:
        return [Check(WARN, "fdb", "host", f"cannot check the PFs' FDB entries: {f.fdb_error}",
                      "install iproute2 (the `bridge` command)")]
    checks = []
    for pf, missing in sorted(f.fdb_missing.items()):
        if not missing:
            checks.append(Check(OK, "fdb", pf, "bridge port: its FDB holds every MAC on the bridge"))
            continue
        shown = ", ".join(f"{e.mac} ({e.owner.kind} {e.owner.name})" for e in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        if pf in f.fdb_kept_by_vfalloc:
            fix = "`vfalloc fdb sync`"
        else:
            fix = (f"vfalloc keeps no entries on {pf} (config fdb = false): "
                   + "; ".join(f"bridge fdb add {e.mac} dev {pf} self" for e in missing[:3]))
        checks.append(Check(WARN, "fdb", pf, f"bridge port whose FDB lacks {shown}{more}: its VFs cannot "
                            "reach them", fix))
    return checks


def iommu(f: Facts) -> list[Check]:
    has_groups = bool(f.sysfs.iommu_groups())
    checks = []
    if has_groups:
        checks.append(Check(OK, "iommu", "host", "IOMMU groups present: the IOMMU is on"))
    else:
        checks.append(Check(FAIL, "iommu", "host", "no IOMMU groups: the IOMMU is off in the firmware or the kernel",
                            f"enable VT-d / AMD-Vi (IOMMU) in the BIOS/UEFI setup; {_kernel_args_fix(f)}; reboot"))
    if f.cmdline is None:
        return checks + [Check(WARN, "kernel-args", "host", "cannot read the running kernel's command line")]
    state, why = cmdline.iommu_state(f.cmdline, f.vendor)
    if state is False:
        checks.append(Check(FAIL, "kernel-args", "host", f"the kernel was booted with {why}",
                            f"{_kernel_args_fix(f)}; reboot"))
    elif state is None and f.vendor in cmdline.INTEL:
        status = WARN if has_groups else FAIL
        checks.append(Check(status, "kernel-args", "host", "intel_iommu=on is not on the kernel command line",
                            f"{_kernel_args_fix(f)}; reboot"))
    else:
        checks.append(Check(OK, "kernel-args", "host", why))
    if cmdline.has(f.cmdline, "iommu=pt"):
        checks.append(Check(OK, "iommu-pt", "host", "iommu=pt: host devices use passthrough mappings"))
    else:
        checks.append(Check(WARN, "iommu-pt", "host", "no iommu=pt: the host's own DMA goes through the IOMMU (slower)",
                            f"{_kernel_args_fix(f)}; reboot"))
    return checks


def _kernel_args_fix(f: Facts) -> str:
    """`vfalloc host kernel-args` and the set-up's own tool that puts the edit into the boot
    loader's config."""
    setup = f.boot[0]
    if setup is None:
        return "`vfalloc host kernel-args`; regenerate the boot config"
    wanted, _ = cmdline.vendor_defaults(f.vendor)
    cmds = bootsetup.commands(setup, wanted, cmdline.iommu_off_args(f.vendor), "$(uname -r)")
    return "; ".join(["`vfalloc host kernel-args`", *(f"`{bootsetup.shown(c)}`" for c in cmds)])


def boot(f: Facts) -> Check:
    """Whether the next boot gets the IOMMU arguments: the set-up's files, not /proc/cmdline."""
    setup, sources, error = f.boot
    where = f.rootfs.shown("/")
    if setup is None:
        return Check(WARN, "boot", "host", f"no boot configuration vfalloc knows under {where} (/etc/default/grub, "
                     "/etc/kernel/cmdline): the next boot's kernel arguments are not checked")
    if error:
        return Check(WARN, "boot", "host", f"{setup.name}: {error}")
    wanted, _ = cmdline.vendor_defaults(f.vendor)
    unwanted = cmdline.iommu_off_args(f.vendor)
    problems = []
    for place, tokens in sources:
        lacks = [a for a in wanted if not cmdline.has(tokens, a) or cmdline.undoing(tokens, a)]
        has = [t for t in tokens if any(cmdline.matches(t, u) for u in unwanted)]
        if lacks or has:
            problems.append(f"{f.rootfs.shown(place)} " + " and ".join(
                x for x in (f"lacks {' '.join(lacks)}" if lacks else "", f"has {' '.join(has)}" if has else "") if x))
    if problems:
        return Check(WARN, "boot", "host", f"{setup.name}: {'; '.join(problems)} (the next boot gets what "
                     "these files say)",
                     _kernel_args_fix(f))
    places = ", ".join(f.rootfs.shown(p) for p, _ in sources)
    return Check(OK, "boot", "host", f"{setup.name}: {places} carry {' '.join(wanted) or 'no IOMMU argument to add'}")


def vfio(sysfs: Sysfs) -> Check:
    if sysfs.pci_driver_exists("vfio-pci") or sysfs.module_loaded("vfio_pci"):
        return Check(OK, "vfio-pci", "host", "vfio-pci is loaded")
    return Check(WARN, "vfio-pci", "host", "vfio-pci is not loaded (libvirt loads it at the first start if installed)",
                 "modprobe vfio-pci; echo vfio-pci > /etc/modules-load.d/vfio-pci.conf")


def hook(rootfs: RootFS, hooks_dir: str, current: str | None = None) -> Check:
    dropin, main = f"{hooks_dir}/qemu.d/vfalloc", f"{hooks_dir}/qemu"
    for name in (dropin, main):
        text = rootfs.read(name) if rootfs.path(name).is_file() else None
        if text is None or (name == main and "vfalloc" not in text):
            continue
        if not os.access(rootfs.path(name), os.X_OK):
            return Check(FAIL, "hook", "host", f"{rootfs.shown(name)} is not executable (libvirt skips it)",
                         f"`chmod 755 {rootfs.shown(name)}`")
        if name == dropin and current is not None and written_by_vfalloc(text) and text != current:
            # The script carries the lease table's path and the config's (templates.hook_script).
            return Check(WARN, "hook", "host", f"{rootfs.shown(name)} is not the hook this vfalloc writes for "
                         "this config (another version, or `state` or the config file moved): it may miss "
                         "leases reserved by hand", "`vfalloc install-hook`")
        return Check(OK, "hook", "host", f"hook installed: {rootfs.shown(name)}")
    return Check(FAIL, "hook", "host", f"no vfalloc hook in {rootfs.shown(hooks_dir)}: VMs started by virsh get no VF",
                 "`vfalloc install-hook`, then restart libvirtd (or virtqemud)")


def sriov(pf: PF, want: int | None) -> Check:
    counts = f"{pf.numvfs} of {pf.totalvfs} VFs"
    if pf.driver is None:
        return Check(FAIL, "sr-iov", pf.name, f"{counts}, no driver bound to the PF", "load the PF's driver")
    if pf.numvfs == 0:
        return Check(WARN if want is None else FAIL, "sr-iov", pf.name, f"{counts}: no VFs created",
                     f"`vfalloc host numvfs {pf.name} {want or pf.totalvfs}`")
    if want is not None and want != pf.numvfs:
        return Check(WARN, "sr-iov", pf.name, f"{counts}, the config wants {want}",
                     f"`vfalloc host numvfs {pf.name} {want}`")
    if len(pf.vfs) != pf.numvfs:
        return Check(FAIL, "sr-iov", pf.name, f"sriov_numvfs says {pf.numvfs} but {len(pf.vfs)} VFs exist",
                     "see dmesg for the PF driver's errors")
    return Check(OK, "sr-iov", pf.name, counts)


def link(pf: PF) -> Check:
    if pf.link_up is None:
        return Check(OK, "link", pf.name, "no network interface (not a NIC, or no link state)")
    if pf.link_up:
        return Check(OK, "link", pf.name, "PF link is up")
    return Check(FAIL, "link", pf.name, "PF link is down: its VFs pass no traffic (igbvf: \"PF still in reset "
                 "state\") and libvirt refuses to start guests on them", f"ip link set {pf.netdev} up, and at boot")


def isolation(sysfs: Sysfs, pf: PF, groups: dict) -> Check:
    if not pf.vfs:
        return Check(OK, "isolation", pf.name, "no VFs to check")
    shared = {vf.iommu_group: groups.get(vf.iommu_group, []) for vf in pf.vfs
              if vf.iommu_group is not None and len(groups.get(vf.iommu_group, [])) > 1}
    if any(vf.iommu_group is None or vf.iommu_group not in groups for vf in pf.vfs):
        return Check(FAIL, "isolation", pf.name, "VFs have no IOMMU group", "switch the IOMMU on (see above)")
    if not shared:
        return Check(OK, "isolation", pf.name, f"each of the {len(pf.vfs)} VFs is alone in its IOMMU group")
    group, members = next(iter(shared.items()))
    try:
        ids = acs.override_ids([acs.report(sysfs, pf.vfs[0].address, groups)])
    except VfallocError:
        ids = []
    bridges = f"; bridge(s) without ACS: {', '.join(ids)}" if ids else ""
    fix = (f"`vfalloc host acs {pf.name}`; a kernel with the ACS override patch and "
           f"`vfalloc host kernel-args --acs-override {ids[0]}`" if ids else f"`vfalloc host acs {pf.name}`")
    return Check(FAIL, "isolation", pf.name, f"VFs share IOMMU groups (group {group} has {len(members)} "
                 f"devices){bridges}", fix)


def driver_policy(sysfs: Sysfs, pf: PF, black: set[str]) -> Check:
    host_bound = [vf for vf in pf.vfs if vf.driver and vf.driver != "vfio-pci"]
    try:
        autoprobe = sysfs.read_attr(pf.address, "sriov_drivers_autoprobe") == "1"
    except VfallocError:
        autoprobe = True
    vf_driver = vfdriver.VF_DRIVERS.get(pf.driver or "", "")
    if not autoprobe or (vf_driver and vf_driver.replace("-", "_") in black):
        how = "autoprobe off" if not autoprobe else f"{vf_driver} blacklisted"
        if host_bound:
            return Check(WARN, "vf-driver", pf.name, f"{how}, but {len(host_bound)} VFs are still bound to "
                         f"{host_bound[0].driver}", f"`vfalloc host numvfs {pf.name} 0` then N re-creates them unbound")
        return Check(OK, "vf-driver", pf.name, f"{how}: new VFs stay off host drivers")
    if host_bound:
        return Check(WARN, "vf-driver", pf.name, f"{len(host_bound)} VFs bound to host driver "
                     f"{host_bound[0].driver}; the host may configure them (DHCP, NetworkManager)",
                     f"`vfalloc host vf-driver --autoprobe off {pf.name}`")
    return Check(OK, "vf-driver", pf.name, "no VF is bound to a host driver")


def persisted(pf: PF, want: int | None, files: dict[str, tuple[str, int]], rootfs: RootFS) -> Check:
    entry = files.get(str(pf.address))
    if entry is None:
        status = WARN if want is not None or pf.numvfs else OK
        if status == OK:
            return Check(OK, "persist", pf.name, "no VFs configured to persist")
        return Check(WARN, "persist", pf.name, "the VF count is not made at boot by vfalloc",
                     "set numvfs in the config (or pass PF=N); `vfalloc host persist --enable`")
    method, count = entry
    if want is not None and count != want:
        return Check(WARN, "persist", pf.name, f"{method} creates {count} VFs at boot, the config wants {want}",
                     f"`vfalloc host persist{' --enable' if method == 'systemd' else ' --method udev'}`")
    if method == "systemd" and not rootfs.exists(persist.WANTS_LINK):
        return Check(WARN, "persist", pf.name, f"{persist.UNIT_NAME} is written but not enabled",
                     "`vfalloc host persist --enable`")
    return Check(OK, "persist", pf.name, f"{count} VFs at boot ({method})")


def competing(rootfs: RootFS, sysfs: Sysfs, pf: PF, want: int | None) -> list[Check]:
    mac = None
    if pf.netdev:
        try:
            mac = sysfs.read_attr(pf.address, f"net/{pf.netdev}/address")
        except VfallocError:
            mac = None
    found = owners.find(rootfs, pf, mac)
    if not found:
        return [Check(OK, "owners", pf.name, "no other tool sets this PF's VF count")]
    checks = []
    for o in found:
        clash = want is not None and o.numvfs is not None and o.numvfs != want
        checks.append(Check(FAIL if clash else WARN, "owners", pf.name,
                            f"{o.tool} also sets VFs: {rootfs.shown(o.file)}: {o.detail}"
                            + (f" (vfalloc wants {want})" if clash else ""),
                            f"keep one owner of numvfs: remove the setting from {rootfs.shown(o.file)} "
                            "or drop numvfs from vfalloc's config"))
    return checks


def summary(checks: list[Check]) -> dict[str, int]:
    return {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL)}
