"""One small registry for techniques, formats, runtimes and targets: loud on duplicates,
did-you-mean on unknown names; and the `module:name` references that registered rows (and the user's
command line) name code by, resolved on use."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from edgeopt.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, item: T, aliases: tuple[str, ...] = ()) -> T:
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._items[name] = item
        for alias in aliases:
            self._aliases[alias] = name
        return item

    def unregister(self, name: str) -> T:
        """Remove `name` and its aliases (a test that registered its own item puts the registry back)."""
        key = self.canonical(name)
        item = self._items.pop(key)
        self._aliases = {a: n for a, n in self._aliases.items() if n != key}
        return item

    def canonical(self, name: str) -> str:
        key = name.strip().lower()
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        known = sorted([*self._items, *self._aliases])
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        key = name.strip().lower()
        return key in self._items or key in self._aliases

    def names(self) -> list[str]:
        return list(self._items)

    def aliases_of(self, name: str) -> list[str]:
        return [a for a, n in self._aliases.items() if n == name]

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))


def split_ref(ref: str) -> tuple[str, str]:
    """'module:name' or 'dir/file.py:name' -> (module or file, name), ('', '') parts where missing; the last
    colon separates, so 'C:/x/f.py:fn' works."""
    target, _, name = str(ref).rpartition(":")
    return target, name


def resolve(ref: str) -> Any:
    """What a "module:name" reference names, its module imported on use (so that `edgeopt --help` stays fast)."""
    module, name = split_ref(ref)
    return getattr(importlib.import_module(module), name)
