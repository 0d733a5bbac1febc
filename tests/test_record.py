"""vfalloc.record: the frozen value records every model, config and allocator type is built on."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import ClassVar

import pytest

from vfalloc.record import FrozenRecordError, Record, field, fields, replace


class Point(Record, order=True):
    x: int
    y: int = 0


class Other(Record):
    x: int
    y: int = 0


class Checked(Record):
    """A record that validates and normalises in __post_init__, as model.Request does."""

    name: str
    tags: dict = field(default_factory=dict)
    KIND: ClassVar[str] = "checked"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        object.__setattr__(self, "name", self.name.lower())


@pytest.mark.parametrize("a, b, equal", [
    pytest.param(Point(1, 2), Point(1, 2), True, id="same-fields"),
    pytest.param(Point(1, 2), Point(x=1, y=2), True, id="keywords"),
    pytest.param(Point(1), Point(1, 0), True, id="default"),
    pytest.param(Point(1, 2), Point(1, 3), False, id="other-value"),
    pytest.param(Point(1, 2), Other(1, 2), False, id="other-type-same-values"),
    pytest.param(Point(1, 2), (1, 2), False, id="a-tuple"),
])
def test_equality_and_hash_follow_type_and_fields(a, b, equal):
    assert (a == b) is equal and (a != b) is not equal
    if equal:
        assert hash(a) == hash(b) and len({a, b}) == 1


@pytest.mark.parametrize("change", [
    pytest.param(lambda p: setattr(p, "x", 5), id="set-field"),
    pytest.param(lambda p: setattr(p, "z", 5), id="set-new-attribute"),
    pytest.param(lambda p: delattr(p, "x"), id="delete-field"),
])
def test_records_are_frozen(change):
    p = Point(1, 2)
    with pytest.raises(FrozenRecordError, match="Point is frozen"):
        change(p)
    assert p == Point(1, 2)


@pytest.mark.parametrize("make, message", [
    pytest.param(lambda: Point(), "field 'x' is missing", id="missing"),
    pytest.param(lambda: Point(1, 2, 3), "takes 2 fields, 3 were given", id="too-many"),
    pytest.param(lambda: Point(1, x=2), "'x' is given twice", id="twice"),
    pytest.param(lambda: Point(1, z=2), "'z' is not a field", id="unknown"),
    pytest.param(lambda: Checked(name="x", KIND="y"), "'KIND' is not a field", id="classvar-is-not-a-field"),
])
def test_bad_construction_is_a_type_error(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_post_init_validates_and_normalises_and_replace_runs_it_again():
    c = Checked("Eth0")
    assert c.name == "eth0" and fields(c) == ("name", "tags")
    with pytest.raises(ValueError, match="must not be empty"):
        replace(c, name="")
    assert replace(c, name="ETH1") == Checked("eth1")


def test_a_factory_default_is_made_anew_for_each_record():
    a, b = Checked("a"), Checked("b")
    assert a.tags == {} and a.tags is not b.tags
    assert Checked.KIND == "checked"


def test_order_only_where_asked():
    assert sorted([Point(2, 0), Point(1, 5), Point(1, 2)]) == [Point(1, 2), Point(1, 5), Point(2, 0)]
    assert Point(1, 2) <= Point(1, 2) < Point(1, 3) and Point(2, 0) > Point(1, 9) >= Point(1, 9)
    with pytest.raises(TypeError):
        Other(1) < Other(2)  # noqa: B015
    with pytest.raises(TypeError):
        Point(1) < Other(2)  # noqa: B015


def test_a_record_without_fields_equals_its_kind():
    class Empty(Record):
        pass

    assert Empty() == Empty() and hash(Empty()) == hash(Empty()) and repr(Empty()) == "Empty()"


def test_repr_names_the_fields():
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    assert repr(Checked("A")) == "Checked(name='a', tags={})"


def test_a_field_without_default_after_one_with_default_is_refused():
    with pytest.raises(TypeError, match="field 'b' without a default follows one with a default"):
        class Bad(Record):  # noqa: F841
            a: int = 0
            b: int


@pytest.mark.parametrize("body, compiles", [
    pytest.param("from vfalloc.record import Record\nclass A(Record):\n    x: int\n    y: str = ''\n", False,
                 id="record"),
    pytest.param("from dataclasses import dataclass\n@dataclass(frozen=True)\nclass A:\n    x: int\n    y: str = ''\n",
                 True, id="frozen-dataclass"),
])
def test_defining_a_record_compiles_nothing(body, compiles):
    """The reason Record exists: a hook process defines some twenty records on every call, and a
    frozen dataclass compiles six methods each (seen here through the interpreter's audit hooks)."""
    code = ("import sys, dataclasses\nfrom vfalloc import record\nseen = []\n"
            "sys.addaudithook(lambda e, a: seen.append(e) if e in ('compile', 'exec') else None)\n"
            f"exec({body!r})\nprint(seen.count('exec') - 1)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    assert (int(done.stdout) > 0) is compiles
