"""scalelab: declare a study, train every cell, fit scaling laws, compare methods.

Importing the package loads nothing heavy: plug-ins register when a registry is first asked,
and :func:`run` / :func:`load` import the training and analysis stacks when first used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "run"]


def __getattr__(name: str):
    if name in ("load", "run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'scalelab' has no attribute {name!r}")
