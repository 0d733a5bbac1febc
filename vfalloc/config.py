"""Settings and pools: what the admin configured, merged with the command line and environment.

Owns the config file format (TOML, default /etc/vfalloc/vfalloc.toml) and the precedence of
settings: command-line flag, then `VFALLOC_*` environment variable, then the file's
`[settings]` table, then the default. Pools are parsed from the file without looking at the host,
then resolved against a `Host` snapshot into `model.Pool` values. Reads only the config file
(vfalloc.config_cache keeps and recalls its parse for the hook); it never touches sysfs or the
state file itself.

    [settings]
    state = "/var/lib/vfalloc/state.json"
    lock_timeout = 10
    hook_log = "/var/log/vfalloc-hook.log"  # optional: hook lines also go here, not only to syslog
    metrics_textfile = "/var/lib/prometheus/node-exporter/vfalloc.prom"  # optional: kept current

    [pools.lan0]
    pfs = ["enp1s0f0#0-3,6", "0000:01:00.1"]
    policy = "spread"           # or "pack" (default)
    vlan = 20                   # defaults for requests of this pool
    trust = "on"
    spoofchk = "off"
    numvfs = 7                  # VFs to create on each PF of the pool (`vfalloc host persist`)

    [pf.enp1s0f2]
    numvfs = 4                  # per-PF VF count, overrides the pool's
    fdb = false                 # do not keep this PF's FDB entries (docs/bridges.md)

    [fdb]
    enabled = false             # keep no PF's FDB entries on this host (default: true)
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from typing import Any

from . import config_cache
from .errors import ConfigError, UsageError, shown
from .model import MAX_VFS, POLICIES, Host, PciAddress, Pool, PoolMember, parse_vlan, whole_number
from .record import Record, field
from .rundir import run_dir

DEFAULT_CONFIG = "/etc/vfalloc/vfalloc.toml"
DEFAULTS = {
    "sysfs_root": "/sys",
    "state": "/var/lib/vfalloc/state.json",
    "proc_root": "/proc",
    "libvirt_run": "/run/libvirt/qemu",
    "lock_timeout": "10",
    "hook_log": "",
    "metrics_textfile": "",
}
ENV = {
    "config": "VFALLOC_CONFIG",
    "sysfs_root": "VFALLOC_SYSFS_ROOT",
    "state": "VFALLOC_STATE",
    "proc_root": "VFALLOC_PROC_ROOT",
    "libvirt_run": "VFALLOC_LIBVIRT_RUN",
    "lock_timeout": "VFALLOC_LOCK_TIMEOUT",
    "hook_log": "VFALLOC_HOOK_LOG",
    "metrics_textfile": "VFALLOC_METRICS_TEXTFILE",
}
_POOL_KEYS = {"pfs", "policy", "vlan", "trust", "spoofchk", "numvfs"}
# Every process of vfalloc must find the same files: the hook runs in "/", a command wherever it
# is started, so these are refused when relative.
_ABSOLUTE = {"state": "the lease table", "hook_log": "the hook's log file"}
MAX_CONFIG_BYTES = 1 << 20
_TOP_KEYS = {"settings", "pools", "pf", "fdb"}


class PoolSpec(Record):
    """A pool as written in the file: PF references not yet resolved against the host."""

    name: str
    members: tuple[tuple[str, frozenset[int] | None], ...]
    policy: str = "pack"
    vlan: int | None = None
    trust: str | None = None
    spoofchk: str | None = None
    numvfs: int | None = None


class ConfigFile(Record):
    """The config file as read: where it is, whether it exists, and what it says."""

    path: str
    exists: bool
    settings: Mapping[str, Any] = field(default_factory=dict)
    pools: tuple[PoolSpec, ...] = ()
    pf_numvfs: Mapping[str, int] = field(default_factory=dict)
    fdb_enabled: bool = True                                  # [fdb] enabled
    pf_fdb: Mapping[str, bool] = field(default_factory=dict)  # [pf.NAME] fdb

    def fdb_for(self, names: tuple[str, ...]) -> bool:
        """Whether vfalloc keeps the FDB entries of the PF known by these names (interface
        name, PCI address): on unless [fdb] enabled = false or its [pf.NAME] says fdb = false."""
        if not self.fdb_enabled:
            return False
        return all(self.pf_fdb.get(n, True) for n in names)


class Settings(Record):
    """Every setting after precedence is applied. Paths are plain strings: the hook loads this
    on every call, and pathlib costs it more to import than its lock and write."""

    config: ConfigFile
    sysfs_root: str
    state: str
    proc_root: str
    libvirt_run: str
    lock_timeout: float
    hook_log: str | None = None  # the hook and the hot-plug worker also append their log lines here
    metrics_textfile: str | None = None  # `vfalloc metrics` kept here by the hook (vfalloc.metrics.textfile)


def load_settings(flags: Mapping[str, str | None] | None = None,
                  environ: Mapping[str, str] | None = None, keep_memo: bool = False) -> Settings:
    """Merge flags > environment > config file > defaults. The config file's parse is taken
    from the runtime directory when an earlier run left it there; `keep_memo` (the hook) leaves
    it there for the next run (vfalloc.config_cache)."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    explicit = flags.get("config") or environ.get(ENV["config"])
    config = read_config(explicit or DEFAULT_CONFIG, must_exist=bool(explicit), run_dir=run_dir(environ), keep=keep_memo)

    def pick(key: str) -> str:
        for value in (flags.get(key), environ.get(ENV[key]), config.settings.get(key)):
            if value not in (None, ""):
                return str(value)
        return DEFAULTS[key]

    timeout_text = pick("lock_timeout")
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise UsageError(f"lock timeout {shown(repr(timeout_text))} is not a number of seconds") from None
    if not math.isfinite(timeout) or timeout <= 0:
        raise UsageError(f"lock timeout {shown(timeout_text)} must be a number of seconds more than 0, "
                         "such as 10")
    for key, what in _ABSOLUTE.items():
        value = pick(key)
        if value and not os.path.isabs(value):
            raise UsageError(f"{key} path {shown(value)} is not absolute; give the full path of {what} "
                             f"(--{key.replace('_', '-')}, {ENV[key]} or {key} in [settings])")
    hook_log = pick("hook_log")
    textfile = pick("metrics_textfile")
    if textfile and not os.path.isabs(textfile):
        raise UsageError(f"metrics_textfile {textfile!r} must be an absolute path (node_exporter's "
                         "textfile directory, e.g. /var/lib/prometheus/node-exporter/vfalloc.prom)")
    return Settings(config, pick("sysfs_root"), pick("state"), pick("proc_root"), pick("libvirt_run"), timeout,
                    hook_log or None, textfile or None)


def read_config(path: str | os.PathLike[str], must_exist: bool, run_dir: str | None = None,
                keep: bool = False) -> ConfigFile:
    """The config file at `path`. With `run_dir`, what an earlier run parsed of the very same
    text is taken from there (vfalloc.config_cache) instead of parsing it again, and with `keep`
    a new parse is left there."""
    path = os.fspath(path)
    try:
        raw = _read_regular(path)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(path, "does not exist", "create it or point --config at the right file") from None
        return ConfigFile(path, exists=False)
    except OSError as exc:
        raise ConfigError(path, f"cannot be read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"is not valid TOML: {exc}", "fix the line named") from exc
    data = config_cache.recall(run_dir, path, text) if run_dir else None
    if data is not None:
        return parse_config(path, data)
    import tomllib  # only when the text is new: see vfalloc.config_cache

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"is not valid TOML: {exc}", "fix the line named") from exc
    except ValueError as exc:  # an integer of more than 4,300 digits (int()'s limit)
        raise ConfigError(path, "holds a number of more digits than Python reads (4300)",
                          "write numbers of a few digits") from exc
    except RecursionError as exc:
        raise ConfigError(path, "nests arrays or tables too deep to read", "write a flat config") from exc
    config = parse_config(path, data)
    if run_dir and keep:
        config_cache.keep(run_dir, path, text, data)
    return config


def _read_regular(path: str) -> bytes:
    """The file's bytes. Opened without blocking and refused unless a regular file: a FIFO there
    would block the open (and the read) for as long as no one writes to it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "is not a regular file", "point --config (or VFALLOC_CONFIG) at a TOML file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, f"is larger than {MAX_CONFIG_BYTES} bytes", "point --config at the TOML file")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_config(path: str, data: Mapping[str, Any]) -> ConfigFile:
    _no_unknown(path, "the top level", data, _TOP_KEYS)
    settings = data.get("settings", {})
    _no_unknown(path, "[settings]", settings, set(DEFAULTS))
    for key, what in _ABSOLUTE.items():
        value = settings.get(key)
        if value not in (None, "") and not (isinstance(value, str) and os.path.isabs(value)):
            raise ConfigError(path, f"[settings] {key} = {shown(repr(value))} is not an absolute path",
                              f"give the full path of {what}")
    pools_raw = data.get("pools", {})
    if not isinstance(pools_raw, dict):
        raise ConfigError(path, "`pools` must be a table of [pools.NAME] sections")
    pools = tuple(_pool_spec(path, _checked_name(path, "pool", name), body) for name, body in pools_raw.items())
    pf_numvfs = {}
    pf_fdb = {}
    pf_tables = data.get("pf", {})
    _no_unknown(path, "[pf]", pf_tables, set(pf_tables))
    for ref, body in pf_tables.items():
        ref = _checked_name(path, "PF", ref)
        _no_unknown(path, f"[pf.{ref}]", body, {"numvfs", "fdb"})
        if "numvfs" in body or "fdb" not in body:
            pf_numvfs[ref] = _count(path, f"[pf.{ref}] numvfs", body.get("numvfs"))
        if "fdb" in body:
            pf_fdb[ref] = _switch(path, f"[pf.{ref}] fdb", body["fdb"])
    fdb = data.get("fdb", {})
    _no_unknown(path, "[fdb]", fdb, {"enabled"})
    enabled = _switch(path, "[fdb] enabled", fdb.get("enabled", True))
    return ConfigFile(path, True, settings, pools, pf_numvfs, enabled, pf_fdb)


def _switch(path: str, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"{where} = {value!r} is not true or false", "write true or false")
    return value


_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def _checked_name(path: str, what: str, name: str) -> str:
    """Pool names and PF references appear in domain XML, commands and messages: keep them to
    letters, digits and _ . : -"""
    if not name or not set(name) <= _NAME_OK or len(name) > 64:
        raise ConfigError(path, f"{what} name {name!r} is not valid",
                          "use up to 64 letters, digits and _ . : -")
    return name


def _no_unknown(path: str, where: str, table: Any, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(path, f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(path, f"unknown key {unknown[0]!r} in {where}",
                          f"allowed keys: {', '.join(sorted(allowed)) or 'none'}")


def _pool_spec(path: str, name: str, body: Any) -> PoolSpec:
    where = f"[pools.{name}]"
    _no_unknown(path, where, body, _POOL_KEYS)
    pfs = body.get("pfs")
    if not isinstance(pfs, list) or not pfs or not all(isinstance(p, str) for p in pfs):
        raise ConfigError(path, f"{where} needs pfs = [\"IFNAME\", \"0000:01:00.0#0-3\", ...]")
    policy = body.get("policy", "pack")
    if policy not in POLICIES:
        raise ConfigError(path, f"{where} policy = {policy!r} is unknown", "use \"pack\" or \"spread\"")
    try:
        vlan = None if body.get("vlan") is None else parse_vlan(body["vlan"])
        for key in ("trust", "spoofchk"):
            if body.get(key) not in (None, "on", "off"):
                raise UsageError(f"{key} = {body[key]!r} is not valid; use \"on\" or \"off\"")
    except UsageError as exc:
        raise ConfigError(path, f"{where} {exc}") from exc
    members = tuple(parse_member(path, where, text) for text in pfs)
    numvfs = None if body.get("numvfs") is None else _count(path, f"{where} numvfs", body["numvfs"])
    return PoolSpec(name, members, policy, vlan, body.get("trust"), body.get("spoofchk"), numvfs)


def _count(path: str, where: str, value: Any) -> int:
    if value is None:
        raise ConfigError(path, f"{where} is missing", "write numvfs = N")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VFS:
        raise ConfigError(path, f"{where} = {shown(repr(value))} must be a whole number of VFs from 0 to {MAX_VFS}")
    return value


def parse_member(path: str, where: str, text: str) -> tuple[str, frozenset[int] | None]:
    """`enp1s0f0` or `0000:01:00.0#0-3,6` -> (PF reference, VF indexes or None for all)."""
    ref, sep, ranges = text.partition("#")
    ref = ref.strip()
    if not ref:
        raise ConfigError(path, f"{where} pfs entry {text!r} names no PF")
    _checked_name(path, "PF", ref)
    if not sep:
        return ref, None
    indexes: set[int] = set()
    for part in ranges.split(","):
        lo, dash, hi = part.strip().partition("-")
        # Bounded before anything is expanded: no PF has more than MAX_VFS VFs.
        first = whole_number(lo, MAX_VFS - 1)
        last = whole_number(hi, MAX_VFS - 1) if dash else first
        if first is None or last is None:
            raise ConfigError(path, f"{where} VF range {shown(repr(text))} is not valid",
                              f"write VF indexes from 0 to {MAX_VFS - 1} like enp1s0f0#0-3,6")
        if last < first:
            raise ConfigError(path, f"{where} VF range {part.strip()!r} in {text!r} runs backwards")
        indexes.update(range(first, last + 1))
    return ref, frozenset(indexes)


def resolve_pools(config: ConfigFile, host: Host) -> tuple[Pool, ...]:
    """Every pool from the file, or with no pools configured one pool per SR-IOV PF. The whole
    config is checked against `host`, which must hold every PF the config names."""
    pf_counts(config, host)  # a [pf.X] naming no PF is refused like any other config error
    if not config.pools:
        return tuple(Pool(pf.name, (PoolMember(pf.address, None, _pf_numvfs(config, pf)),)) for pf in host.pfs)
    pools = tuple(_resolve(config, spec, host) for spec in config.pools)
    _check_overlap(config.path, pools)
    return pools


def pf_counts(config: ConfigFile, host: Host) -> dict[str, int]:
    """PF address -> numvfs of every [pf.NAME] table, whether or not the PF is in a pool."""
    counts = {}
    for ref, n in config.pf_numvfs.items():
        pf = host.pf(ref)
        if pf is None:
            raise ConfigError(config.path, f"[pf.{ref}] names {ref!r}, which is not an SR-IOV PF on this host",
                              "name a PF by interface (`ip link`) or PCI address (`lspci -D`), or remove the table")
        counts[str(pf.address)] = n
    return counts


def _pf_numvfs(config: ConfigFile, pf) -> int | None:
    for ref in (pf.netdev, str(pf.address)):
        if ref in config.pf_numvfs:
            return config.pf_numvfs[ref]
    return None


def _resolve(config: ConfigFile, spec: PoolSpec, host: Host) -> Pool:
    members = []
    for ref, indexes in spec.members:
        pf = host.pf(ref)
        if pf is None:
            raise ConfigError(config.path, f"[pools.{spec.name}] names PF {ref!r}, which is not an SR-IOV PF on this host",
                              "check the name with `ip link` or the address with `lspci -D`")
        if indexes and max(indexes) >= pf.totalvfs:
            raise ConfigError(config.path, f"[pools.{spec.name}] VF index {max(indexes)} on {ref} is past the PF's "
                              f"sriov_totalvfs ({pf.totalvfs})", f"use indexes 0-{pf.totalvfs - 1}")
        numvfs = _pf_numvfs(config, pf)
        members.append(PoolMember(pf.address, indexes, numvfs if numvfs is not None else spec.numvfs))
    return Pool(spec.name, tuple(members), spec.policy, spec.vlan, spec.trust, spec.spoofchk)


def _check_overlap(path: str, pools: tuple[Pool, ...]) -> None:
    seen: dict[tuple[PciAddress, int | None], str] = {}
    for pool in pools:
        for m in pool.members:
            keys = [(m.pf, i) for i in m.indexes] if m.indexes is not None else [(m.pf, None)]
            for key in keys:
                clash = seen.get(key) or seen.get((m.pf, None))
                if clash is None and key[1] is None:
                    clash = next((p for (pf, i), p in seen.items() if pf == m.pf), None)
                if clash is not None:
                    which = f"VF {key[1]} of {m.pf}" if key[1] is not None else f"PF {m.pf} (all its VFs)"
                    raise ConfigError(path, f"{which} is in pool {clash} and pool {pool.name}",
                                      "a VF may belong to one pool only")
                seen[key] = pool.name
