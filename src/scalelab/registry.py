"""One generic registry, instantiated once per plug-in family.

Plug-ins register under a short name with ``@tasks.register("mnist1d")``; the CLI's ``list``
command and the study validator ask the registry what exists, so a new plug-in is known
everywhere (and picked up by the parametrized tests) the moment its module is imported.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ScalelabError

T = TypeVar("T")


class UnknownNameError(ScalelabError):
    """A name that no plug-in of the family is registered under."""


class Registry(Generic[T]):
    """Named plug-ins of one family (tasks, models, methods, law forms, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; names are unique per family."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r} (registered: {', '.join(self.names())})"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def describe(self, pattern: str = "*") -> list[tuple[str, str]]:
        """(name, first docstring line) for each registered plug-in."""
        return [(n, summary(self._entries[n])) for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def summary(obj: object) -> str:
    """The docstring's first paragraph on one line (a sentence may wrap in the source)."""
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


tasks: Registry = Registry("task")
models: Registry = Registry("model")
methods: Registry = Registry("method")
laws: Registry = Registry("law")
evaluators: Registry = Registry("evaluator")

FAMILIES: dict[str, Registry] = {"task": tasks, "model": models, "method": methods, "law": laws,
                                 "evaluator": evaluators}
