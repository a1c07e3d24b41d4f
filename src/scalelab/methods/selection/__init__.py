"""Adaptive sample selection as its own family: a base (``_base``), the rules (``rules``)
and the fair baselines a study compares them with (``baselines``). Importing this package
registers them."""

from . import baselines, rules  # noqa: F401  (registration)
from ._base import Selection

__all__ = ["Selection"]
