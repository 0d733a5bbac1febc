"""domxml: requests from <metadata>, ua-vfalloc devices, pinning, rendering, adding, swapping,
and a parser that refuses bombs, external entities and oversized input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from vfalloc import domxml
from vfalloc.domxml import (
    ALIAS_PREFIX,
    NS,
    DomainInfo,
    VfDevice,
    add_devices,
    mentions_vfalloc,
    read_domain,
    read_requests_xml,
    render_device,
    requests_xml,
    swap_sources,
)
from vfalloc.errors import DomainXMLError, UsageError
from vfalloc.model import PciAddress, Request

UUID = "3E3FCE45-4F53-4FA7-BB32-11F34168B82B"
A = PciAddress(0, 1, 0x10, 0)
B = PciAddress(0, 0x81, 0x02, 3)

# A domain as `virsh dumpxml` prints it with libvirt 11.3 (trimmed), with a vfalloc request,
# another application's metadata, pinning, an unrelated NIC and two vfalloc devices.
DOMAIN = f"""<domain type='kvm'>
  <name>vm1</name>
  <uuid>{UUID}</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
    <vfalloc:vfs xmlns:vfalloc="urn:vfalloc:1">
      <vfalloc:vf pool="lan0"/>
      <!-- the storage network -->
      <vfalloc:vf pool="san" mac="52:54:00:AA:BB:CC" vlan="20" trust="on" spoofchk="off" required="yes"/>
      <vfalloc:vf pool="qat" type="hostdev"/>
    </vfalloc:vfs>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static' cpuset='0-3,^2,8'>4</vcpu>
  <cputune>
    <vcpupin vcpu='0' cpuset='10'/>
    <vcpupin vcpu='1' cpuset='12-13'/>
  </cputune>
  <numatune>
    <memory mode='strict' nodeset='0'/>
    <memnode cellid='0' mode='strict' nodeset='1-2'/>
  </numatune>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'>
      <mac address='52:54:00:11:22:33'/>
      <source network='default'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:0A:0B:0C'/>
      <source>
        <address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='0x0'/>
      </source>
      <alias name='ua-vfalloc-0'/>
      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
    </interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x3d' slot='0x01' function='0x2'/>
      </source>
      <alias name='ua-vfalloc-2'/>
      <address type='pci' domain='0x0000' bus='0x08' slot='0x00' function='0x0'/>
    </hostdev>
  </devices>
</domain>
"""

EXPECTED_REQUESTS = (
    Request("lan0", 0),
    Request("san", 1, mac="52:54:00:aa:bb:cc", vlan=20, trust="on", spoofchk="off", required=True),
    Request("qat", 2, type="hostdev"),
)
EXPECTED_DEVICES = (
    VfDevice(0, A, "interface", "52:54:00:0a:0b:0c"),
    VfDevice(2, PciAddress(0, 0x3D, 1, 2), "hostdev", None),
)


def c14n(xml: bytes | str) -> bytes:
    """Canonical form: equal iff the documents are the same, whitespace included."""
    if isinstance(xml, str):
        xml = xml.encode()
    return etree.tostring(etree.fromstring(xml), method="c14n")


def shape(xml: bytes | str) -> bytes:
    """Canonical form without indentation: equal iff the same elements, attributes and text."""
    if isinstance(xml, str):
        xml = xml.encode()
    parser = etree.XMLParser(remove_blank_text=True)
    return etree.tostring(etree.fromstring(xml, parser), method="c14n")


def domain(devices: str = "", metadata: str = "", head: str = "", name: str = "vm1") -> str:
    """A minimal domain XML with the given pieces."""
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{UUID}</uuid>{meta}{head}"
        f"<devices>{devices}</devices></domain>"
    )


def vfs(*vf_attrs: str) -> str:
    body = "".join(f"<vfalloc:vf {attrs}/>" for attrs in vf_attrs)
    return f'<vfalloc:vfs xmlns:vfalloc="{NS}">{body}</vfalloc:vfs>'


def err_of(call, *args) -> str:
    with pytest.raises(DomainXMLError) as info:
        call(*args)
    text = str(info.value)
    assert "\n" not in text, "errors are one line"
    return text


# --- mentions_vfalloc -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xml, expected",
    [
        pytest.param(DOMAIN.encode(), True, id="full-domain"),
        pytest.param(domain(metadata=vfs('pool="a"')).encode(), True, id="namespace-only"),
        pytest.param(b"<alias name='ua-vfalloc-3'/>", True, id="alias-only"),
        pytest.param(domain().encode(), False, id="plain-domain"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b"urn:vfalloc:2 ua-vfalloc", False, id="near-misses"),
        # the same names, written so that their bytes do not show: parsed, then seen
        pytest.param(domain(metadata=vfs('pool="a"')).replace("urn:", "&#117;rn:").encode(), True,
                     id="character-reference"),
        pytest.param(b"<alias name='&#x75;a-vfalloc-3'/>", True, id="alias-hex-reference"),
        pytest.param(domain(metadata=vfs('pool="a"')).encode("utf-16"), True, id="utf-16"),
        pytest.param(domain(metadata=vfs('pool="a"')).encode("utf-32-be"), True, id="utf-32-be"),
        pytest.param(("<?xml version='1.0' encoding='IBM037'?>" + domain(metadata=vfs('pool="a"'))).encode("cp037"),
                     True, id="ebcdic"),
        pytest.param(domain().replace("<domain", "<domain id='&#49;'").encode(), False, id="reference-no-mention"),
        pytest.param(domain().encode("utf-16"), False, id="utf-16-no-mention"),
        pytest.param(("<?xml version='1.0' encoding='ISO-8859-1'?>" + domain()).encode("latin-1"), False,
                     id="latin-1-no-mention"),
    ],
)
def test_mentions_vfalloc(xml, expected):
    assert mentions_vfalloc(xml) is expected


# --- read_domain ------------------------------------------------------------------------------


def test_read_full_domain():
    info = read_domain(DOMAIN.encode())
    assert info == DomainInfo(
        name="vm1",
        uuid=UUID.lower(),
        requests=EXPECTED_REQUESTS,
        devices=EXPECTED_DEVICES,
        nodeset=frozenset({0, 1, 2}),
        cpuset=frozenset({0, 1, 3, 8, 10, 12, 13}),
    )


def test_read_domain_accepts_str_with_encoding_declaration():
    text = "<?xml version='1.0' encoding='ISO-8859-1'?>" + domain(name="café")
    assert read_domain(text).name == "café"
    assert read_domain(text.replace("ISO-8859-1", "UTF-8").encode()).name == "café"


def test_read_domain_without_requests_or_devices():
    info = read_domain(domain())
    assert (info.requests, info.devices, info.nodeset, info.cpuset) == ((), (), frozenset(), frozenset())


@pytest.mark.parametrize(
    "uuid, expected",
    [
        pytest.param(UUID, UUID.lower(), id="upper-case"),
        pytest.param(UUID.replace("-", ""), UUID.lower(), id="no-dashes"),
        pytest.param(f"  {UUID.lower()}\n", UUID.lower(), id="blanks"),
    ],
)
def test_uuid_normalized(uuid, expected):
    xml = domain().replace(f"<uuid>{UUID}</uuid>", f"<uuid>{uuid}</uuid>")
    assert read_domain(xml).uuid == expected


DOMSTATUS = f"""<domstatus state='running' reason='booted' pid='4242'>
  <taint flag='high-privileges'/>
  <monitor path='/var/lib/libvirt/qemu/domain-1-vm1/monitor.sock' type='unix'/>
  <vcpus>
    <vcpu id='0' pid='4250'/>
  </vcpus>
  {DOMAIN.replace("<domain type='kvm'>", "<domain type='kvm' id='1'>")}
</domstatus>
"""


def test_read_domstatus_wrapper():
    assert read_domain(DOMSTATUS) == read_domain(DOMAIN)


@pytest.mark.parametrize(
    "head, nodeset, cpuset",
    [
        pytest.param("<vcpu cpuset='0-3,^2,8'>4</vcpu>", set(), {0, 1, 3, 8}, id="exclusion"),
        pytest.param("<vcpu cpuset='^2,0-3'>4</vcpu>", set(), {0, 1, 2, 3}, id="exclusion-first-is-noop"),
        pytest.param("<vcpu cpuset='0-5,^1,^4'>2</vcpu>", set(), {0, 2, 3, 5}, id="two-exclusions"),
        pytest.param("<vcpu cpuset=' 1 - 2 , 7 '>2</vcpu>", set(), {1, 2, 7}, id="blanks"),
        pytest.param("<vcpu cpuset='4,'>1</vcpu>", set(), {4}, id="trailing-comma"),
        pytest.param("<vcpu cpuset='3-3'>1</vcpu>", set(), {3}, id="one-cpu-range"),
        pytest.param("<vcpu>2</vcpu>", set(), set(), id="no-cpuset"),
        pytest.param(
            "<vcpu cpuset='0-1'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='4-6,^5'/>"
            "<vcpupin vcpu='1' cpuset='9'/><emulatorpin cpuset='30'/></cputune>",
            set(), {0, 1, 4, 6, 9}, id="vcpu-and-vcpupin-union",
        ),
        pytest.param(
            "<numatune><memory mode='strict' nodeset='0-3,^1'/></numatune>",
            {0, 2, 3}, set(), id="memory-nodeset",
        ),
        pytest.param(
            "<numatune><memory mode='interleave' nodeset='0'/><memnode cellid='0' "
            "mode='strict' nodeset='2'/><memnode cellid='1' mode='strict' nodeset='3-4'/></numatune>",
            {0, 2, 3, 4}, set(), id="memory-and-memnode-union",
        ),
        pytest.param(
            "<numatune><memory mode='strict' placement='auto'/></numatune>",
            set(), set(), id="placement-auto",
        ),
        pytest.param("<vcpu cpuset='16383'>1</vcpu>", set(), {16383}, id="highest-cpu"),
    ],
)
def test_pinning(head, nodeset, cpuset):
    info = read_domain(domain(head=head))
    assert (info.nodeset, info.cpuset) == (frozenset(nodeset), frozenset(cpuset))


@pytest.mark.parametrize(
    "head",
    [
        pytest.param("<vcpu cpuset=''>1</vcpu>", id="empty"),
        pytest.param("<vcpu cpuset='a'>1</vcpu>", id="letters"),
        pytest.param("<vcpu cpuset='3-1'>1</vcpu>", id="backwards-range"),
        pytest.param("<vcpu cpuset='^1-3'>1</vcpu>", id="excluded-range"),
        pytest.param("<vcpu cpuset='0,,1'>1</vcpu>", id="empty-item"),
        pytest.param("<vcpu cpuset=','>1</vcpu>", id="only-comma"),
        pytest.param("<vcpu cpuset='-1'>1</vcpu>", id="negative"),
        pytest.param("<vcpu cpuset='0-16384'>1</vcpu>", id="beyond-libvirt-max"),
        pytest.param("<vcpu cpuset='0-99999999999'>1</vcpu>", id="huge"),
        pytest.param("<cputune><vcpupin vcpu='0' cpuset='x'/></cputune>", id="vcpupin"),
        pytest.param("<numatune><memory nodeset='0-'/></numatune>", id="memory-open-range"),
        pytest.param("<numatune><memnode cellid='0' nodeset='^'/></numatune>", id="memnode"),
    ],
)
def test_bad_pinning(head):
    text = err_of(read_domain, domain(head=head))
    assert "vm1" in text and "0-3,^2,8" in text


@pytest.mark.parametrize(
    "xml, needle",
    [
        pytest.param(domain().replace("<name>vm1</name>", ""), "no <name>", id="no-name"),
        pytest.param(domain().replace("<name>vm1</name>", "<name> </name>"), "no <name>", id="blank-name"),
        pytest.param(domain().replace(f"<uuid>{UUID}</uuid>", ""), "<uuid>", id="no-uuid"),
        pytest.param(domain().replace(UUID, "not-a-uuid"), "not-a-uuid", id="bad-uuid"),
        pytest.param(domain().replace(UUID, UUID[:-1]), "not a UUID", id="short-uuid"),
        pytest.param("<network><name>x</name></network>", "<network>", id="wrong-root"),
        pytest.param("<domstatus state='running'/>", "<domstatus>", id="domstatus-without-domain"),
    ],
)
def test_missing_identity(xml, needle):
    assert needle in err_of(read_domain, xml)


# --- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs, expected",
    [
        pytest.param(['pool="lan0"'], [Request("lan0", 0)], id="pool-only"),
        pytest.param(
            ['pool="a"', 'pool="b" mac="52:54:00:AA:BB:CC" vlan="4094" trust="off" spoofchk="on"'],
            [Request("a", 0), Request("b", 1, mac="52:54:00:aa:bb:cc", vlan=4094, trust="off",
                                      spoofchk="on")],
            id="all-interface-values",
        ),
        pytest.param(['pool="x" vlan="1" required="no"'], [Request("x", 0, vlan=1)], id="vlan-1"),
        pytest.param(['pool="x" vlan="0020"'], [Request("x", 0, vlan=20)], id="vlan-leading-zero"),
        pytest.param(
            ['pool="q" type="hostdev" trust="on" required="yes"'],
            [Request("q", 0, type="hostdev", trust="on", required=True)],
            id="hostdev-trust",
        ),
        pytest.param(['pool="x" type="interface"'], [Request("x", 0)], id="explicit-interface"),
        pytest.param([], [], id="empty-vfs"),
    ],
)
def test_good_requests(attrs, expected):
    assert read_domain(domain(metadata=vfs(*attrs))).requests == tuple(expected)


@pytest.mark.parametrize(
    "attrs, needles",
    [
        pytest.param('pool="p" mac="zz"', ["mac='zz'", "52:54:00:12:34:56"], id="bad-mac"),
        pytest.param('pool="p" mac="52:54:00:aa:bb"', ["mac="], id="short-mac"),
        pytest.param('pool="p" mac="01:00:5e:00:00:01"', ["multicast"], id="multicast-mac"),
        pytest.param('pool="p" mac="00:00:00:00:00:00"', ["mac=00:00:00:00:00:00"], id="zero-mac"),
        pytest.param('pool="p" vlan="0"', ["vlan=0", "4094"], id="vlan-0"),
        pytest.param('pool="p" vlan="4095"', ["vlan=4095", "4094"], id="vlan-4095"),
        pytest.param('pool="p" vlan="abc"', ["vlan='abc'", "4094"], id="vlan-abc"),
        pytest.param('pool="p" vlan=""', ["vlan=''"], id="vlan-empty"),
        pytest.param('pool="p" vlan="-5"', ["vlan='-5'"], id="vlan-negative"),
        pytest.param('pool="p" vlan="2_0"', ["vlan='2_0'"], id="vlan-underscore"),
        pytest.param('pool="p" vlan=" 20"', ["vlan=' 20'"], id="vlan-blank"),
        pytest.param('pool="p" vlan="\u0662\u0660"', ["vlan="], id="vlan-arabic-digits"),
        pytest.param('pool="p" trust="maybe"', ["trust='maybe'", "on or off"], id="trust-maybe"),
        pytest.param('pool="p" spoofchk="yes"', ["spoofchk='yes'", "on or off"], id="spoofchk-yes"),
        pytest.param('pool="p" type="foo"', ["type='foo'", "interface or hostdev"], id="type-foo"),
        pytest.param('pool="p" required="maybe"', ["required='maybe'", "yes"], id="required-maybe"),
        pytest.param('pool="p" required="true"', ["required='true'"], id="required-true"),
        pytest.param('pool="p" color="red"', ["unknown attribute color", "pool"], id="unknown-attr"),
        pytest.param('pool="p" vfalloc:index="1"', ["unknown attribute {urn:vfalloc:1}index"],
                     id="namespaced-attr"),
        pytest.param('mac="52:54:00:aa:bb:cc"', ["pool name", 'pool="NAME"'], id="missing-pool"),
        pytest.param('pool=""', ["pool name"], id="empty-pool"),
        pytest.param('pool="p" type="hostdev" mac="52:54:00:aa:bb:cc"', ["mac needs type interface"],
                     id="hostdev-mac"),
        pytest.param('pool="p" type="hostdev" vlan="5"', ["vlan needs type interface"], id="hostdev-vlan"),
    ],
)
def test_bad_request(attrs, needles):
    xml = domain(metadata=vfs('pool="ok"', attrs), name="web7")
    text = err_of(read_domain, xml)
    assert text.startswith("domain XML of web7: vfalloc request 1")
    for needle in needles:
        assert needle in text


@pytest.mark.parametrize(
    "metadata, needle",
    [
        pytest.param(vfs('pool="a"') + vfs('pool="b"'), "2 element(s)", id="two-vfs"),
        pytest.param(f'<v:other xmlns:v="{NS}"/>', "1 element(s)", id="other-element-in-ns"),
        pytest.param(f'<v:vfs xmlns:v="{NS}"><v:pool name="a"/></v:vfs>', "holds <{urn:vfalloc:1}pool>",
                     id="unknown-child"),
        pytest.param(f'<v:vfs xmlns:v="{NS}"><vf pool="a"/></v:vfs>', "holds <vf>", id="child-not-in-ns"),
        pytest.param(f'<v:vfs xmlns:v="{NS}" x="1"><v:vf pool="a"/></v:vfs>', "has attributes",
                     id="attribute-on-vfs"),
        pytest.param(f'<v:vfs xmlns:v="{NS}"><v:vf pool="a"><v:x/></v:vf></v:vfs>', "child elements",
                     id="child-of-vf"),
    ],
)
def test_bad_request_structure(metadata, needle):
    assert needle in err_of(read_domain, domain(metadata=metadata))


def test_other_prefixes_and_default_namespace_are_the_same_requests():
    for metadata in (f'<x:vfs xmlns:x="{NS}"><x:vf pool="a"/></x:vfs>',
                     f'<vfs xmlns="{NS}"><vf pool="a"/></vfs>'):
        assert read_domain(domain(metadata=metadata)).requests == (Request("a", 0),)


def test_vfs_outside_our_namespace_is_ignored():
    metadata = '<vfs xmlns="urn:vfalloc:2"><vf pool="a"/></vfs><vfs><vf pool="b"/></vfs>'
    assert read_domain(domain(metadata=metadata)).requests == ()


# --- requests_xml / read_requests_xml ---------------------------------------------------------


@pytest.mark.parametrize(
    "requests, expected",
    [
        pytest.param([], f'<vfalloc:vfs xmlns:vfalloc="{NS}"/>', id="none"),
        pytest.param([Request("lan0")], f'<vfalloc:vfs xmlns:vfalloc="{NS}"><vfalloc:vf pool="lan0"/></vfalloc:vfs>',
                     id="defaults-omitted"),
        pytest.param(
            list(EXPECTED_REQUESTS),
            f'<vfalloc:vfs xmlns:vfalloc="{NS}"><vfalloc:vf pool="lan0"/>'
            '<vfalloc:vf pool="san" mac="52:54:00:aa:bb:cc" vlan="20" trust="on" spoofchk="off" required="yes"/>'
            '<vfalloc:vf pool="qat" type="hostdev"/></vfalloc:vfs>',
            id="all-values",
        ),
    ],
)
def test_requests_xml(requests, expected):
    text = requests_xml(requests)
    assert text == expected
    assert read_requests_xml(text) == tuple(requests)
    assert read_domain(domain(metadata=text)).requests == tuple(requests)


def test_read_requests_xml_as_libvirt_returns_it():
    # virDomainGetMetadata returns the element with its namespace declaration, pretty-printed
    text = f'<vfalloc:vfs xmlns:vfalloc="{NS}">\n  <vfalloc:vf pool="lan0"/>\n</vfalloc:vfs>\n'
    assert read_requests_xml(text, "vm1") == (Request("lan0", 0),)


@pytest.mark.parametrize(
    "requests, needle",
    [
        pytest.param([Request("a", 1)], "request 1 is at position 0", id="index-mismatch"),
        pytest.param([Request("a", 0, type="hostdev", vlan=3)], "vlan needs type interface", id="hostdev-vlan"),
        pytest.param([Request("a\x00b", 0)], "cannot be written in XML", id="nul-in-pool"),
    ],
)
def test_requests_xml_refuses(requests, needle):
    assert needle in err_of(requests_xml, requests)


@pytest.mark.parametrize(
    "text, needle",
    [
        pytest.param('<o:vfs xmlns:o="urn:other"/>', "not <vfs> in urn:vfalloc:1", id="other-namespace"),
        pytest.param('<v:vf xmlns:v="urn:vfalloc:1" pool="a"/>', "not <vfs>", id="wrong-root"),
        pytest.param("", "not well-formed", id="empty"),
        pytest.param("<vfalloc:vfs>", "not well-formed", id="unbound-prefix"),
        pytest.param(f'<v:vfs xmlns:v="{NS}"><v:vf pool="a" vlan="9999"/></v:vfs>', "vlan=9999",
                     id="bad-value"),
    ],
)
def test_read_requests_xml_refuses(text, needle):
    text = err_of(read_requests_xml, text, "vm9")
    assert text.startswith("domain XML of vm9:") and needle in text


# --- devices in the domain --------------------------------------------------------------------


def iface(alias: str, source: str = "<address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='0x0'/>",
          mac: str = "") -> str:
    mac_el = f"<mac address='{mac}'/>" if mac else ""
    return f"<interface type='hostdev' managed='yes'>{mac_el}<source>{source}</source><alias name='{alias}'/></interface>"


@pytest.mark.parametrize(
    "source, expected",
    [
        pytest.param("<address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='0x0'/>", A, id="hex"),
        pytest.param("<address bus='1' slot='16' function='0'/>", A, id="decimal-no-domain-no-type"),
        pytest.param("<address type='pci' domain='0' bus='01' slot='020' function='0'/>", A, id="octal"),
        pytest.param("<address domain='0x10000' bus='0xff' slot='0x1f' function='7'/>",
                     PciAddress(0x10000, 0xFF, 0x1F, 7), id="limits"),
        pytest.param("<address domain=' 0x0001' bus='0x00' slot='0x00' function='0x0'/>",
                     PciAddress(1, 0, 0, 0), id="leading-blank"),
    ],
)
def test_device_source_forms(source, expected):
    info = read_domain(domain(devices=iface("ua-vfalloc-0", source)))
    assert info.devices == (VfDevice(0, expected, "interface", None),)


@pytest.mark.parametrize(
    "devices, needle",
    [
        pytest.param(iface("ua-vfalloc-0", source=""), "no PCI <source><address>", id="no-address"),
        pytest.param("<interface type='hostdev'><alias name='ua-vfalloc-0'/></interface>",
                     "no PCI <source><address>", id="no-source"),
        pytest.param(iface("ua-vfalloc-0", "<address type='usb' bus='1' port='2'/>"), "no PCI", id="usb"),
        pytest.param(iface("ua-vfalloc-0", "<address bus='0x100' slot='0' function='0'/>"), "bus='0x100'",
                     id="bus-too-big"),
        pytest.param(iface("ua-vfalloc-0", "<address bus='1' slot='0x20' function='0'/>"), "slot='0x20'",
                     id="slot-too-big"),
        pytest.param(iface("ua-vfalloc-0", "<address bus='1' slot='1' function='8'/>"), "function='8'",
                     id="function-too-big"),
        pytest.param(iface("ua-vfalloc-0", "<address bus='1' slot='09' function='0'/>"), "slot='09'",
                     id="bad-octal"),
        pytest.param(iface("ua-vfalloc-0", "<address bus='x' slot='1' function='0'/>"), "bus='x'", id="letters"),
        pytest.param(iface("ua-vfalloc-0", "<address bus='-1' slot='1' function='0'/>"), "bus='-1'",
                     id="negative"),
        pytest.param(iface("ua-vfalloc-0", "<address domain='0' bus='0' slot='0' function='1'/>"),
                     "empty PCI source", id="empty-address"),
        pytest.param(iface("ua-vfalloc-x"), "'ua-vfalloc-x' lacks an index", id="alias-without-index"),
        pytest.param(iface("ua-vfalloc-1") + iface("ua-vfalloc-1"), "two devices carry alias ua-vfalloc-1",
                     id="duplicate-alias"),
        pytest.param("<interface type='network'><source network='default'/><alias name='ua-vfalloc-0'/>"
                     "</interface>", "not a PCI VF", id="network-interface"),
        pytest.param("<hostdev mode='subsystem' type='usb'><alias name='ua-vfalloc-0'/></hostdev>",
                     "not a PCI VF", id="usb-hostdev"),
        pytest.param("<disk type='file'><alias name='ua-vfalloc-0'/></disk>", "not a PCI VF", id="disk"),
    ],
)
def test_bad_device(devices, needle):
    text = err_of(read_domain, domain(devices=devices))
    assert text.startswith("domain XML of vm1:") and needle in text


def test_foreign_aliases_are_ignored():
    devices = iface("ua-other-0") + iface("hostdev0") + "<disk type='file'><alias name='ua-vfalloc'/></disk>"
    assert read_domain(domain(devices=devices)).devices == ()


# --- render_device ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_, address, mac, expected",
    [
        pytest.param(
            Request("san", 1, vlan=20), A, "52:54:00:AA:BB:CC",
            "<interface type='hostdev' managed='yes'><mac address='52:54:00:aa:bb:cc'/><source>"
            "<address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='0x0'/></source>"
            "<vlan><tag id='20'/></vlan><alias name='ua-vfalloc-1'/></interface>",
            id="interface-mac-vlan",
        ),
        pytest.param(
            Request("lan0", 0), B, None,
            "<interface type='hostdev' managed='yes'><source>"
            "<address type='pci' domain='0x0000' bus='0x81' slot='0x02' function='0x3'/></source>"
            "<alias name='ua-vfalloc-0'/></interface>",
            id="interface-plain",
        ),
        pytest.param(
            Request("qat", 2, type="hostdev", trust="on"), PciAddress(0x10000, 0x3D, 1, 2), "52:54:00:00:00:01",
            "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
            "<address type='pci' domain='0x10000' bus='0x3d' slot='0x01' function='0x2'/></source>"
            "<alias name='ua-vfalloc-2'/></hostdev>",
            id="hostdev-ignores-mac",
        ),
    ],
)
def test_render_device(request_, address, mac, expected):
    text = render_device(request_, address, mac)
    assert shape(text) == shape(expected)
    assert text.startswith(f"<{'hostdev' if request_.type == 'hostdev' else 'interface'} ")


def test_rendered_device_reads_back():
    req = Request("san", 1, vlan=20)
    xml = domain(devices=render_device(req, B, "52:54:00:aa:bb:cc"))
    assert read_domain(xml).devices == (VfDevice(1, B, "interface", "52:54:00:aa:bb:cc"),)


def test_render_refuses_what_libvirt_cannot_express():
    assert "vlan needs type interface" in err_of(render_device, Request("q", 0, type="hostdev", vlan=5), A, None)


def test_render_refuses_bad_mac_argument():
    with pytest.raises(UsageError, match="not a MAC address"):
        render_device(Request("q", 0), A, "52:54:00")


def test_pinning_cost_is_linear_in_the_input():
    """200k full ranges: a set filled per range would do 3e9 inserts (minutes of CPU); an int bit
    set does not. The parse runs in a process limited to 60 s of CPU time (not wall-clock time,
    which a busy machine stretches): a quadratic parse is killed by SIGXCPU."""
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_CPU, (60, 60))\n"
            "from vfalloc.domxml import read_domain\n"
            "print(len(read_domain(sys.stdin.read()).cpuset))\n")
    head = "<vcpu cpuset='" + ",".join(["0-16383", "^5"] * 100_000) + "'>1</vcpu>"
    done = subprocess.run([sys.executable, "-c", code], input=domain(head=head), capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "16383\n"), done.stderr


# --- add_devices ------------------------------------------------------------------------------


def without_vfalloc_devices(xml: bytes | str) -> bytes:
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    for alias in root.iter("alias"):
        if alias.get("name", "").startswith(ALIAS_PREFIX):
            device = alias.getparent()
            device.getparent().remove(device)
    return etree.tostring(root, method="c14n")


def test_add_devices_appends_and_keeps_the_rest():
    plain = domain(devices="<emulator>/usr/bin/qemu</emulator>")
    out = add_devices(plain, [(EXPECTED_REQUESTS[0], A, "52:54:00:aa:bb:cc"), (EXPECTED_REQUESTS[2], B, None)])
    assert isinstance(out, bytes)
    assert read_domain(out).devices == (VfDevice(0, A, "interface", "52:54:00:aa:bb:cc"),
                                        VfDevice(2, B, "hostdev", None))
    assert without_vfalloc_devices(out) == c14n(plain)
    expected_devices = render_device(EXPECTED_REQUESTS[0], A, "52:54:00:aa:bb:cc") + render_device(
        EXPECTED_REQUESTS[2], B, None)
    assert shape(out) == shape(domain(devices="<emulator>/usr/bin/qemu</emulator>" + expected_devices))


def test_add_devices_replaces_same_index_in_place():
    out = add_devices(DOMAIN, [(Request("lan0", 0), B, "52:54:00:00:00:02")])
    info = read_domain(out)
    assert info.devices == (VfDevice(0, B, "interface", "52:54:00:00:00:02"), EXPECTED_DEVICES[1])
    assert out.count(b"ua-vfalloc-0") == 1
    root = etree.fromstring(out)
    aliases = [el.findtext("alias") or el.find("alias").get("name") for el in root.find("devices")
               if el.find("alias") is not None]
    assert aliases == ["net0", "ua-vfalloc-0", "ua-vfalloc-2"], "replaced where it was"
    assert without_vfalloc_devices(out) == without_vfalloc_devices(DOMAIN)


def test_add_devices_twice_is_idempotent():
    devices = [(Request("lan0", 0), A, None), (Request("qat", 1, type="hostdev"), B, None)]
    once = add_devices(DOMAIN, devices)
    assert c14n(add_devices(once, devices)) == c14n(once)


def test_add_devices_creates_devices_element():
    xml = f"<domain><name>vm1</name><uuid>{UUID}</uuid></domain>"
    assert read_domain(add_devices(xml, [(Request("a", 0), A, None)])).devices == (
        VfDevice(0, A, "interface", None),)


def test_add_devices_follows_indentation():
    out = add_devices(DOMAIN, [(Request("x", 5), B, None)]).decode()
    assert "\n    <interface type=\"hostdev\" managed=\"yes\">\n      <source>\n" in out
    assert "<alias name=\"ua-vfalloc-5\"/>\n    </interface>\n  </devices>\n</domain>" in out


def test_add_devices_on_domstatus_keeps_wrapper():
    out = add_devices(DOMSTATUS, [(Request("x", 5), B, None)])
    assert etree.fromstring(out).tag == "domstatus"
    assert read_domain(out).devices[-1] == VfDevice(5, B, "interface", None)


def test_add_devices_keeps_top_level_comment():
    xml = "<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n" + domain()
    assert add_devices(xml, []).startswith(b"<!--\nWARNING")


# --- swap_sources -----------------------------------------------------------------------------


def test_swap_sources_changes_only_host_side_addresses():
    out = swap_sources(DOMAIN.encode(), {0: B, 2: PciAddress(0, 0x3E, 0, 1)})
    expected = DOMAIN.replace(
        "<address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='0x0'/>",
        "<address type='pci' domain='0x0000' bus='0x81' slot='0x02' function='0x3'/>",
    ).replace(
        "<address domain='0x0000' bus='0x3d' slot='0x01' function='0x2'/>",
        "<address domain='0x0000' bus='0x3e' slot='0x00' function='0x1'/>",
    )
    assert c14n(out) == c14n(expected)
    assert [d.address for d in read_domain(out).devices] == [B, PciAddress(0, 0x3E, 0, 1)]


def test_swap_sources_empty_mapping_is_identity():
    assert c14n(swap_sources(DOMAIN, {})) == c14n(DOMAIN)


def test_swap_sources_on_domstatus():
    out = swap_sources(DOMSTATUS, {0: B})
    assert etree.fromstring(out).tag == "domstatus"
    assert read_domain(out).devices[0].address == B


def test_swap_sources_adds_missing_attributes():
    xml = domain(devices=iface("ua-vfalloc-0", "<address bus='1' slot='16'/>"))
    assert read_domain(swap_sources(xml, {0: B})).devices[0].address == B


@pytest.mark.parametrize(
    "xml, mapping, needle",
    [
        pytest.param(DOMAIN, {1: A}, "no device with alias ua-vfalloc-1", id="index-without-device"),
        pytest.param(domain(devices=iface("ua-vfalloc-0", "")), {0: A}, "no PCI", id="unreadable-source"),
    ],
)
def test_swap_sources_refuses(xml, mapping, needle):
    assert needle in err_of(swap_sources, xml, mapping)


# --- hostile and broken input -----------------------------------------------------------------


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE domain [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10))
    + f"]>\n<domain><name>&lol9;</name><uuid>{UUID}</uuid></domain>\n"
)
PASSWD_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    f"<domain><name>&xxe;</name><uuid>{UUID}</uuid></domain>"
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(BILLION_LAUGHS.encode(), id="billion-laughs"),
        pytest.param(BILLION_LAUGHS, id="billion-laughs-str"),
        pytest.param(BILLION_LAUGHS.encode("utf-16"), id="billion-laughs-utf16"),
        pytest.param(BILLION_LAUGHS.replace("UTF-8", "").encode("utf-32"), id="billion-laughs-utf32"),
        pytest.param(PASSWD_ENTITY.encode(), id="external-entity"),
        pytest.param(f'<!DOCTYPE domain SYSTEM "file:///etc/passwd"><domain><name>x</name><uuid>{UUID}</uuid>'
                     "</domain>".encode(), id="external-dtd"),
        pytest.param(b'<!DOCTYPE domain PUBLIC "-//x//y" "http://127.0.0.1:9/x.dtd"><domain/>', id="network-dtd"),
    ],
)
@pytest.mark.parametrize("call", [read_domain, read_requests_xml, lambda x: add_devices(x, []),
                                  lambda x: swap_sources(x, {})], ids=["read", "requests", "add", "swap"])
def test_doctype_refused(data, call):
    text = err_of(call, data)
    assert "DOCTYPE" in text or "not well-formed" in text
    assert "root:" not in text


def test_entity_refused_even_past_the_byte_scan(monkeypatch):
    # The lxml side of the defence alone: with the byte pre-scan out of the way the parser
    # still neither expands nor fetches, and the DOCTYPE is refused after the parse.
    monkeypatch.setattr(domxml, "_DOCTYPE_MARKS", ())
    for data in (BILLION_LAUGHS.encode(), PASSWD_ENTITY.encode()):
        text = err_of(read_domain, data)
        assert ("DOCTYPE" in text or "not well-formed" in text) and "root:" not in text and "lol" not in text


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not xml", id="text"),
        pytest.param(b"<domain>", id="unclosed"),
        pytest.param(b"<domain><name>vm1</name></domian>", id="mismatched"),
        pytest.param(b"<domain><name>&undefined;</name></domain>", id="undefined-entity"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
        pytest.param(b"<domain a='1' a='2'/>", id="duplicate-attribute"),
        pytest.param("<domain><name>\ud800</name></domain>", id="lone-surrogate-str"),
        pytest.param(b"<domain/><domain/>", id="two-roots"),
        pytest.param(b"<" + b"a><" * 300 + b"/>", id="deep-nesting"),
    ],
)
def test_malformed_xml(data):
    assert "not well-formed XML" in err_of(read_domain, data)


@pytest.mark.parametrize("kind", [bytes, str])
def test_oversized_input_refused(kind):
    pad = " " * (domxml.MAX_XML_BYTES + 1)
    data = domain().replace("<devices>", "<devices>" + pad)
    data = data.encode() if kind is bytes else data
    assert "larger than 16777216 bytes" in err_of(read_domain, data)


def test_input_at_the_bound_is_read():
    xml = domain()
    chunk = "<!--" + "x" * 1017 + "-->"  # libxml2 refuses single text nodes over 10 MB anyway
    count, rest = divmod(domxml.MAX_XML_BYTES - len(xml), len(chunk))
    pad = chunk * count + " " * rest
    data = xml.replace("<devices>", "<devices>" + pad).encode()
    assert len(data) == domxml.MAX_XML_BYTES
    assert read_domain(data).name == "vm1"


# --- properties -------------------------------------------------------------------------------


# characters XML 1.0 can carry (no controls, surrogates or non-characters)
xml_chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn"))
xml_text = st.text(xml_chars, min_size=1, max_size=12)
macs = st.tuples(st.integers(0, 127).map(lambda b: b * 2), *[st.integers(0, 255)] * 5).filter(any).map(
    lambda bs: ":".join(f"{b:02x}" for b in bs))


@st.composite
def request_lists(draw):
    out = []
    for index in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["interface", "hostdev"]))
        nic = kind == "interface"
        out.append(Request(
            pool=draw(xml_text),
            index=index,
            mac=draw(st.none() | macs) if nic else None,
            vlan=draw(st.none() | st.integers(1, 4094)) if nic else None,
            trust=draw(st.sampled_from([None, "on", "off"])),
            spoofchk=draw(st.sampled_from([None, "on", "off"])),
            type=kind,
            required=draw(st.booleans()),
        ))
    return out


@given(request_lists())
def test_property_requests_round_trip(requests):
    text = requests_xml(requests)
    assert read_requests_xml(text) == tuple(requests)
    assert read_domain(domain(metadata=text)).requests == tuple(requests)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_property_arbitrary_bytes_only_domain_xml_error(data):
    try:
        read_domain(data)
    except DomainXMLError:
        pass


def mostly(*good: str) -> st.SearchStrategy[str]:
    """Usually one of the good values, sometimes arbitrary text."""
    return st.one_of(*[st.sampled_from(good)] * 6, st.text(xml_chars, max_size=8))


VF_ATTRS = {
    "mac": mostly("52:54:00:aa:bb:cc", "01:00:5e:00:00:01"),
    "vlan": mostly("1", "20", "4094", "0", "4095"),
    "trust": mostly("on", "off"),
    "spoofchk": mostly("on", "off"),
    "type": mostly("interface", "interface", "hostdev"),
    "required": mostly("yes", "no"),
}
ADDRESS_ATTRS = {key: mostly("0x0000", "0x01", "0x10", "7", "010", "0x1f") for key in
                 ("domain", "slot", "function")} | {"type": mostly("pci"), "color": mostly("red")}


@given(
    attrs=st.fixed_dictionaries({"pool": mostly("lan0", "san")}, optional=VF_ATTRS),
    cpuset=mostly("0-3,^2,8", "1", "0-1,", "^1-2"),
    address=st.fixed_dictionaries({"bus": mostly("0x01", "0x3d", "0x100")}, optional=ADDRESS_ATTRS),
    alias=mostly("ua-vfalloc-0", "ua-vfalloc-7", "ua-vfalloc-", "net0"),
)
def test_property_near_valid_domains_only_domain_xml_error(attrs, cpuset, address, alias):
    vf = etree.Element(f"{{{NS}}}vf", attrs)
    address_el = etree.Element("address", address)
    head = etree.tostring(etree.Element("vcpu", cpuset=cpuset), encoding="unicode")
    metadata = f'<vfalloc:vfs xmlns:vfalloc="{NS}">{etree.tostring(vf, encoding="unicode")}</vfalloc:vfs>'
    xml = domain(metadata=metadata, head=head,
                 devices=iface(alias, etree.tostring(address_el, encoding="unicode")))
    try:
        info = read_domain(xml)
    except DomainXMLError:
        return
    assert len(info.requests) == 1 and read_requests_xml(requests_xml(info.requests)) == info.requests
    for device in info.devices:
        swapped = read_domain(swap_sources(xml, {device.index: B}))
        assert swapped.devices == (VfDevice(device.index, B, "interface", None),)


def test_metadata_element_for_libvirt_round_trips():
    """libvirt's metadata API takes and returns the element without its namespace."""
    from vfalloc.domxml import metadata_element

    requests = (Request(pool="lan0"), Request(pool="san", index=1, vlan=20, mac="52:54:00:aa:bb:cc"),
                Request(pool="qat", index=2, type="hostdev"))
    text = metadata_element(requests)
    root = etree.fromstring(text)
    assert root.tag == "vfs" and all(el.tag == "vf" for el in root) and "urn:vfalloc:1" not in text
    assert read_requests_xml(text) == requests
    assert read_requests_xml(requests_xml(requests)) == requests
