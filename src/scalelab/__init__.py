"""scalelab: declare a study, train every cell, fit scaling laws, compare methods.

Importing the package loads nothing heavy: plug-ins register when a registry is first asked,
and :func:`run` / :func:`load` / :func:`next` import the training and analysis stacks when first used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "next", "run"]


def __getattr__(name: str):
    if name in ("api", "load", "next", "run"):
        import importlib

        api = importlib.import_module("scalelab.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'scalelab' has no attribute {name!r}")
