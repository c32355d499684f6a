"""`@record`: what `@dataclass` gives this package's data classes, without its cost at every start.

`dataclasses` writes each class's `__init__`, `__repr__`, `__eq__`, `__hash__` and frozen `__setattr__`
as source and `exec`s it: 1–2 ms a class, 20–35 ms of every `wasmctr run` before this (bench/startup.py).
Here those methods are shared functions that read a class's field list, so defining a class costs what
a plain class costs. Fields come from the class's annotations in order, with defaults given as values
or by `field(default=..., default_factory=...)`; `frozen=True` makes instances immutable and hashable;
equality compares the fields of instances of the same class, as dataclasses does. mypy understands it
through `dataclass_transform` (PEP 681). Imports nothing of wasmctr (pyproject.toml's `standalone` import
contract).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T", bound=type)
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class _Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None) -> None:
        self.default = default
        self.default_factory = default_factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None) -> Any:
    """A field's default: a value, or a function called for each instance (for lists and dicts)."""
    return _Field(default, default_factory)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    names, defaults = type(self).__record_fields__, type(self).__record_defaults__
    if len(args) > len(names):
        raise TypeError(f"{type(self).__name__}() takes {len(names)} arguments, {len(args)} given")
    values = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name not in names or name in values:
            raise TypeError(f"{type(self).__name__}() got an unexpected or repeated argument {name!r}")
        values[name] = value
    for name in names[len(args):]:
        if name not in values:
            default = defaults.get(name, _MISSING)
            if default is _MISSING:
                raise TypeError(f"{type(self).__name__}() is missing argument {name!r}")
            if isinstance(default, _Field):
                assert default.default_factory is not None  # a plain default is stored as its value
                default = default.default_factory()
            values[name] = default
    for name in names:
        object.__setattr__(self, name, values[name])


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in type(self).__record_fields__)


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_fields__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> bool:
    if type(other) is not type(self):
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def _make(cls: T, frozen: bool) -> T:
    names: list[str] = []
    defaults: dict[str, Any] = {}
    for base in reversed(cls.__mro__[1:]):  # fields of record base classes come first
        names += [n for n in getattr(base, "__record_fields__", ()) if n not in names]
        defaults.update(getattr(base, "__record_defaults__", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        if name not in names:
            names.append(name)
        if name in cls.__dict__:
            value = cls.__dict__[name]
            if isinstance(value, _Field):
                defaults[name] = value if value.default_factory is not None else value.default
                if value.default_factory is None:
                    setattr(cls, name, value.default)
                else:
                    delattr(cls, name)
            else:
                defaults[name] = value
    cls.__record_fields__ = tuple(names)  # type: ignore[attr-defined]
    cls.__record_defaults__ = defaults  # type: ignore[attr-defined]
    cls.__init__ = _init  # type: ignore[misc]
    cls.__repr__ = _repr  # type: ignore[assignment,method-assign]
    cls.__eq__ = _eq  # type: ignore[assignment,method-assign]
    if frozen:
        cls.__hash__ = _hash  # type: ignore[assignment,method-assign]
        cls.__setattr__ = _frozen_setattr  # type: ignore[assignment,method-assign]
        cls.__delattr__ = _frozen_delattr  # type: ignore[assignment,method-assign]
    else:
        cls.__hash__ = None  # type: ignore[assignment]  # mutable and comparable: unhashable, as dataclasses
    return cls


@overload
def record(cls: T, /) -> T: ...
@overload
def record(*, frozen: bool = False) -> Callable[[T], T]: ...


@dataclass_transform(field_specifiers=(field,))
def record(cls: T | None = None, /, *, frozen: bool = False) -> T | Callable[[T], T]:
    """Make `cls` a record: `@record` or `@record(frozen=True)`."""
    if cls is None:
        return lambda inner: _make(inner, frozen)
    return _make(cls, frozen)
