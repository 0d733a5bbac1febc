"""Everything vfalloc says to libvirt, through libvirt-python (never `virsh` subprocesses).

Owns: opening a connection (`--connect URI`, else LIBVIRT_DEFAULT_URI, else qemu:///system),
finding a domain by name or UUID, its saved and live XML, the vfalloc metadata of its saved
config, starting a defined domain with a live XML of our making, live attach, destroy, and the
list of running domains. Every libvirt error becomes a VirtError: one line that names what was
being done and carries libvirt's own message.

Must not: be imported by the hook (a hook that calls back into libvirt deadlocks the daemon, and
the hook must work where libvirt-python is missing); choose VFs or touch the lease table (the
callers do that, never while they hold the state lock: libvirt holds a domain's lock while that
domain's hook runs, and the hook waits for the state lock); parse or build domain XML beyond the
metadata wrapper libvirt's API wants (domxml does that).

Facts relied on, checked against libvirt 11.3 on these machines:
- virDomainCreateXML with the name and UUID of a defined, inactive domain starts that domain
  with the given XML as its live definition; the persistent definition stays as it was.
- virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT, xml, key, uri) puts the element into the
  namespace `uri` with prefix `key` itself, and refuses ("failed to create a new XML namespace")
  an element that already declares that prefix; virDomainGetMetadata returns the element with the
  namespace stripped. vfalloc therefore writes the element without a namespace and reads its
  requests back from the domain XML, where the namespace is in place.
- While a domain's hook runs, libvirt holds that domain's lock: listAllDomains() and any call on
  that domain wait for the hook. From before `prepare begin` until the start is over the domain
  is active with state paused/starting-up (VIR_DOMAIN_PAUSED_STARTING_UP); a live change waits
  for the start job, up to 30 s, then fails with VIR_ERR_OPERATION_TIMEOUT.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping

import libvirt

from .errors import UsageError, VirtError

DEFAULT_URI = "qemu:///system"
ENV_URI = "LIBVIRT_DEFAULT_URI"

# libvirt-python's default error handler prints every error to stderr as well ("libvirt: QEMU
# Driver error : ..."); vfalloc reports each error once, as one line, itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def resolve_uri(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """--connect beats LIBVIRT_DEFAULT_URI beats qemu:///system."""
    environ = os.environ if environ is None else environ
    return flag or environ.get(ENV_URI) or DEFAULT_URI


def one_line(text: str) -> str:
    """libvirt messages may span lines (QEMU's stderr, a hook's stderr): one line for people."""
    return re.sub(r"\s*\n\s*", " ", (text or "").strip())


def _message(exc: libvirt.libvirtError) -> str:
    return one_line(exc.get_error_message() or str(exc))


def _code(exc: libvirt.libvirtError) -> int | None:
    return exc.get_error_code()


class Domain:
    """One domain, looked up once; every method is one libvirt call or a short wait."""

    __slots__ = ("raw", "name", "uuid")

    def __init__(self, raw: libvirt.virDomain, name: str, uuid: str) -> None:
        self.raw, self.name, self.uuid = raw, name, uuid

    def _fail(self, what: str, exc: libvirt.libvirtError) -> VirtError:
        return VirtError(f"cannot {what} {self.name}: libvirt: {_message(exc)}")

    def is_active(self) -> bool:
        try:
            return bool(self.raw.isActive())
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self._fail("ask libvirt about", exc) from exc

    def is_persistent(self) -> bool:
        try:
            return bool(self.raw.isPersistent())
        except libvirt.libvirtError as exc:
            raise self._fail("ask libvirt about", exc) from exc

    def saved_xml(self) -> str:
        """The persistent definition with secrets (a live start from it must keep them)."""
        try:
            return self.raw.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        except libvirt.libvirtError as exc:
            raise self._fail("read the saved XML of", exc) from exc

    def live_xml(self) -> str:
        try:
            return self.raw.XMLDesc(0)
        except libvirt.libvirtError as exc:
            raise self._fail("read the XML of", exc) from exc

    def set_metadata(self, element: str | None, uri: str, key: str) -> None:
        """Write `element` (without a namespace, as domxml.metadata_element renders it),
        or with None remove it, in the SAVED config only: a running domain keeps the devices it
        was started with, and its live XML keeps telling the truth about what it asked for at
        that start. The change applies from the next start."""
        body = element
        try:
            self.raw.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, body,
                                 key if body is not None else None, uri,
                                 libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        except libvirt.libvirtError as exc:
            raise self._fail("change the vfalloc metadata of", exc) from exc

    def state(self) -> tuple[int, int] | None:
        """(state, reason) as libvirt reports them; None when the domain no longer exists."""
        try:
            state, reason = self.raw.state()
            return state, reason
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._fail("read the state of", exc) from exc

    def wait_started(self, deadline: float, poll: float = 0.1) -> bool:
        """Wait until libvirt's start of this domain is over. True: it runs (or is paused by
        request); False: it stopped or vanished. VirtError when `deadline` (monotonic) passes."""
        stopped = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_CRASHED)
        starting = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
        while True:
            state = self.state()
            if state is None or state[0] in stopped:
                return False
            if state[0] != libvirt.VIR_DOMAIN_NOSTATE and state != starting:
                return True
            if time.monotonic() >= deadline:
                raise VirtError(f"{self.name} was still starting when vfalloc stopped waiting")
            time.sleep(poll)

    def attach_live(self, device_xml: str, deadline: float, retry: float = 0.2) -> None:
        """Hot-plug one device into the running domain (VIR_DOMAIN_AFFECT_LIVE only: the saved
        config keeps just the request). Retries while another job holds the domain, until
        `deadline` (monotonic)."""
        while True:
            try:
                self.raw.attachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                return
            except libvirt.libvirtError as exc:
                if _code(exc) == libvirt.VIR_ERR_OPERATION_TIMEOUT and time.monotonic() + retry < deadline:
                    time.sleep(retry)
                    continue
                raise self._fail("hot-plug a VF into", exc) from exc

    def destroy(self) -> bool:
        """Stop the domain at once; False when it was not running any more."""
        try:
            self.raw.destroy()
            return True
        except libvirt.libvirtError as exc:
            if _code(exc) in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                return False
            raise self._fail("destroy", exc) from exc


class Connection:
    """An open libvirt connection; use as a context manager to close it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        try:
            self.raw = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot connect to libvirt at {uri}: {_message(exc)}; is libvirtd running? "
                            "(choose another with --connect URI or LIBVIRT_DEFAULT_URI)") from exc

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.raw.close()
        except libvirt.libvirtError:
            pass

    def domain(self, ref: str) -> Domain:
        """A domain by name, or by UUID when `ref` looks like one and no domain has that name."""
        try:
            raw = self.raw.lookupByName(ref)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise VirtError(f"cannot look up domain {ref}: libvirt: {_message(exc)}") from exc
            raw = self._by_uuid(ref)
            if raw is None:
                raise UsageError(f"no domain named {ref} at {self.uri}; see `virsh -c {self.uri} list --all`") from None
        return Domain(raw, raw.name(), raw.UUIDString())

    def _by_uuid(self, ref: str) -> libvirt.virDomain | None:
        if not re.fullmatch(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}", ref):
            return None
        try:
            return self.raw.lookupByUUIDString(ref)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise VirtError(f"cannot look up domain {ref}: libvirt: {_message(exc)}") from exc

    def domain_by_uuid(self, uuid: str) -> Domain | None:
        raw = self._by_uuid(uuid)
        return None if raw is None else Domain(raw, raw.name(), raw.UUIDString())

    def start_with(self, name: str, xml: str, paused: bool) -> None:
        """virDomainCreateXML: start the defined domain `name` with `xml` as its live definition
        (same name and UUID), leaving its saved config as it is."""
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        try:
            self.raw.createXML(xml, flags)
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot start {name}: libvirt: {_message(exc)}") from exc

    def running_uuids(self) -> frozenset[str]:
        """UUIDs of the active domains (a domain being started counts: libvirt lists it as
        active from before its `prepare begin` hook)."""
        try:
            domains = self.raw.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot list the running domains at {self.uri}: libvirt: {_message(exc)}") from exc
        return frozenset(d.UUIDString() for d in domains)
