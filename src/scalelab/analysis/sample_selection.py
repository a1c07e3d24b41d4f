"""What a sample-selection study shows: each method and rate against its fair baselines.

Every selection cell (method, target rate, scoring) is compared, paired by seed, with full
data at the same steps, with the compute-matched full run and with a random subset at the
same rate; Holm's adjustment runs over all of those tests together. Compute is what the
runs counted (scored and trained samples times counted per-sample FLOPs), wall time what
they measured.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ScalelabError
from .stats import Comparison, holm, paired

KINDS = {"equal_compute": "full, compute-matched", "equal_steps": "full, same steps",
         "random": "random, same rate"}


@dataclass
class SelectionCell:
    method: str
    rate: float
    scoring: str | None
    seeds: int
    metric_mean: float
    metric_std: float | None
    compute_fraction: float | None     # realized training FLOPs / full data at the same steps
    wall_fraction: float | None        # measured training wall time / full at the same steps
    activation: tuple[float, float] | None  # min and max over seeds of the 2nd-half rate
    matched_compute: float | None = None     # the compute-matched run's compute fraction
    controller: dict[str, float | None] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    flops: float | None = None               # mean realized training FLOPs
    class_diffs: list[tuple] = field(default_factory=list)  # see _class_diffs
    context: dict[str, Any] = field(default_factory=dict)  # the other settings that vary
    same_as: list[str] = field(default_factory=list)  # cells whose runs came out identical
    energy_fraction: float | None = None  # measured energy / full at the same steps
    controller_name: str | None = None    # the threshold controller (AST), see controller_of

    @property
    def label(self) -> str:
        where = f" [{_fmt_context(self.context)}]" if self.context else ""
        same = "".join(f" = {other}" for other in self.same_as)
        return cell_name(self.method, self.rate, self.scoring, self.controller_name) \
            + same + where

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "rate": self.rate, "scoring": self.scoring,
                "controller_name": self.controller_name,
                "context": self.context, "same_as": self.same_as,
                "seeds": self.seeds, "metric_mean": self.metric_mean,
                "metric_std": self.metric_std, "compute_fraction": self.compute_fraction,
                "wall_fraction": self.wall_fraction, "energy_fraction": self.energy_fraction,
                "activation_2nd_half": self.activation,
                "matched_compute_fraction": self.matched_compute,
                "controller": self.controller,
                "comparisons": {k: c.to_dict() for k, c in self.comparisons.items()},
                "class_diffs_vs_matched": [
                    {"class": c, "diff": d, "ci_low": lo, "ci_high": hi, "p": p, "p_holm": ph}
                    for c, d, lo, hi, p, ph in self.class_diffs]}


@dataclass
class SelectionAnalysis:
    metric: str
    cells: list[SelectionCell]
    points: list[dict[str, Any]]   # every cell and baseline: mean compute and metric (Pareto)
    notes: list[str]
    front: list[dict[str, Any]] = field(default_factory=list)  # the points on the Pareto front
    traces: list[TraceSet] = field(default_factory=list)       # per-step traces to plot

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "cells": [c.to_dict() for c in self.cells],
                "points": self.points, "front": [p["label"] for p in self.front],
                "notes": self.notes}


@dataclass
class TraceSet:
    """One method's declared per-step traces (name -> (label, reference curve)) and the runs
    to plot them for: the first seed's completed run of each of its cells."""

    method: str
    declared: dict[str, Any]
    runs: dict[str, dict[str, Any]]   # run id -> its record
    labels: dict[str, str]            # run id -> its cell's label


def trace_sets(records: Sequence[dict[str, Any]], declared: Mapping[str, Mapping[str, Any]]
               ) -> list[TraceSet]:
    """The traces each method declares, for the first seed's run of every cell."""
    first_seed = min((r.get("seed") for r in records), default=None, key=repr)
    sets = []
    for method, traces in sorted(declared.items()):
        runs = {r["run_id"]: r for r in records if r.get("method.name") == method
                and r.get("seed") == first_seed and r.get("status") == "completed"}
        if traces and runs:
            labels = {i: cell_name(r["method.name"], r["method.target_rate"],
                                   r.get("method.scoring"), controller_of(r))
                      for i, r in runs.items()}
            sets.append(TraceSet(method, dict(traces), runs, labels))
    return sets


def cell_name(method: str, rate: float, scoring: str | None, controller: str | None) -> str:
    """``method@rate (scoring, controller)`` of a selection cell."""
    details = ", ".join(d for d in (scoring, controller and f"{controller} controller") if d)
    return f"{method}@{rate:g}" + (f" ({details})" if details else "")


def controller_of(r: dict[str, Any]) -> str | None:
    """The threshold controller a run used (AST's ``pi`` or ``reference``), as its summary
    recorded it; a run with controller metrics but no name predates the choice, when the
    PI controller was the only one."""
    return r.get("controller") or ("pi" if r.get("overshoot") is not None else None)


def _is_selection(r: dict[str, Any]) -> bool:
    return r.get("method.target_rate") is not None


#: Config sections that are not the selection method: every setting in them keys a cell.
CONTEXT_SECTIONS = ("task.", "model.", "train.")
#: Method settings that name the cell or its baselines rather than distinguishing cells.
ROLE_SETTINGS = ("method.name", "method.target_rate", "method.scoring", "method.match_rate",
                 "method.match_scoring")


def _context(r: dict[str, Any]) -> tuple:
    """Every non-method setting of a run (task, model, training): runs are only compared
    with baselines that share all of them."""
    return tuple(sorted((k, repr(v)) for k, v in r.items() if k.startswith(CONTEXT_SECTIONS)))


def _role(r: dict[str, Any], roles: dict[str, str | None]) -> tuple:
    """What the run is in the comparison; ``roles`` is what each method declares
    (``Method.comparison_role``, recorded with the study)."""
    name = r.get("method.name")
    context = _context(r)
    if _is_selection(r):
        # other method settings (controller gains, weights, ...) distinguish cells too
        extra = tuple(sorted((k, repr(v)) for k, v in r.items()
                             if k.startswith("method.") and k not in ROLE_SETTINGS))
        return ("cell", context, name, r["method.target_rate"], r.get("method.scoring"), extra)
    if roles.get(name) == "full" and r.get("method.match_rate") is not None:
        return ("matched", context, bool(r.get("method.match_scoring")), r["method.match_rate"])
    if roles.get(name) == "full":
        return ("full", context)
    return ("other", context, name)


def _varying(keys: Sequence[tuple]) -> list[str]:
    """Settings whose value differs between the given contexts."""
    values: dict[str, set] = defaultdict(set)
    for context in keys:
        for k, v in context:
            values[k].add(v)
    return sorted(k for k, vs in values.items() if len(vs) > 1)


def _fmt_context(context: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in context.items())


def _selection_cell(role: tuple, by_role: dict[tuple, dict[Any, dict]],
                    roles: dict[str, str | None], controls: list[str], varying: list[str],
                    metric: str, level: float, notes: list[str],
                    timing: dict[str, set]) -> SelectionCell:
    """One selection cell (``role``) and its comparisons with each of its baselines;
    ``timing`` collects the contexts whose full-data runs are missing, trained stacked,
    or trained alone on the stacked loop."""
    _, context, method, rate, scoring, _extra = role
    full = by_role.get(("full", context), {})
    full_flops = _mean(full.values(), "train_flops")
    # Wall time compares like with like: selection runs train alone, so only full runs
    # that also trained alone (not a stacked group's per-run share) are a time baseline.
    full_wall = _mean([r for r in full.values() if (r.get("group_size") or 1) == 1],
                      "wall_time")
    if full and full_wall is None:
        timing["stacked_full"].add(context)
    elif any(r.get("group_size") == 1 for r in full.values()):
        timing["other_loop"].add(context)
    if not full:
        timing["missing_full"].add(context)
    runs = by_role[role]
    values = [r[metric] for r in runs.values()]
    cell = SelectionCell(
        method, rate, scoring, len(runs), float(np.mean(values)),
        float(np.std(values, ddof=1)) if len(values) > 1 else None,
        _mean(runs.values(), "train_flops") / full_flops if full_flops else None,
        _mean(runs.values(), "wall_time") / full_wall if full_wall else None,
        _range(runs.values(), "activation_rate_2nd_half"),
        controller={k: _mean(runs.values(), k) for k in ("settling_step", "overshoot",
                                                          "steady_state_error")
                    if any(r.get(k) is not None for r in runs.values())},
        context={k: v for k, v in dict(context).items() if k in varying},
        controller_name=next((controller_of(r) for r in runs.values()
                              if controller_of(r)), None))
    # Energy as measured by the hardware's counters (never derived), where both the
    # cell's runs and the full runs were measured alone.
    full_energy = _mean([r for r in full.values() if (r.get("group_size") or 1) == 1],
                        "energy_j")
    cell_energy = _mean(runs.values(), "energy_j")
    if full_energy and cell_energy is not None:
        cell.energy_fraction = cell_energy / full_energy
    scores = any((r.get("samples_scored") or 0) > 0 for r in runs.values())
    partners = {"equal_compute": by_role.get(("matched", context, scores, rate), {}),
                "equal_steps": full,
                "random": {} if roles.get(method) == "random" else next(
                    (by_role[("cell", context, name, rate, None, ())] for name in controls
                     if ("cell", context, name, rate, None, ()) in by_role), {})}
    for kind, baseline in partners.items():
        seeds = sorted(set(runs) & set(baseline), key=str)
        if len(seeds) < 2:
            continue
        try:
            cell.comparisons[kind] = paired(
                [runs[s][metric] for s in seeds], [baseline[s][metric] for s in seeds],
                level=level, names=(cell.label, KINDS[kind]), metric=metric,
                n_resamples=2000)
        except ScalelabError as exc:
            notes.append(f"{cell.label} vs {KINDS[kind]}: {exc}")
    cell.flops = _mean(runs.values(), "train_flops")
    cell.class_diffs = _class_diffs(runs, partners["equal_compute"], level)
    matched_flops = _mean(partners["equal_compute"].values(), "train_flops")
    if matched_flops and full_flops:
        cell.matched_compute = matched_flops / full_flops
        if abs(cell.compute_fraction / cell.matched_compute - 1) > 0.1:
            notes.append(
                f"{cell.label} spent {cell.compute_fraction:.2f} of full compute, its "
                f"compute-matched run {cell.matched_compute:.2f} (planned from the target "
                "rate): that equal-compute comparison is not matched; compare on the "
                "Pareto figure instead")
    return cell

def analyze_selection(records: Sequence[dict[str, Any]], roles: dict[str, str | None],
                      metric: str = "test_acc", level: float = 0.95,
                      traces: Mapping[str, Mapping[str, Any]] | None = None
                      ) -> SelectionAnalysis | None:
    """Selection cells against their baselines; None when the study has no selection runs.
    ``roles``: each method's declared comparison role (``full``, ``random`` or None);
    ``traces``: the per-step traces each method declares (to pick the runs to plot)."""
    done = [r for r in records if r.get("status") == "completed" and r.get(metric) is not None]
    if not any(_is_selection(r) for r in done):
        return None
    by_role: dict[tuple, dict[Any, dict]] = defaultdict(dict)
    # in seed order, so every mean sums in the same order whatever order the store returns
    for r in sorted(done, key=lambda r: (repr(r.get("seed")), str(r.get("run_id")))):
        by_role[_role(r, roles)][r.get("seed")] = r
    varying = _varying([role[1] for role in by_role])
    controls = sorted(name for name, role in roles.items() if role == "random")
    notes: list[str] = []
    cells: list[SelectionCell] = []
    fingerprints: list[tuple] = []
    timing: dict[str, set] = {"missing_full": set(), "stacked_full": set(),
                              "other_loop": set()}
    for role in sorted((k for k in by_role if k[0] == "cell"), key=repr):
        cells.append(_selection_cell(role, by_role, roles, controls, varying, metric, level,
                                     notes, timing))
        runs = by_role[role]
        fingerprints.append((role[1], role[2], tuple(sorted(
            (repr(seed), r[metric], r.get("train_flops")) for seed, r in runs.items()))))
    cells = _collapse_identical(cells, fingerprints, notes)
    all_comparisons = [c for cell in cells for c in cell.comparisons.values()]
    if timing["stacked_full"]:
        notes.append("wall-time fractions are left out where the full-data runs trained stacked "
                     "(several runs as one model, each stored with a share of the group's time) "
                     "while selection runs train alone: set `stack_runs: off` to time them alike")
    if timing["other_loop"]:
        notes.append("wall-time fractions compare selection runs (single-run loop) with full-data "
                     "runs trained alone on the stacked loop (a group of one, so that their "
                     "numbers match batched training): both timed whole, but the two loops' "
                     "per-step speeds differ a little")
    if timing["missing_full"]:
        notes.append("no full-data run at the same steps for some cells: add `baselines: "
                     "[full]`; their compute fractions are left out")
    for c, p in zip(all_comparisons, holm([c.p_value for c in all_comparisons])):
        c.p_holm = float(p)
    points = [{"label": cell.label, "method": cell.method, "flops": cell.flops,
               "metric": cell.metric_mean} for cell in cells]
    for role in sorted(by_role, key=repr):
        if role[0] in ("full", "matched"):
            runs = by_role[role]
            context = {k: v for k, v in dict(role[1]).items() if k in varying}
            where = f" [{_fmt_context(context)}]" if context else ""
            label = "full" if role[0] == "full" else \
                f"full≈{'scoring' if role[2] else 'non-scoring'}@{role[3]:g}"
            points.append({"label": label + where, "method": "full",
                           "flops": _mean(runs.values(), "train_flops"),
                           "metric": _mean(runs.values(), metric)})
    return SelectionAnalysis(metric, cells, points, notes, pareto_front(points),
                             trace_sets(records, traces or {}))


def _collapse_identical(cells: list[SelectionCell], fingerprints: list[tuple],
                        notes: list[str]) -> list[SelectionCell]:
    """One cell for settings whose runs came out identical (same metric and compute for every
    seed, e.g. rates a capped method cannot reach): counted once in tables and in Holm."""
    kept: dict[tuple, SelectionCell] = {}
    for cell, fingerprint in zip(cells, fingerprints):
        first = kept.get(fingerprint)
        if first is None:
            kept[fingerprint] = cell
            continue
        notes.append(f"{cell.label} gave exactly the runs of {first.label} (same {cell.seeds} "
                     "seeds, same results and compute): shown and tested once")
        first.same_as.append(f"@{cell.rate:g}" + (f" ({cell.scoring})" if cell.scoring else ""))
        for comparison in first.comparisons.values():
            comparison.candidate = first.label
    return list(kept.values())


def pareto_front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both less compute and a higher metric."""
    ordered = sorted(points, key=lambda p: (p["flops"], -p["metric"]))
    front, best = [], -np.inf
    for p in ordered:
        if p["metric"] > best:
            front.append(p)
            best = p["metric"]
    return front


def _class_diffs(runs: dict, baseline: dict, level: float) -> list[tuple]:
    """Per-class test accuracy difference to the baseline, paired by seed: (class, mean
    difference, t CI low, high, p, Holm-adjusted p over the cell's classes), in class order;
    a class is its name where the task recorded names (image folders, CIFAR), else its
    index. The CIs are unadjusted (exploratory); which classes gain or lose is decided on
    the Holm p."""
    seeds = sorted(set(runs) & set(baseline), key=str)
    if len(seeds) < 2 or not all(runs[s].get("test_acc_by_class") and
                                 baseline[s].get("test_acc_by_class") for s in seeds):
        return []
    a = np.array([runs[s]["test_acc_by_class"] for s in seeds], dtype=float)
    b = np.array([baseline[s]["test_acc_by_class"] for s in seeds], dtype=float)
    names = runs[seeds[0]].get("class_names") or list(range(a.shape[1]))
    out = []
    for c in range(a.shape[1]):
        comparison = paired(a[:, c], b[:, c], level=level, n_resamples=200)
        out.append((names[c], comparison.mean_diff, comparison.ci_low, comparison.ci_high,
                    comparison.p_value))
    adjusted = holm([p for *_, p in out])
    return [(*row, float(p)) for row, p in zip(out, adjusted)]


def _mean(rows, key) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _range(rows, key) -> tuple[float, float] | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return (float(min(vals)), float(max(vals))) if vals else None
