"""Deterministic slices of a study for job arrays (``--shard i/k``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ScalelabError
from ..spec import RunSpec


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/k"`` -> (i, k) with 0 <= i < k."""
    index, sep, count = text.partition("/")
    try:
        i, k = int(index), int(count)
    except ValueError:
        i, k = -1, 0
    if not sep or not 0 <= i < k:
        raise ScalelabError(f"--shard: expected i/k with 0 <= i < k (e.g. 0/4), got {text!r}")
    return i, k


def select_shard(runs: Sequence[RunSpec], index: int, count: int) -> list[RunSpec]:
    """Runs whose id falls in shard ``index`` of ``count``.

    Assignment hashes the run id, so a run stays in its shard when the study grows, and the
    shards together cover every run exactly once.
    """
    return [r for r in runs if int(r.run_id, 16) % count == index]
