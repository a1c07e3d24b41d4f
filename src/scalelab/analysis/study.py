"""Everything the report says about one study, computed from its stored runs.

Fits use each scientific point's per-shape optimum over the nuisance axes (chosen on
validation loss) and every seed of it as a separate point, so the bootstrap resamples runs.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ScalelabError
from .laws import (
    Bootstrap,
    LawFit,
    backtest,
    bootstrap,
    compute_optimal,
    fit_law,
    holdout_mask,
    select_form,
)
from .select import Winner, best_over_nuisance
from .selection import SelectionAnalysis, analyze_selection
from .stats import Comparison, compare

DATA_PATHS, METHOD_PATH = ("task.num_train", "task.num_train_tokens"), "method.name"


@dataclass
class FitEntry:
    """One fitted law with the points it was fitted on and its bootstrap."""

    title: str
    x_names: list[str]
    y_name: str
    x: np.ndarray
    y: np.ndarray
    fit: LawFit
    boot: Bootstrap
    grid: np.ndarray            # where the curve and band are drawn
    allocation: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "x": self.x_names, "y": self.y_name,
                **self.fit.to_dict(), "bootstrap_resamples": len(self.boot.samples),
                "bootstrap_failed": self.boot.failed, "ci_level": self.boot.level,
                "derived_intervals": {k: list(v) for k, v in self.boot.derived.items()},
                "allocation": self.allocation}


@dataclass
class StudyAnalysis:
    study: str
    metric: str             # fitted against size and data
    compare_metric: str     # of method comparisons
    size: str               # the model-size column
    counts: dict[str, int]
    compute: dict[str, float]
    scientific: list[str]
    nuisance: list[str]
    table: list[dict[str, Any]]
    winners: list[Winner]
    fits: list[FitEntry]
    comparisons: list[Comparison]
    notes: list[str]
    selected: list[dict[str, Any]]
    selection: SelectionAnalysis | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "metric": self.metric, "size": self.size,
                "counts": self.counts, "compute": self.compute,
                "scientific_axes": self.scientific, "nuisance_axes": self.nuisance,
                "fits": [f.to_dict() for f in self.fits],
                "winners": [w.to_dict() for w in self.winners],
                "comparisons": [c.to_dict() for c in self.comparisons], "notes": self.notes,
                "selection": self.selection.to_dict() if self.selection else None}


def per_shape_optimum(records: Sequence[dict[str, Any]], meta: dict[str, str]
                      ) -> tuple[list[dict[str, Any]], list[Winner]]:
    """The runs of each scientific point's best nuisance setting, per the store's meta."""
    axes, grid, nuisance = _axes(meta)
    return best_over_nuisance(records, [a for a in axes if a not in nuisance], nuisance, grid)


def _axes(meta: dict[str, str]) -> tuple[dict[str, str], dict[str, list], list[str]]:
    """(axis label -> config path, axis label -> grid values, nuisance labels) from meta."""
    return (json.loads(meta.get("axes", "{}")), json.loads(meta.get("grid", "{}")),
            json.loads(meta.get("nuisance", "[]")))


def analysis_settings(meta: dict[str, str]) -> dict[str, Any]:
    """The study's ``analysis:`` block as stored in meta (defaults for older stores)."""
    settings = {"metric": "test_loss", "compare_metric": "test_acc", "size": "n_params",
                "forms": ["auto"]}
    return settings | json.loads(meta.get("analysis", "{}"))


def analyze_study(records: Sequence[dict[str, Any]], meta: dict[str, str],
                  metric: str | None = None, compare_metric: str | None = None,
                  n_resamples: int = 1000) -> StudyAnalysis:
    """Per-shape optima, scaling-law fits and method comparisons of one stored study;
    ``metric`` and ``compare_metric`` default to the study's ``analysis:`` settings."""
    settings = analysis_settings(meta)
    metric = metric or settings["metric"]
    compare_metric = compare_metric or settings["compare_metric"]
    size = settings["size"]
    axes, grid, nuisance = _axes(meta)
    scientific = [a for a in axes if a not in nuisance]
    selected, winners = per_shape_optimum(records, meta)
    notes: list[str] = []
    for w in winners:
        if w.at_edge:
            notes.append(f"at {_fmt_point(w.point)} the best {', '.join(w.at_edge)} is at the "
                         "edge of its grid: widen the grid")
    model_axes = [a for a in scientific if axes[a].startswith("model.")]
    data_axis = next((a for a in scientific if axes[a] in DATA_PATHS), None)
    method_axis = next((a for a in scientific if axes[a] == METHOD_PATH), None)

    fits: list[FitEntry] = []
    if model_axes or data_axis:
        x_name, fixed = (size, model_axes) if model_axes else (data_axis, [data_axis])
        for key, rows in _groups(selected, [a for a in scientific if a not in fixed]).items():
            for form in settings["forms"] if model_axes else ["auto"]:
                fits.append(_attempt(notes, fit_rows, rows, [x_name], metric, key, n_resamples,
                                     form))
    if model_axes and data_axis:
        for key, rows in _groups(selected, [a for a in scientific
                                            if a not in model_axes and a != data_axis]).items():
            fits.append(_attempt(notes, fit_rows, rows, [size, data_axis], metric, key,
                                 n_resamples, "chinchilla"))
    fits = [f for f in fits if f is not None]

    comparisons: list[Comparison] = []
    selection = analyze_selection(records, compare_metric)
    if selection:  # selection studies compare each cell with its own baselines
        notes += selection.notes
    elif method_axis:
        values = [str(v) for v in grid.get(method_axis, [])]
        baseline = "standard" if "standard" in values else (values[0] if values else "")
        within = [a for a in scientific if a != method_axis]
        comparisons = _attempt(notes, compare, selected, compare_metric, method_axis, baseline,
                               "seed", within) or []

    done = [r for r in records if r.get("status") == "completed"]
    compute = {"train_flops": float(sum(r.get("train_flops", 0) for r in records)),
               "wall_time_s": float(sum(r.get("wall_time", 0) for r in records)),
               "samples_seen": float(sum(r.get("samples_seen", 0) for r in records))}
    return StudyAnalysis(
        study=meta.get("study", ""), metric=metric, compare_metric=compare_metric, size=size,
        counts=dict(Counter(r["status"] for r in records)),
        compute=compute, scientific=scientific, nuisance=nuisance,
        table=_results_table(selected, scientific, size, metric, compare_metric),
        winners=winners, fits=fits, comparisons=comparisons, notes=notes,
        selected=selected if done else [], selection=selection,
    )


def _attempt(notes: list[str], function, *args):
    """``function(*args)``, or None with the reason noted when the data cannot support it."""
    try:
        return function(*args)
    except ScalelabError as exc:
        notes.append(str(exc))
        return None


def _groups(rows: Sequence[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple((k, r[k]) for k in keys)].append(r)
    return dict(out)


def _fmt_point(point) -> str:
    items = point.items() if isinstance(point, dict) else point
    return ", ".join(f"{k}={v}" for k, v in items) or "all runs"


def fit_rows(rows: Sequence[dict[str, Any]], x_names: Sequence[str], metric: str,
             key: tuple = (), n_resamples: int = 1000, form: str = "auto",
             holdout: str | float = "largest") -> FitEntry:
    """Fit ``metric`` against the ``x_names`` columns of ``rows``, with bootstrap and backtest."""
    rows = [r for r in rows if r.get(metric) is not None]
    x = np.array([[float(r[n]) for n in x_names] for r in rows])
    y = np.array([float(r[metric]) for r in rows])
    title = (f"{metric} vs {' & '.join(x_names)}" + (f", form {form}" if form != "auto" else "")
             + (f" [{_fmt_point(key)}]" if key else ""))
    if len(np.unique(x[:, 0])) < 3:
        raise ScalelabError(f"{title}: needs at least 3 distinct {x_names[0]} values to fit")
    xs = x if len(x_names) > 1 else x[:, 0]
    if form == "auto":
        fit = select_form(xs, y, holdout=holdout)
    else:
        fit = fit_law(xs, y, form)
        try:
            fit.backtest = backtest(xs, y, form, holdout)
        except ScalelabError:
            fit.backtest = None  # too few points to hold any out; the report says so
    lo, hi = x[:, 0].min(), x[:, 0].max() * 2
    line = np.geomspace(lo, hi, 60)
    if len(x_names) == 1:
        grid = line
    else:
        grid = np.array([[n, d] for d in np.unique(x[:, 1]) for n in line])
    derived, allocation_budgets = {}, []
    if fit.form == "chinchilla":
        c_max = float(np.max(6 * x[:, 0] * x[:, 1]))
        allocation_budgets = [c_max, 10 * c_max, 100 * c_max]
        for i, c in enumerate(allocation_budgets):
            derived[f"N_opt[{i}]"] = lambda p, c=c: float(compute_optimal(p, [c])[0][0])
            derived[f"D_opt[{i}]"] = lambda p, c=c: float(compute_optimal(p, [c])[1][0])
    boot = bootstrap(fit, xs, y, n_resamples=n_resamples,
                     predict_at=grid, derived=derived)
    entry = FitEntry(title, list(x_names), metric, x, y, fit, boot, grid)
    if allocation_budgets:
        n_opt, d_opt = compute_optimal(fit.params, allocation_budgets)
        entry.allocation = [
            {"flops": c, "N_opt": float(n), "D_opt": float(d),
             "N_opt_ci": list(boot.derived[f"N_opt[{i}]"]),
             "D_opt_ci": list(boot.derived[f"D_opt[{i}]"])}
            for i, (c, n, d) in enumerate(zip(allocation_budgets, n_opt, d_opt))]
    return entry


def held_out(entry: FitEntry) -> np.ndarray:
    """Mask of the points the backtest held out."""
    if entry.fit.backtest is None:
        return np.zeros(len(entry.x), bool)
    return holdout_mask(entry.x, entry.fit.backtest.holdout)


def _results_table(rows, scientific, size, metric, second) -> list[dict[str, Any]]:
    out = []
    for key, group in _groups(rows, scientific).items():
        entry: dict[str, Any] = dict(key)
        entry[size] = group[0].get(size)
        for m in (metric, second):
            vals = [r[m] for r in group if r.get(m) is not None]
            entry[m] = float(np.mean(vals)) if vals else None
            entry[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        entry["runs"] = len(group)
        out.append(entry)
    return out
