"""Frozen value records: the base every vfalloc record is built on.

Owns `Record`, `field`, `replace` and `fields`. A record class declares its fields as
annotations, with defaults, as a frozen dataclass does:

    class PoolMember(Record):
        pf: PciAddress
        indexes: frozenset[int] | None = None
        tags: Mapping[str, str] = field(default_factory=dict)

Instances are immutable, equal and hashed by their type and field values, shown as
`PoolMember(pf=..., indexes=...)`, and validated by `__post_init__`, which `replace` runs again.
`class PciAddress(Record, order=True)` also orders them by their fields.

Why not dataclasses: on CPython 3.11, `@dataclass(frozen=True)` compiles the source of six
methods per class with exec() each time its module is imported (Lib/dataclasses.py,
_create_fn), and the hook is a new process on every libvirt call (what that cost it:
docs/performance.md, "What made the difference"). A Record class is built by plain attribute
lookups; nothing is compiled at import.

`Record` carries typing.dataclass_transform (PEP 681), so mypy checks every record's
constructor calls and its fields' types as it would a frozen dataclass's.

Every value the hook's path builds or loads is a Record. Plain frozen dataclasses are fine
where no hook call ever imports the module: the `vfalloc host` modules, virt.py and the tests.

typing: imported for annotations only (`if TYPE_CHECKING:`, a name mypy reads as true), here
and in every module on the path of `vfalloc list`; with `from __future__ import annotations`
nothing evaluates them, and a listing never imports typing (docs/performance.md, "Listings:
`vfalloc list` and `vfalloc pools` at 1,024 VFs and more"). So at run time
`dataclass_transform` is a stand-in that does what typing's does at run time: nothing.

This module knows nothing of vfalloc: no I/O, no imports of it.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: see "typing" above
    from collections.abc import Callable
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:
    def dataclass_transform(**_: object):
        return lambda cls: cls

_MISSING = object()


class FrozenRecordError(AttributeError):
    """An attempt to change a field of a record after it was built."""


class Factory:
    """A default made anew for every record, as `Factory(dict)`."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], _T]) -> _T:
    """A field whose default is made anew for every record: `field(default_factory=dict)`."""
    return Factory(default_factory)  # type: ignore[return-value]  # stands for the value it makes


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record:
    _fields: ClassVar[tuple[str, ...]] = ()
    _field_set: ClassVar[frozenset[str]] = frozenset()
    _defaults: ClassVar[dict[str, Any]] = {}
    _values: ClassVar[Callable[..., tuple]]
    _post_init: ClassVar[Callable[[Any], None] | None] = None

    def __init_subclass__(cls, order: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name, kind in cls.__dict__.get("__annotations__", {}).items()
               if not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        cls._fields = tuple(f for f in cls._fields if f not in own) + tuple(own)
        defaults = dict(cls._defaults)
        for name in own:
            value = cls.__dict__.get(name, _MISSING)
            if value is not _MISSING:
                defaults[name] = value
                delattr(cls, name)  # the instance's own value must be found, not this one
            elif defaults:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
        cls._defaults = defaults
        cls._values = attrgetter(*cls._fields) if cls._fields else staticmethod(lambda record: ())
        cls._field_set = frozenset(cls._fields)
        if order:
            _ordering(cls)
        cls._post_init = getattr(cls, "__post_init__", None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self._fields
        if not kwargs and len(args) == len(names):  # the common cases first: sysfs builds
            values = dict(zip(names, args, strict=True))  # a thousand VFs at a time
        elif not args and len(kwargs) == len(names) and kwargs.keys() == self._field_set:
            values = kwargs
        else:
            values = self._bind(args, kwargs)
        object.__setattr__(self, "__dict__", values)
        if self._post_init is not None:
            self._post_init()

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self._fields
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} fields, {len(args)} were given")
        values = dict(zip(names, args, strict=False))  # fewer values than fields: the rest by keyword
        for name, value in kwargs.items():
            if name in values or name not in self._field_set:
                problem = "given twice" if name in values else "not a field"
                raise TypeError(f"{type(self).__name__}: {name!r} is {problem}")
            values[name] = value
        for name in names:
            if name not in values:
                default = self._defaults.get(name, _MISSING)
                if default is _MISSING:
                    raise TypeError(f"{type(self).__name__}: field {name!r} is missing")
                values[name] = default.make() if isinstance(default, Factory) else default
        return values

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenRecordError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenRecordError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self is other or self._values(self) == other._values(other)

    def __hash__(self) -> int:
        return hash((self.__class__.__name__, self._values(self)))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"



def _ordering(cls: type) -> None:
    """Order records of `cls` by their fields, as `order=True` asks (set here rather than in
    Record, so that type checkers see the comparisons order=True makes, not hand-written ones)."""

    def values(self: Any, other: Any) -> tuple | None:
        if other.__class__ is not self.__class__:
            return None
        return self._values(self), other._values(other)

    def lt(self: Any, other: Any) -> bool:
        pair = values(self, other)
        return NotImplemented if pair is None else pair[0] < pair[1]

    def le(self: Any, other: Any) -> bool:
        pair = values(self, other)
        return NotImplemented if pair is None else pair[0] <= pair[1]

    def gt(self: Any, other: Any) -> bool:
        pair = values(self, other)
        return NotImplemented if pair is None else pair[0] > pair[1]

    def ge(self: Any, other: Any) -> bool:
        pair = values(self, other)
        return NotImplemented if pair is None else pair[0] >= pair[1]

    for name, method in (("__lt__", lt), ("__le__", le), ("__gt__", gt), ("__ge__", ge)):
        setattr(cls, name, method)


def fields(record: Record | type[Record]) -> tuple[str, ...]:
    return record._fields


def replace(record: Record, **changes: Any) -> Any:
    """A copy of `record` with some fields changed, validated again."""
    values = {name: getattr(record, name) for name in record._fields}
    values.update(changes)
    return type(record)(**values)
