"""Conversions between libvirt domain XML and vfalloc's values (lxml only).

Owns: reading a domain XML (or the <domstatus> file of a running domain) into a DomainInfo
(name, UUID, the VF requests under <metadata> in namespace urn:vfalloc:1, the ua-vfalloc-N
devices, the NUMA nodes and CPUs the domain is pinned to); rendering the device for a leased
VF; adding such devices to a domain XML; swapping their host-side source address; the request
element for libvirt's metadata API; a domain's interfaces on bridges, networks and macvtaps
(read_guest) and a libvirt network's bridge (network_bridge), for the FDB entries (vfalloc.fdb.entries).

Must not: choose VFs or apply any policy, read or write files, look at sysfs, talk to libvirt.
It parses only the bytes it is given, with a hardened parser (no entity expansion, no DTD, no
network, a size bound) and refuses any DOCTYPE, so an XML bomb or an external entity is refused
with DomainXMLError before anything is expanded or fetched.

Facts relied on are from libvirt 11.3 (docs/formatdomain.rst, src/conf/, src/util/).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from lxml import etree

from .errors import DomainXMLError, UsageError, shown
from .fdb.entries import Guest, Nic
from .model import PciAddress, Request, normalize_mac, parse_vlan
from .record import Record

NS = "urn:vfalloc:1"
ALIAS_PREFIX = "ua-vfalloc-"
_NS_BYTES = NS.encode()
_ALIAS_BYTES = ALIAS_PREFIX.encode()
MAX_XML_BYTES = 16 * 1024 * 1024

_Q = "{" + NS + "}"
_VF_ATTRS = ("pool", "mac", "vlan", "trust", "spoofchk", "type", "required")
_YES_NO = {"yes": True, "no": False}
# Spotted before libxml2 sees the bytes (UTF-8/UTF-16); other encodings are caught after the
# parse through docinfo. libvirt's formatter never writes a DOCTYPE. (Spelled out: encoding
# to UTF-16 here would load two codecs on every hook call.)
_DOCTYPE_MARKS = (b"<!DOCTYPE", b"<\0!\0D\0O\0C\0T\0Y\0P\0E\0", b"\0<\0!\0D\0O\0C\0T\0Y\0P\0E")
# cpuset/nodeset bitmaps are at most VIR_DOMAIN_CPUMASK_LEN (16384) bits in libvirt.
_MAX_BITS = 16384
# Patterns are compiled at first use (re's cache): most hook calls need none of them.
_BITMAP_ITEM = r"\s*(\^?)([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?"
# virPCIDeviceAddressParseXML reads each attribute with base 0 (0x.. hex, 0.. octal, decimal).
_C_UINT = r"\s*(0[xX][0-9a-fA-F]{1,8}|0[0-7]{0,11}|[1-9][0-9]{0,9})"
# virPCIDeviceAddressIsValid: bus <= 0xFF, slot <= 0x1F, function <= 7.
_PCI_LIMITS = {"domain": 0xFFFFFFFF, "bus": 0xFF, "slot": 0x1F, "function": 7}
_PCI_FORMAT = {"domain": "0x{:04x}", "bus": "0x{:02x}", "slot": "0x{:02x}", "function": "0x{:x}"}
_ALIAS_RE = re.escape(ALIAS_PREFIX) + r"([0-9]{1,6})"
_ADDRESS_FIX = "write <address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='0x0'/>"


class VfDevice(Record):
    """A device vfalloc wrote (alias ua-vfalloc-N, N = request index) found in a domain XML."""

    index: int
    address: PciAddress
    type: str  # "interface" or "hostdev", as Request.type
    mac: str | None  # the interface's <mac address>, lower-case; None for a hostdev


class DomainInfo(Record):
    name: str
    uuid: str
    requests: tuple[Request, ...]
    devices: tuple[VfDevice, ...]
    nodeset: frozenset[int]
    cpuset: frozenset[int]


def mentions_vfalloc(xml: bytes) -> bool:
    """True iff the XML names vfalloc's namespace or its device alias prefix anywhere.

    Cheap for what libvirt writes, plain UTF-8: a byte test, no parse. The same names can be
    written so that their bytes do not show: with character references (&#117;rn:vfalloc:1), in
    UTF-16 or UTF-32 (NUL bytes between the letters), or in an encoding an XML declaration names
    (EBCDIC, UTF-7). In doubt, the XML is parsed and written back as UTF-8, which spells every
    name out, and the byte test runs on that; XML that does not parse is taken as mentioning
    vfalloc, so that the parse that follows reports it."""
    data = xml.encode("utf-8", "replace") if isinstance(xml, str) else bytes(xml)
    if _NS_BYTES in data or _ALIAS_BYTES in data:
        return True
    if _plain_utf8(data):
        return False
    try:
        spelled = _serialize(_parse(data))
    except DomainXMLError:
        return True
    return _NS_BYTES in spelled or _ALIAS_BYTES in spelled


def _plain_utf8(data: bytes) -> bool:
    """True when every name in `data` is written as its own UTF-8 bytes: no character reference,
    no NUL (UTF-16/32), and UTF-8 (or ASCII) as the only encoding it can be read in: no EBCDIC
    start, no XML declaration naming another encoding (libxml2 reads XML without either as
    UTF-8, XML 1.0 section 4.3.3 and appendix F)."""
    if b"&#" in data or b"\0" in data:
        return False
    head = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a UTF-8 byte order mark
    head = head.lstrip(b" \t\r\n")
    if head.startswith(b"\x4c\x6f\xa7\x94"):  # "<?xm" in EBCDIC, which libxml2 detects
        return False
    if not head.startswith(b"<?xml"):
        return True
    declaration = head[:head.find(b"?>") + 1 or 200]
    match = re.search(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]*)["']""", declaration)
    return match is None or match[1].lower() in (b"utf-8", b"utf8", b"us-ascii", b"ascii")


def read_domain(xml: bytes | str) -> DomainInfo:
    dom = _domain_element(_parse(xml))
    name = _name(dom)
    devices = _device_map(dom, name)
    return DomainInfo(
        name=name,
        uuid=_uuid(dom, name),
        requests=_metadata_requests(dom, name),
        devices=tuple(_vf_device(devices[n], n, name) for n in sorted(devices)),
        # <numatune><memory nodeset> for the whole guest, <memnode nodeset> per guest node
        nodeset=_union(dom, ("numatune/memory", "numatune/memnode"), "nodeset", name),
        # <vcpu cpuset> for all vCPUs, <cputune><vcpupin cpuset> for one vCPU each
        cpuset=_union(dom, ("vcpu", "cputune/vcpupin"), "cpuset", name),
    )


_NIC_TYPES = ("bridge", "network", "direct")


def read_guest(xml: bytes | str) -> Guest:
    """A domain's name, UUID and the interfaces that may sit on a Linux bridge or a macvtap:
    <interface type='bridge'> (<source bridge>), type='network' (<source network>, and in the
    live XML of a running domain the bridge the network gave it, <source bridge>; libvirt 11.3
    virDomainNetDefFormat) and type='direct' (<source dev>); <target dev> is the tap or macvtap."""
    dom = _domain_element(_parse(xml))
    name = _name(dom)
    nics = []
    for el in dom.iterfind("devices/interface"):
        kind = el.get("type")
        mac_el, source, target = el.find("mac"), el.find("source"), el.find("target")
        mac = (mac_el.get("address") or "").lower() if mac_el is not None else ""
        if kind not in _NIC_TYPES or source is None or not mac:
            continue
        nics.append(Nic(kind, mac, bridge=source.get("bridge"), dev=source.get("dev") if kind == "direct" else None,
                        network=source.get("network") if kind == "network" else None,
                        target=target.get("dev") if target is not None else None))
    return Guest(name, _uuid(dom, name), tuple(nics))


def network_bridge(xml: bytes | str) -> str | None:
    """The Linux bridge of a libvirt network: <bridge name> of its <network> (the config file
    under /etc/libvirt/qemu/networks, or the <networkstatus> libvirt keeps while it runs).
    Networks with <forward mode='bridge'> name the admin's bridge the same way."""
    root: etree._Element | None = _parse(xml).getroot()
    if root is not None and root.tag == "networkstatus":
        root = root.find("network")
    if root is None or root.tag != "network":
        return None
    el = root.find("bridge")
    return el.get("name") if el is not None and el.get("name") else None


def render_device(request: Request, address: PciAddress, mac: str | None) -> str:
    """The device XML for one VF, for attach-device; `mac` is unused for a plain hostdev."""
    el = _device_element(request, address, mac, "?")
    etree.indent(el, space="  ")
    return etree.tostring(el, encoding="unicode")


def add_devices(
    xml: bytes | str, devices: Sequence[tuple[Request, PciAddress, str | None]], stamp: str | None = None
) -> bytes:
    """The XML with a device for each (request, VF, MAC); `stamp`, when given, is set as the
    `start` attribute of the <vfalloc:vfs> request element (libvirt keeps metadata as written)."""
    tree = _parse(xml)
    dom = _domain_element(tree)
    name = _name(dom)
    if stamp is not None:
        for vfs in dom.iterfind(f"metadata/{_Q}vfs"):
            vfs.set("start", stamp)
    container = dom.find("devices")
    if container is None:
        container = _append(dom, etree.Element("devices"))
    found = _device_map(dom, name)
    for request, address, mac in devices:
        new = _device_element(request, address, mac, name)
        old = found.get(request.index)
        if old is None:
            _append(container, new)
        else:
            _replace(old, new)
        found[request.index] = new
    return _serialize(tree)


def swap_sources(xml: bytes | str, addresses: Mapping[int, PciAddress]) -> bytes:
    """Only the host-side <source><address> changes; the guest-side <address> (a child of the
    device itself) stays, as libvirt's guest ABI check on migrate/restore requires."""
    tree = _parse(xml)
    dom = _domain_element(tree)
    name = _name(dom)
    found = _device_map(dom, name)
    for index, address in addresses.items():
        if index not in found:
            problem = f"no device with alias {ALIAS_PREFIX}{index}"
            raise DomainXMLError(name, problem, "swap only the devices it has")
        _vf_device(found[index], index, name)  # the old source must be a readable PCI address
        source = found[index].find("source/address")
        for key, fmt in _PCI_FORMAT.items():
            source.set(key, fmt.format(getattr(address, key)))  # type: ignore[union-attr]  # checked by read_domain
    return _serialize(tree)


def requests_xml(requests: Sequence[Request]) -> str:
    """The <vfalloc:vfs> element, for virDomainSetMetadata(..., key="vfalloc", uri=NS)."""
    vfs = etree.Element(_Q + "vfs", nsmap={"vfalloc": NS})
    for position, req in enumerate(requests):
        if req.index != position:
            problem = f"request {req.index} is at position {position}"
            raise DomainXMLError("?", problem, "pass requests in index order")
        _check_expressible(req, "?")
        try:
            etree.SubElement(vfs, _Q + "vf", _request_attrs(req))
        except ValueError:
            problem = f"pool {shown(repr(req.pool))} cannot be written in XML"
            raise DomainXMLError("?", problem, "use printable characters") from None
    return etree.tostring(vfs, encoding="unicode")


def metadata_element(requests: Sequence[Request]) -> str:
    """The request element as virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT) takes it: with
    no namespace. libvirt 11.3 puts the element into `uri` itself (the key as prefix) and
    refuses one that declares a namespace already; getMetadata hands it back the same way."""
    root = etree.fromstring(requests_xml(requests))
    _requalify(root, "")
    return etree.tostring(root, encoding="unicode")


def read_requests_xml(text: str, domain: str = "?") -> tuple[Request, ...]:
    """Inverse of requests_xml and metadata_element: the element in vfalloc's namespace, or
    without a namespace as virDomainGetMetadata returns it."""
    root = _parse(text, domain).getroot()
    if root.tag == "vfs":
        _requalify(root, _Q)
    if root.tag != _Q + "vfs":
        problem = f"metadata element is <{root.tag!s}>, not <vfs> in {NS}"
        raise DomainXMLError(domain, problem, "store a <vfalloc:vfs>")
    return _requests_from(root, domain)


def _requalify(root: etree._Element, prefix: str) -> None:
    """Move every element of the tree into the namespace `prefix` ("{uri}" or "" for none)."""
    for el in root.iter(etree.Element):
        el.tag = prefix + etree.QName(el).localname
    etree.cleanup_namespaces(root)


def _parse(xml: bytes | str, domain: str = "?") -> etree._ElementTree:
    data = _to_bytes(xml, domain)
    doctype = DomainXMLError(domain, "XML has a DOCTYPE (entity or DTD declarations)", "remove it")
    if any(mark in data for mark in _DOCTYPE_MARKS):
        raise doctype
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
        remove_blank_text=False, encoding="utf-8" if isinstance(xml, str) else None,
    )
    try:
        tree = etree.fromstring(data, parser).getroottree()
    except (etree.LxmlError, ValueError) as err:
        detail = (str(err).splitlines() or [type(err).__name__])[0]
        raise DomainXMLError(domain, f"not well-formed XML ({detail})", "fix the XML") from None
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise doctype
    return tree


def _to_bytes(xml: bytes | str, domain: str) -> bytes:
    if isinstance(xml, str) and len(xml) <= MAX_XML_BYTES:
        xml = xml.encode("utf-8", "surrogatepass")  # a lone surrogate then fails the parse
    if len(xml) > MAX_XML_BYTES:
        problem = f"XML is larger than {MAX_XML_BYTES} bytes"
        raise DomainXMLError(domain, problem, "pass a domain XML")
    return bytes(xml)  # type: ignore[arg-type]  # str was encoded above


def _domain_element(tree: etree._ElementTree) -> etree._Element:
    root = tree.getroot()
    # /run/libvirt/qemu/NAME.xml of a running domain is <domstatus> with the live <domain> inside
    if root.tag == "domstatus":
        root = root.find("domain")  # type: ignore[assignment]  # None is refused below
        if root is None:
            raise DomainXMLError("?", "<domstatus> holds no <domain>", "pass a whole status file")
    if root.tag != "domain":
        raise DomainXMLError("?", f"root is <{shown(str(root.tag))}>, not <domain>", "pass a domain XML")
    return root


def _name(dom: etree._Element) -> str:
    name = (dom.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("?", "no <name>", "add <name>NAME</name> to the domain")
    if not name.isprintable():
        # libvirt refuses a newline in a name (virDomainDefParseXML); vfalloc refuses every
        # character that would break a line of its log or a row of `vfalloc list`
        raise DomainXMLError(repr(name), "<name> holds a newline or a control character",
                             "rename the domain with printable characters")
    return name


def _uuid(dom: etree._Element, name: str) -> str:
    text = (dom.findtext("uuid") or "").strip()
    # virUUIDParse takes the 32 hex digits with or without dashes; libvirt prints 8-4-4-4-12
    digits = text.replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", digits):
        problem = f"<uuid> {shown(repr(text))} is missing or not a UUID"
        raise DomainXMLError(name, problem, "write 8-4-4-4-12 hex digits")
    return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def _metadata_requests(dom: etree._Element, name: str) -> tuple[Request, ...]:
    # One child of <metadata> per application namespace: the metadata API finds only the
    # first (virXMLFindChildNodeByNs), so a second one in ours would be silently ignored.
    ours = [el for el in dom.iterfind("metadata/*") if str(el.tag).startswith(_Q)]
    if not ours:
        return ()
    if len(ours) > 1 or ours[0].tag != _Q + "vfs":
        problem = f"<metadata> has {len(ours)} element(s) in {NS}"
        raise DomainXMLError(name, problem, "keep one <vfalloc:vfs>")
    return _requests_from(ours[0], name)


def _requests_from(vfs: etree._Element, domain: str) -> tuple[Request, ...]:
    # `start` is the stamp of `vfalloc start` in the live XML it starts (add_devices)
    if set(vfs.attrib) - {"start"}:
        raise DomainXMLError(domain, "<vfalloc:vfs> has attributes", "put them on <vfalloc:vf>")
    out: list[Request] = []
    for child in vfs.iterchildren(tag=etree.Element):
        if child.tag != _Q + "vf":
            problem = f"<vfalloc:vfs> holds <{shown(str(child.tag))}>"
            raise DomainXMLError(domain, problem, "use only <vfalloc:vf/>")
        out.append(_request(child, len(out), domain))
    return tuple(out)


def _request(vf: etree._Element, index: int, domain: str) -> Request:
    where, attrs = f"vfalloc request {index}", dict(vf.attrib)
    unknown = sorted(set(attrs) - set(_VF_ATTRS))
    if unknown or len(vf):
        what = f"unknown attribute {shown(unknown[0])}" if unknown else "child elements"
        raise DomainXMLError(domain, f"{where} has {what}", f"use only {', '.join(_VF_ATTRS)}")
    required, vlan = attrs.get("required", "no"), attrs.get("vlan")
    if required not in _YES_NO:
        raise DomainXMLError(domain, f"{where}: required={shown(repr(required))} is not valid", "use yes/no")
    if vlan is not None and not (vlan.isascii() and vlan.isdigit()):
        raise DomainXMLError(domain, f"{where}: vlan={shown(repr(vlan))} is not a number", "use 1 to 4094")
    try:
        req = Request(
            pool=attrs.get("pool", ""), index=index, mac=attrs.get("mac"),
            vlan=None if vlan is None else parse_vlan(vlan),
            trust=attrs.get("trust"), spoofchk=attrs.get("spoofchk"),
            type=attrs.get("type", "interface"), required=_YES_NO[required],
        )
    except UsageError as err:
        problem, _, fix = str(err).partition("; ")
        raise DomainXMLError(domain, f"{where}: {problem}", fix) from None
    _check_expressible(req, domain)
    return req


def _check_expressible(req: Request, domain: str) -> None:
    # libvirt sets a VF's MAC and VLAN only for <interface type='hostdev'>; a plain <hostdev>
    # has neither element, so such a request could not be honoured.
    for key in ("mac", "vlan"):
        if req.type == "hostdev" and getattr(req, key) is not None:
            problem = f"vfalloc request {req.index}: {key} needs type interface"
            raise DomainXMLError(domain, problem, f"drop {key}= or use type=\"interface\"")


def _request_attrs(req: Request) -> dict[str, str]:
    values = {k: getattr(req, k) for k in ("pool", "mac", "vlan", "trust", "spoofchk")}
    values |= {"type": None if req.type == "interface" else req.type}
    values |= {"required": "yes" if req.required else None}
    return {k: str(v) for k, v in values.items() if v is not None}


def _device_map(dom: etree._Element, domain: str) -> dict[int, etree._Element]:
    """N -> the child of <devices> whose <alias name> is ua-vfalloc-N."""
    found: dict[int, etree._Element] = {}
    for el in dom.iterfind("devices/*"):
        alias = el.find("alias")
        name = alias.get("name", "") if alias is not None else ""
        match = re.fullmatch(_ALIAS_RE, name)
        if name.startswith(ALIAS_PREFIX) and not match:
            raise DomainXMLError(domain, f"alias {shown(repr(name))} lacks an index", "use ua-vfalloc-N")
        if match and int(match[1]) in found:  # libvirt refuses duplicate aliases too
            raise DomainXMLError(domain, f"two devices carry alias {name}", "remove one of them")
        if match:
            found[int(match[1])] = el
    return found


def _vf_device(el: etree._Element, index: int, domain: str) -> VfDevice:
    what = f"device {ALIAS_PREFIX}{index}"
    if el.tag == "interface" and el.get("type") == "hostdev":
        mac_el = el.find("mac")
        mac = mac_el.get("address") if mac_el is not None else None
        return VfDevice(index, _source(el, what, domain), "interface", mac.lower() if mac else None)
    # <hostdev> mode defaults to 'subsystem'; type='pci' names a PCI device by host address
    mode = el.get("mode", "subsystem")
    if el.tag == "hostdev" and mode == "subsystem" and el.get("type") == "pci":
        return VfDevice(index, _source(el, what, domain), "hostdev", None)
    problem = f"{what} is <{shown(str(el.tag))} type={shown(repr(el.get('type')))}>, not a PCI VF"
    raise DomainXMLError(domain, problem, "use <interface type='hostdev'> or <hostdev type='pci'>")


def _source(el: etree._Element, what: str, domain: str) -> PciAddress:
    # virPCIDeviceAddressParseXML: every attribute optional, default 0; domain, bus and slot
    # all 0 means "no address".
    addr = el.find("source/address")
    if addr is None or addr.get("type", "pci") != "pci":
        raise DomainXMLError(domain, f"{what} has no PCI <source><address>", _ADDRESS_FIX)
    values = {}
    for key, limit in _PCI_LIMITS.items():
        match = re.fullmatch(_C_UINT, addr.get(key, "0"))
        values[key] = int(match[1], _c_base(match[1])) if match else limit + 1
        if values[key] > limit:
            problem = f"{what}: {key}={shown(repr(addr.get(key)))} is not valid"
            raise DomainXMLError(domain, problem, _ADDRESS_FIX)
    if not (values["domain"] or values["bus"] or values["slot"]):
        raise DomainXMLError(domain, f"{what} has an empty PCI source address", _ADDRESS_FIX)
    return PciAddress(**values)


def _c_base(digits: str) -> int:
    return 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10


def _union(dom: etree._Element, paths: Iterable[str], attr: str, domain: str) -> frozenset[int]:
    bits = 0  # an int as bit set: cost stays linear in the input, whatever the ranges
    for path in paths:
        for el in dom.iterfind(f"{path}[@{attr}]"):
            bits |= _bitmap(el.get(attr, ""), f"<{el.tag!s} {attr}>", domain)
    return frozenset(i for i, bit in enumerate(reversed(bin(bits))) if bit == "1")


def _bitmap(text: str, what: str, domain: str) -> int:
    """virBitmapParse: items 'N', 'N-M', '^N', comma-separated, applied left to right ('^N'
    clears N only if already set; no '^N-M'); one trailing comma is accepted."""
    items = text.split(",")
    if len(items) > 1 and not items[-1].strip():
        items.pop()
    bits = 0
    for item in items:
        m = re.fullmatch(_BITMAP_ITEM, item)
        first, last = (int(m[2]), int(m[3] or m[2])) if m else (0, -1)
        if not m or (m[1] and m[3]) or not first <= last < _MAX_BITS:
            raise DomainXMLError(domain, f"{what}={shown(repr(text))} is not valid", "write it like 0-3,^2,8")
        if m[1]:
            bits &= ~(1 << first)
        else:
            bits |= ((1 << (last + 1 - first)) - 1) << first
    return bits


def _device_element(
    request: Request, address: PciAddress, mac: str | None, domain: str
) -> etree._Element:
    _check_expressible(request, domain)
    if request.type == "hostdev":
        # managed='yes': libvirt binds the VF to vfio-pci at start and gives it back at stop
        el = etree.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "yes"})
    else:
        # <interface type='hostdev'>: libvirt also sets the VF's MAC and VLAN through the PF
        el = etree.Element("interface", {"type": "hostdev", "managed": "yes"})
        if mac is not None:
            etree.SubElement(el, "mac", {"address": normalize_mac(mac)})
    attrs = {"type": "pci"} | {k: f.format(getattr(address, k)) for k, f in _PCI_FORMAT.items()}
    etree.SubElement(etree.SubElement(el, "source"), "address", attrs)
    if request.type == "interface" and request.vlan is not None:
        # a single <tag>, no trunk: a VF takes one port VLAN set through the PF
        etree.SubElement(etree.SubElement(el, "vlan"), "tag", {"id": str(request.vlan)})
    # user-defined aliases must start with "ua-"; libvirt keeps them in live and saved XML
    etree.SubElement(el, "alias", {"name": f"{ALIAS_PREFIX}{request.index}"})
    return el


def _pretty(text: str | None) -> bool:
    return text is not None and "\n" in text and not text.strip()


def _append(parent: etree._Element, child: etree._Element) -> etree._Element:
    """Append `child`, following the parent's indentation when it is pretty-printed."""
    last = parent[-1] if len(parent) else None
    if last is not None and _pretty(parent.text) and _pretty(last.tail):
        etree.indent(child, space="  ", level=sum(1 for _ in parent.iterancestors()) + 1)
        child.tail, last.tail = last.tail, parent.text
    parent.append(child)
    return child


def _replace(old: etree._Element, new: etree._Element) -> None:
    if _pretty(old.tail):
        etree.indent(new, space="  ", level=sum(1 for _ in old.iterancestors()))
    new.tail = old.tail
    old.getparent().replace(old, new)  # type: ignore[union-attr]  # a device always has its <devices>


def _serialize(tree: etree._ElementTree) -> bytes:
    return etree.tostring(tree, encoding="UTF-8", xml_declaration=False)
