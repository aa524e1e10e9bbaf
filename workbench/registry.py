"""Small name -> constructor registries.

Variants (attention kinds, positions, norms, objectives, ...) are chosen by
string in a config, and notebook dropdowns list ``registry.names()``. Adding a
variant is one decorated function or class::

    ATTENTION = Registry("attention")

    @ATTENTION.register("mha")
    class MultiHeadAttention(nn.Module): ...
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered {self.kind} names are: "
                f"{', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
