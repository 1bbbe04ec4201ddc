"""``cached_property`` without the lock Python 3.11's holds across every instance of the class.

functools.cached_property in 3.11 computes under one lock per attribute shared by all instances, so
that a Context looking up its vacation in the database holds up every other thread's Context at the
same attribute (3.12 dropped the lock). The objects here are each used by one thread at a time; a
value computed twice by two threads would be equal anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class cached_property(Generic[T]):
    """Computed on first access and kept in the instance's ``__dict__``, which later reads find first."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> cached_property[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> T | cached_property[T]:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value
        return value
