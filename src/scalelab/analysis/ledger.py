"""The extrapolation ledger graded: each prediction ``scalelab next`` stored, against the
runs it proposed once they exist, so the tool's own extrapolations are checked over time.

A prediction is a loss and, where the study tunes settings with a law (analysis.hyperlaws),
each tuned setting's predicted best value too: graded the same way, measured value against
stored interval, with the optimum the proposed runs found when they tuned it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from ..store import StudyMeta
from .hyperlaws import shape_optimum
from .nuisance import best_over_nuisance


def grade(predictions: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
          meta: StudyMeta) -> list[dict[str, Any]]:
    """Each prediction with ``measured`` (the mean over seeds of the proposed runs, at their
    best nuisance setting on validation, as the fit that made it used), ``runs`` measured
    and ``proposed``, ``status`` (pending, partial, measured) and ``held`` (the measured
    value inside the stored interval; None until measured). A prediction with ``hyper``
    settings has each graded by :func:`grade_setting`."""
    by_id = {r["run_id"]: r for r in records}
    nuisance = StudyMeta.coerce(meta).nuisance
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
                    "held": None if measured is None else bool(lo <= measured <= hi),
                    **({"hyper": {axis: grade_setting(h, runs, nuisance, measured)
                                  for axis, h in p["hyper"].items()}} if p.get("hyper") else {})})
    return out


def grade_setting(predicted: dict[str, Any], runs: Sequence[dict[str, Any]],
                  nuisance: Sequence[str], loss: float | None) -> dict[str, Any]:
    """One predicted setting (``predicted``: as ``scalelab next`` stored it) against the
    proposed runs: ``found``, the optimum they found (interpolated as the law's own shapes
    were) where they tuned it over three values or more, else None; ``held``, that optimum
    inside the stored ``optimum_interval``: None while untuned or unmeasured, and None too
    when the optimum lies at the edge of the proposed values and so is only a bound that
    does not decide; ``loss``, the measured loss."""
    axis = predicted["axis"]
    tuned = len(predicted.get("proposed", [])) >= 3
    done = [r for r in runs if r.get("status") in ("completed", "diverged")]
    found = shape_optimum(done, {}, axis, nuisance) if tuned and done else None
    held = None
    if found is not None and loss is not None:
        lo, hi = predicted["optimum_interval"]
        if not found.at_edge:
            held = bool(lo <= found.optimum <= hi)
        elif found.best == max(found.values) and found.best > hi:  # the optimum is >= it
            held = False
        elif found.best == min(found.values) and found.best < lo:
            held = False
    return {**predicted, "tuned": tuned, "loss": loss, "held": held,
            "found": None if found is None else found.optimum,
            "found_at_edge": None if found is None else found.at_edge}


def setting_rows(graded: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The graded predictions of tuned settings, one row each, in the form
    :func:`calibration` and :func:`scorecard` read: ``status`` measured (every proposed run
    finished and ``held`` decided), bound (the optimum found is at the edge of the proposed
    values and does not decide), or pending. Settings the runs did not tune are left out:
    they are recorded with the runs' loss, never graded."""
    def status(g, h):
        if h["held"] is not None and g["status"] == "measured":
            return "measured"
        return "bound" if h["found_at_edge"] and g["status"] == "measured" else "pending"

    return [{**h, "status": status(g, h)} for g in graded
            for h in (g.get("hyper") or {}).values() if h["tuned"]]


#: A law is called over-confident when as many misses as it had, or more, would happen with
#: probability below this if its intervals were calibrated.
OVERCONFIDENT_P = 0.05


def calibration(graded: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How the measured predictions' hits compare with calibrated intervals (None if none is
    measured yet). With calibrated level-``q`` intervals each prediction misses with
    probability 1 - q, so the misses are Binomial(n, 1 - q) (a sum of Bernoullis when the
    levels differ): ``expected_held`` is n·q, ``p_value`` the one-sided probability of this
    many misses or more, and ``overconfident`` is p_value < OVERCONFIDENT_P. One miss in
    twenty at 95% is what calibration predicts (p = 0.64), not evidence against the law."""
    done = [g for g in graded if g["status"] == "measured"]
    if not done:
        return None
    levels = np.array([float(g["level"]) for g in done])
    held = sum(bool(g["held"]) for g in done)
    n, misses = len(done), len(done) - held
    if np.all(levels == levels[0]):
        p_value = float(stats.binom.sf(misses - 1, n, 1 - levels[0]))
    else:  # Poisson-binomial: the exact distribution of the miss count, one prediction at a time
        pmf = np.array([1.0])
        for q in levels:
            pmf = np.convolve(pmf, [q, 1 - q])
        p_value = float(min(1.0, pmf[misses:].sum()))
    return {"n": n, "held": held, "misses": misses, "levels": sorted(set(levels.tolist())),
            "expected_held": float(levels.sum()), "p_value": p_value,
            "overconfident": p_value < OVERCONFIDENT_P}


def scorecard(graded: Sequence[dict[str, Any]], what: str = "prediction(s)") -> str:
    """One sentence: how many measured predictions held their interval, against how many
    calibrated intervals would hold, and whether the misses are too many to be chance.
    ``what`` names them (the tuned settings' rows of :func:`setting_rows` are graded alike)."""
    c = calibration(graded)
    if c is None:
        return (f"{len(graded)} {what} recorded; none measured yet (train the proposed "
                "runs: `scalelab next --append`, then `scalelab run`)")
    pending = sum(g["status"] in ("pending", "partial") for g in graded)
    bounds = sum(g["status"] == "bound" for g in graded)
    level = "/".join(f"{100 * q:g}%" for q in c["levels"])
    text = (f"{c['held']} of {c['n']} measured {what} fell inside their {level} "
            f"interval (calibrated intervals would hold {c['expected_held']:.3g} on average")
    if not c["misses"]:
        text += ")"
    else:
        chance = (f"{c['misses']} or more misses of {c['n']} has probability "
                  f"p = {c['p_value']:.2g} if they are calibrated")
        if c["overconfident"]:
            text += (f"; {chance}) — the law extrapolates worse than its intervals claim; "
                     "treat its predictions at larger scale with suspicion")
        else:
            text += f"; {chance}) — no more misses than chance explains"
    return text + (f"; {pending} not measured yet" if pending else "") + (
        f"; {bounds} found at the edge of the values proposed, a bound that neither holds "
        "nor misses" if bounds else "")
