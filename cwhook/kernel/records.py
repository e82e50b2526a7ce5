"""A quicker ``__init__`` for the frozen dataclasses every webhook makes (pure).

A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``, the way round its
own ``__setattr__`` that refuses changes. On Python 3.11 that costs about as much per field as
the rest of a small object's life: an ``Event`` (26 fields) took 45k instructions to make, more
than the JSON decoding of the payload it came from (docs/performance.md). ``quick_init`` gives
such a class an ``__init__`` with the same signature that writes the fields into the instance's
``__dict__`` directly, then calls ``__post_init__`` as the dataclass would. The class stays a
frozen dataclass: assignments after ``__init__`` still raise, equality, hashing, ``replace`` and
``fields`` are the dataclass's own. tests/test_records.py compares both ``__init__``\\ s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

_FACTORY = object()  # "no value given": the field's default_factory makes one


def quick_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of the frozen dataclass ``cls`` (apply it above ``@dataclass``)."""
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    made_with = vars(cls).get("__dataclass_params__")
    if made_with is None or not made_with.frozen:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__} has __slots__: no __dict__ to fill")
    env: dict[str, Any] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    lines: list[str] = []
    for f in params:
        name = f.name
        if name in ("self", "_fields_"):
            raise TypeError(f"{cls.__name__}.{name}: a field name quick_init's __init__ uses itself")
        if f.default is not dataclasses.MISSING:
            env[f"_default_{name}"] = f.default
            value = f"_default_{name}"
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_factory_{name}"] = f.default_factory
            value = f"_factory_{name}()"
        else:
            value = ""
        if not f.init:  # always its default
            if not value:
                raise TypeError(f"{cls.__name__}.{name} is not in __init__ and has no default")
            lines.append(f" _fields_[{name!r}] = {value}")
            continue
        if value.endswith("()"):  # a factory: called only when no value was given
            lines.append(f" _fields_[{name!r}] = {value} if {name} is _FACTORY else {name}")
            value = "_FACTORY"
        else:
            lines.append(f" _fields_[{name!r}] = {name}")
        (keyword if f.kw_only else positional).append(f"{name}={value}" if value else name)
    signature = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    post = [" self.__post_init__()"] if "__post_init__" in dir(cls) else []
    source = "\n".join([f"def __init__({signature}):", " _fields_ = self.__dict__", *lines, *post])
    exec(source, env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    type.__setattr__(cls, "__init__", init)
    return cls


class once(Generic[T]):
    """``functools.cached_property`` without its lock: a value worked out at its first read and kept
    in the instance's ``__dict__`` (later reads find it there, past this descriptor).

    On Python 3.11 ``cached_property`` takes a lock on every first read: twice the cost of the
    read itself. The records here are made and read on the event loop's one thread; an ``Event``
    has four such values (its identity, session key, label and stored text). Two threads reading
    one at once would each work it out, and both get the same value.
    """

    def __init__(self, make: Callable[[Any], T]) -> None:
        self.make = make
        self.name = make.__name__
        self.__doc__ = make.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> once[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> T | once[T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.make(obj)
        return value
