"""scalelab: declare a study, train every cell, fit scaling laws, compare methods."""

__version__ = "0.1.0"

from . import evaluation, methods, models, tasks  # noqa: E402,F401  (registers the built-in plug-ins)
from .api import load, run  # noqa: E402

__all__ = ["__version__", "load", "run"]
