"""The baseline every other method is compared with."""

from ..registry import methods
from ._base import Method


@methods.register("standard")
class Standard(Method):
    """Plain training on every sample of every batch (the baseline)."""

    comparison_role = "full"
