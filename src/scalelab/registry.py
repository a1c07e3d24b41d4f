"""One generic registry, instantiated once per plug-in family.

Plug-ins register under a short name with ``@tasks.register("mnist1d")``; the CLI's ``list``
command and the study validator ask the registry what exists, so a new plug-in is known
everywhere (and picked up by the parametrized tests) the moment its module is imported.

Registration is lazy: a family imports its built-in modules (and torch with them) the first
time it is asked what it holds, so reading results never loads the training stack. Third-
party plug-ins register the same way from a package that declares an entry point in the
``scalelab.plugins`` group naming its module; it is imported with the first family asked.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ScalelabError

T = TypeVar("T")


class UnknownNameError(ScalelabError):
    """A name that no plug-in of the family is registered under."""


class Registry(Generic[T]):
    """Named plug-ins of one family (tasks, models, methods, law forms, ...)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind
        self.modules = modules  # imported (registering the built-ins) on first use
        self._entries: dict[str, T] = {}
        self._loaded = False

    @property
    def entries(self) -> dict[str, T]:
        """Every registered plug-in by name, importing the built-ins on first use."""
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)
            load_entry_points()
        return self._entries

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
            return self.entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r} (registered: {', '.join(self.names())})"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self.entries if fnmatch.fnmatchcase(n, pattern))

    def describe(self, pattern: str = "*") -> list[tuple[str, str]]:
        """(name, first docstring line) for each registered plug-in."""
        return [(n, summary(self.entries[n])) for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def summary(obj: object) -> str:
    """The docstring's first paragraph on one line (a sentence may wrap in the source)."""
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


_plugins_loaded = False


def load_entry_points() -> None:
    """Import the modules third-party packages declare in the ``scalelab.plugins`` group."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in entry_points(group="scalelab.plugins"):
        try:
            point.load()
        except Exception as exc:
            raise ScalelabError(f"plug-in entry point {point.name!r} ({point.value}) failed to "
                                f"load: {type(exc).__name__}: {exc}") from None


tasks: Registry = Registry("task", ("scalelab.tasks",))
models: Registry = Registry("model", ("scalelab.models",))
methods: Registry = Registry("method", ("scalelab.methods",))
laws: Registry = Registry("law", ("scalelab.analysis.forms",))
evaluators: Registry = Registry("evaluator", ("scalelab.evaluation",))
executors: Registry = Registry("executor", ("scalelab.runner.local", "scalelab.runner.torchrun",
                                             "scalelab.runner.ray"))

trackers: Registry = Registry("tracker", ("scalelab.tracking",))

FAMILIES: dict[str, Registry] = {"task": tasks, "model": models, "method": methods, "law": laws,
                                 "evaluator": evaluators, "executor": executors,
                                 "tracker": trackers}
