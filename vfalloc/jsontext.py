"""JSON text for scripts, laid out exactly as `json.dumps(value, indent=N)` lays it out, at the
speed of the C encoder.

Why: CPython's json module encodes with its C encoder only when no indent is asked for
(Lib/json/encoder.py, JSONEncoder.iterencode, CPython 3.11: c_make_encoder is used when
`indent is None`); with an indent every value goes through the pure-Python encoder (what that
cost a listing: docs/performance.md, "Listings: `vfalloc list` and `vfalloc pools` at 1,024 VFs
and more"). The layout people and scripts see stays the one they know: containers are opened
here, line by line, and every flat container (one whose values are all scalars, as a `vfalloc
list` row) is encoded in one C call whose item separator carries the newline and the indent.

Owns: `dumps`. Must not: know what it prints, or print.
"""

from __future__ import annotations

import json
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not loaded at run time (vfalloc/record.py)
    from typing import Any

# The types of the values written in one piece; a subclass of one (an enum's member) takes the
# slower path of its own json.dumps, with the same text.
_SCALARS = frozenset((str, int, float, bool, type(None)))
_encoders: dict[str, Callable[[Any], str]] = {}


def dumps(value: Any, indent: int = 1) -> str:
    """`json.dumps(value, indent=indent)`, byte for byte."""
    out: list[str] = []
    _encode(value, indent, 0, out)
    return "".join(out)


def _flat(inner: str) -> Callable[[Any], str]:
    """A C encoder whose items are separated by `,` and the newline and indent `inner`."""
    encode = _encoders.get(inner)
    if encode is None:
        encode = _encoders[inner] = json.JSONEncoder(separators=("," + inner, ": ")).encode
    return encode


def _encode(value: Any, indent: int, level: int, out: list[str]) -> None:
    if isinstance(value, dict):
        items: Any = value.values()
        opening, closing = "{", "}"
    elif isinstance(value, (list, tuple)):
        items = value
        opening, closing = "[", "]"
    else:
        out.append(json.dumps(value))
        return
    if not value:
        out.append(opening + closing)
        return
    inner = "\n" + " " * (indent * (level + 1))
    end = "\n" + " " * (indent * level) + closing
    if _SCALARS.issuperset(map(type, items)):  # flat: every item is a scalar
        out.append(opening + inner + _flat(inner)(value)[1:-1] + end)
        return
    out.append(opening)
    separator = inner
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(separator + _key(key) + ": ")
            _encode(item, indent, level + 1, out)
            separator = "," + inner
    else:
        for item in value:
            out.append(separator)
            _encode(item, indent, level + 1, out)
            separator = "," + inner
    out.append(end)


def _key(key: Any) -> str:
    """A dict key as json writes it: a string, or an int, float, bool or None turned into one."""
    if isinstance(key, str):
        return json.dumps(key)
    return json.dumps({key: 0}, separators=(",", ":"))[1:-3]
