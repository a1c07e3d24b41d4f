"""Training/evaluation methods. Importing this package registers the built-in methods."""

from . import standard  # noqa: F401  (registration)
from ._base import Method

__all__ = ["Method"]
