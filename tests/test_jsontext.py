"""vfalloc.jsontext writes what json.dumps(value, indent=N) writes, byte for byte: scripts that
read `vfalloc list --json` and `vfalloc pools --json` (or diff them) see no change."""

import enum
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfalloc.jsontext import dumps

ROW = {"vf": "0000:01:10.0", "pf": "0000:01:00.0", "pf_netdev": "enp1s0f0", "vf_index": 0, "pool": "lan",
       "state": "leased", "domain": "vm1", "domain_uuid": None, "mac": "52:54:00:12:34:56", "vlan": 10,
       "numa_node": None, "iommu_group": 17, "driver": "vfio-pci", "phase": "attached",
       "since": "2026-01-01T00:00:00+00:00", "reason": None}
POOL = {"pool": "lan", "policy": "pack", "total": 2, "free": 1, "leased": 1, "stale": 0,
        "pfs": [{"pf": "0000:01:00.0", "pf_netdev": None, "total": 2, "free": 1, "leased": 1, "stale": 0}]}

class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    """A str subclass, as a value a caller may hand over (json writes it as a string)."""


CASES = {
    "list-rows": [ROW, {**ROW, "vf": "0000:01:10.4", "state": "free", "domain": None}],
    "pools": [POOL, {**POOL, "pool": "san", "pfs": []}],
    "empty-list": [],
    "empty-dict": {},
    "nested-empties": {"a": [], "b": {}, "c": [[], {}]},
    "scalars": [1, 2.5, -0.0, True, False, None, "x"],
    "unicode-and-escapes": {"név": "ü\u2028\"\\\n", "tab\t": "\x00"},
    "non-string-keys": {7: "int", 2.5: "float", True: "bool", False: "bool", None: "none", "s": {3: [4]}},
    "tuples": ("a", ("b", {"c": ()})),
    "deep": {"a": [{"b": [{"c": [1, [2, [3]]]}]}]},
    "floats": [1e300, 1e-300, float("inf"), float("-inf"), 0.1],
    "scalar-top": "just a string",
    "scalar-subclasses": [{"level": Level.HIGH, "name": Name("vm1"), "flag": True}, [Name("a"), Level.HIGH]],
}


@pytest.mark.parametrize("indent", [1, 2, 4], ids=["indent-1", "indent-2", "indent-4"])
@pytest.mark.parametrize("value", list(CASES.values()), ids=list(CASES))
def test_same_text_as_json_dumps(value, indent):
    assert dumps(value, indent) == json.dumps(value, indent=indent)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=30,
)


@given(json_values, st.integers(min_value=0, max_value=3))
def test_same_text_as_json_dumps_for_any_json_value(value, indent):
    assert dumps(value, indent) == json.dumps(value, indent=indent)


def test_what_json_cannot_encode_is_refused_as_json_refuses_it():
    with pytest.raises(TypeError):
        json.dumps({"a": {1, 2}}, indent=1)
    with pytest.raises(TypeError):
        dumps({"a": {1, 2}})
    with pytest.raises(TypeError):
        dumps({("tuple", "key"): [1]})
