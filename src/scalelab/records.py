"""What a run is and what it produced, as plain data: all that the store, the analysis and the
report need. Imports no torch, so reading results never loads the training stack."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
#: Stopped at a rung of a successive-halving search (``nuisance_search: halving``): its
#: setting was not among the best of its shape there; its curve ends at that rung.
PRUNED = "pruned"
RUNNING = "running"
INTERRUPTED = "interrupted"  # read-only view of a `running` row whose runner is gone
#: Runs in these states are never trained again; ``failed`` and ``running`` ones are retried.
FINISHED = frozenset({COMPLETED, DIVERGED, PRUNED})
#: The metric a pruned run's rung is stored under (0: a law-seeded start never started it).
PRUNED_RUNG = "pruned_rung"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the study: a fully resolved config and its stable id."""

    run_id: str
    config: dict[str, Any]
    point: dict[str, Any]  # display name of each grid axis -> value, plus the seed

    @property
    def label(self) -> str:
        """The run's grid coordinates as ``axis=value`` words (a setting its sub-grid does
        not have, None, left out)."""
        return " ".join(f"{k}={v}" for k, v in self.point.items() if v is not None)


@dataclass
class RunResult:
    """What one run produced. ``curves`` rows are (step, metric name, value);
    ``checkpoint`` holds the saved weights' bytes on their way from a worker to the process
    that writes the output directory."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: list[tuple[int, str, float]] = field(default_factory=list)
    error: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    batch_group: str | None = None  # set when trained together with other runs
    checkpoint: bytes | None = None


def run_id(config: Mapping[str, Any]) -> str:
    """Hash of the canonical JSON of a fully resolved config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def setting_label(config: Mapping[str, Any]) -> str:
    """An evaluation setting as ``name key=value ...`` (unset values left out)."""
    settings = " ".join(f"{k}={v}" for k, v in config.items() if k != "name" and v is not None)
    return f"{config['name']} {settings}".strip()
