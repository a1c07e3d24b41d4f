"""The extrapolation ledger graded: each prediction ``scalelab next`` stored, against the
runs it proposed once they exist, so the tool's own extrapolations are checked over time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .nuisance import best_over_nuisance


def grade(predictions: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
          meta: dict[str, str]) -> list[dict[str, Any]]:
    """Each prediction with ``measured`` (the mean over seeds of the proposed runs, at their
    best nuisance setting on validation, as the fit that made it used), ``runs`` measured
    and ``proposed``, ``status`` (pending, partial, measured) and ``held`` (the measured
    value inside the stored interval; None until measured)."""
    by_id = {r["run_id"]: r for r in records}
    nuisance = json.loads(meta.get("nuisance", "[]"))
    out = []
    for p in predictions:
        runs = [by_id[i] for i in p["run_ids"] if i in by_id]
        selected, _ = best_over_nuisance(runs, [], nuisance)
        values = [r[p["metric"]] for r in selected if r.get(p["metric"]) is not None]
        finished = sum(r.get("status") in ("completed", "diverged", "failed") for r in runs)
        measured = float(np.mean(values)) if values else None
        lo, hi = p["interval"]
        status = "pending" if measured is None else \
            "measured" if finished == len(p["run_ids"]) else "partial"
        out.append({**{k: v for k, v in p.items() if k not in ("law", "fitted_on")},
                    "measured": measured, "runs": len(values), "proposed": len(p["run_ids"]),
                    "status": status,
                    "held": None if measured is None else bool(lo <= measured <= hi)})
    return out


def scorecard(graded: Sequence[dict[str, Any]]) -> str:
    """One sentence: how many measured predictions held their interval."""
    done = [g for g in graded if g["status"] == "measured"]
    pending = len(graded) - len(done)
    if not done:
        return (f"{len(graded)} prediction(s) recorded; none measured yet (train the proposed "
                "runs: `scalelab next --append`, then `scalelab run`)")
    held = sum(g["held"] for g in done)
    level = int(round(100 * done[0]["level"]))
    text = f"{held} of {len(done)} measured prediction(s) fell inside their {level}% interval"
    if held < len(done):
        text += (" — the law extrapolates worse than its intervals claim; treat its "
                 "predictions at larger scale with suspicion")
    return text + (f"; {pending} not measured yet" if pending else "")
