"""What a nuisance search did at each shape: every setting's fate (won, trained to the end,
pruned at a rung, never started), the compute it spent against what the full grid would
have, and whether its winner sits at the edge of the range searched."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import PRUNED, PRUNED_RUNG
from ..store import StudyMeta
from .nuisance import best_over_nuisance, value_order


@dataclass
class SettingFate:
    """One nuisance setting of a shape, over its seeds."""

    nuisance: dict[str, Any]
    fate: str                 # won | completed | pruned at rung k | not started | diverged
    steps: int                # the most steps any of its seeds trained
    val_loss: float | None    # mean best validation loss of its seeds that trained
    run_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"nuisance": self.nuisance, "fate": self.fate, "steps": self.steps,
                "val_loss": self.val_loss, "run_ids": self.run_ids}


@dataclass
class ShapeSearch:
    """One shape's search: its settings, the compute spent, the full grid's, the edge flag."""

    point: dict[str, Any]
    settings: list[SettingFate]
    spent_flops: float
    grid_flops: float         # every setting to the end of its budget (an upper bound)
    at_edge: list[str]        # nuisance axes whose winner is the searched range's edge

    @property
    def saving(self) -> float | None:
        return self.grid_flops / self.spent_flops if self.spent_flops else None

    def to_dict(self) -> dict[str, Any]:
        return {"point": self.point, "settings": [s.to_dict() for s in self.settings],
                "spent_flops": self.spent_flops, "grid_flops": self.grid_flops,
                "saving": self.saving, "at_edge": self.at_edge}


@dataclass
class SearchAnalysis:
    """Every searched shape of a study, and the totals."""

    method: str
    shapes: list[ShapeSearch]

    @property
    def spent_flops(self) -> float:
        return sum(s.spent_flops for s in self.shapes)

    @property
    def grid_flops(self) -> float:
        return sum(s.grid_flops for s in self.shapes)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "spent_flops": self.spent_flops,
                "grid_flops": self.grid_flops, "shapes": [s.to_dict() for s in self.shapes]}


def analyze_search(records: Sequence[dict[str, Any]], meta: StudyMeta | dict
                   ) -> SearchAnalysis | None:
    """The search of a study whose runs a halving search pruned (None: nothing pruned)."""
    meta = StudyMeta.coerce(meta)
    if not meta.nuisance or not any(r.get("status") == PRUNED for r in records):
        return None
    scientific = meta.shape_axes
    _, winners = best_over_nuisance(records, scientific, meta.nuisance)
    won = {json.dumps(w.point, sort_keys=True, default=str): w for w in winners}
    shapes: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        shapes[tuple(r.get(a) for a in scientific)].append(r)
    out = []
    for key in sorted(shapes, key=lambda k: tuple(map(value_order, k))):
        point = dict(zip(scientific, key))
        winner = won.get(json.dumps(point, sort_keys=True, default=str))
        out.append(_shape(point, shapes[key], meta.nuisance, winner))
    return SearchAnalysis("halving", out)


def _shape(point: dict[str, Any], runs: list[dict], nuisance: Sequence[str], winner
           ) -> ShapeSearch:
    per_step = max((r.get("flops_per_step") or 0.0 for r in runs), default=0.0)
    budget = max((r.get("budget_steps") or r.get("steps") or 0 for r in runs), default=0)
    settings: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        settings[tuple(r.get(a) for a in nuisance)].append(r)
    fates = []
    for values in sorted(settings, key=lambda k: tuple(map(value_order, k))):
        members = settings[values]
        chosen = dict(zip(nuisance, values))
        losses = [r["val_loss"] for r in members if r.get("val_loss") is not None]
        fates.append(SettingFate(chosen, _fate(members, winner is not None and
                                                winner.nuisance == chosen),
                                 max(r.get("steps") or 0 for r in members),
                                 sum(losses) / len(losses) if losses else None,
                                 [r["run_id"] for r in members]))
    spent = sum(r.get("train_flops") or 0.0 for r in runs)
    grid = sum(r.get("train_flops") or 0.0 for r in runs if r.get("status") != PRUNED) + \
        sum(per_step * budget for r in runs if r.get("status") == PRUNED)
    return ShapeSearch(point, fates, spent, grid, winner.at_edge if winner else [])


def _fate(members: list[dict], won: bool) -> str:
    if won:
        return "won"
    pruned = [r.get(PRUNED_RUNG) for r in members if r.get("status") == PRUNED]
    if pruned and all(rung == 0 for rung in pruned):
        return "not started"
    if pruned:
        return f"pruned at rung {max(rung or 0 for rung in pruned)}"
    return "diverged" if all(r.get("status") == "diverged" for r in members) else "completed"
