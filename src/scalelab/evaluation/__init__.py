"""Evaluation-time settings (test-time augmentation, ...). Importing registers them."""

from . import tta, ttt  # noqa: F401  (registration)
from ._base import Evaluator

__all__ = ["Evaluator"]
