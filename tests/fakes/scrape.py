"""What a scraper reads of `vfalloc metrics`: the exposition parsed by prometheus_client's own
parser; and the flags that point the command at a libvirt socket that is not there, so every
lease is judged without a daemon."""

from prometheus_client.parser import text_string_to_metric_families

NOWHERE = ["--connect", "qemu+unix:///system?socket=/nonexistent/libvirt-sock"]


def families(text: str) -> dict:
    """{family name: [(labels, value), ...]} as prometheus_client parses it."""
    found = {}
    for family in text_string_to_metric_families(text):
        found[family.name] = (family.type, [(dict(s.labels), s.value) for s in family.samples])
    return found


def samples(parsed: dict, name: str) -> list:
    return parsed[name][1]
