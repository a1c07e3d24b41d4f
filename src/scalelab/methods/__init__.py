"""Training methods. Importing this package registers the built-in methods."""

from . import selection, standard  # noqa: F401  (registration)
from ._base import Method, StepLoss

__all__ = ["Method", "StepLoss"]
