"""Evaluation settings compared paired by trained model, each against the first (baseline)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..records import run_id, setting_label
from .nuisance import at_edge, value_order
from .stats import Comparison, holm, paired, paired_t

TUNED = "tuned"  # the value a tuned setting shows in labels: chosen per shape


@dataclass
class EvaluationAnalysis:
    """Checkpoint evaluations of a study, their ``tune:`` settings tuned per shape on the
    validation twin of ``metric``: the rows and settings as tuned, the values chosen per shape
    (``tuned``), each setting's summary and paired comparison with the first, and, where
    model size is a scientific axis, each setting's gain per grid point (``gains``)."""

    metric: str
    tuned_on: str                       # the validation metric tuned settings are chosen on
    rows: list[dict[str, Any]]
    settings: list[dict[str, Any]]
    tuned: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    comparisons: list[Comparison]
    axes: list[str]                     # the shape axes (scientific, without the seed)
    gains: list[dict[str, Any]] | None = None


def analyze_evaluations(rows: Sequence[dict[str, Any]], settings: Sequence[dict[str, Any]],
                        records: Sequence[dict[str, Any]], shape_axes: Sequence[str],
                        metric: str, by_size: bool = False) -> EvaluationAnalysis:
    """Tune each ``tune:`` setting per shape on validation (:func:`tune_per_shape`), then
    compare every setting with the first (:func:`compare_evaluations`) and, ``by_size``,
    per grid point (:func:`gains_by_point`)."""
    axes, twin = list(shape_axes), validation_twin(metric)
    rows, settings, tuned = tune_per_shape(rows, settings, records, axes, twin)
    summary, comparisons = compare_evaluations(rows, settings, metric)
    gains = gains_by_point(rows, settings, records, axes, metric) if by_size else None
    return EvaluationAnalysis(metric, twin, list(rows), list(settings), tuned, summary,
                              comparisons, axes, gains)


def compare_evaluations(rows: Sequence[dict[str, Any]], settings: Sequence[dict[str, Any]],
                        metric: str = "test_acc", level: float = 0.95
                        ) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """(per-setting summary rows, comparisons with the first setting); Holm over all.

    ``settings`` are ``{"eval_id", "config"}`` in the study's order.
    """
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get(metric) is not None:
            values[r["eval_id"]][r["run_id"]] = float(r[metric])
    summary, comparisons = [], []
    base = settings[0]["eval_id"] if settings else None
    for s in settings:
        got = values.get(s["eval_id"], {})
        vals = list(got.values())
        summary.append({"setting": setting_label(s["config"]), "eval_id": s["eval_id"],
                        "models": len(vals), "mean": float(np.mean(vals)) if vals else None,
                        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None})
        if s["eval_id"] == base or base is None:
            continue
        units = sorted(set(got) & set(values.get(base, {})))
        if len(units) < 2:
            continue
        comparisons.append(paired([got[u] for u in units], [values[base][u] for u in units],
                                  level=level, metric=metric, n_resamples=2000,
                                  names=(setting_label(s["config"]),
                                         setting_label(settings[0]["config"]))))
    for c, p in zip(comparisons, holm([c.p_value for c in comparisons])):
        c.p_holm = float(p)
    return summary, comparisons


def _point_order(item) -> tuple:
    """Sort key of a (point, ...) pair: each coordinate by :func:`value_order`."""
    return tuple(value_order(v) for v in item[0])


def validation_twin(metric: str) -> str:
    """The validation metric that tunes settings compared on ``metric`` (test_acc -> val_acc)."""
    return "val_" + metric[len("test_"):] if metric.startswith("test_") else "val_loss"


def tune_per_shape(rows: Sequence[dict[str, Any]], settings: Sequence[dict[str, Any]],
                   records: Sequence[dict[str, Any]], axes: Sequence[str],
                   metric: str = "val_acc"
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluation settings with ``tune`` names become one setting tuned per shape.

    Settings of one ``evaluations`` entry that differ only in its tuned names (e.g. TTT's
    ``k`` and ``lr``) are nuisance axes: at each shape (the values of ``axes``, over seeds)
    the values with the best mean *validation* ``metric`` are kept (highest for an accuracy,
    lowest otherwise; ties go to the lower validation loss), and their rows stand for one
    setting labelled ``name k=tuned ...``. Tune on the validation twin of the metric you
    compare: a vote's cross-entropy, say, rewards large k while its accuracy falls. Returns
    (rows, settings, winners); without tuned settings the input comes back unchanged.
    """
    sign = -1.0 if metric.endswith("acc") else 1.0
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in settings:
        tune = s.get("tune") or []
        if tune:
            fixed = {k: v for k, v in s["config"].items() if k not in tune}
            groups[run_id({"fixed": fixed, "tune": sorted(tune)})].append(s)
    if not groups:
        return list(rows), list(settings), []
    by_run = {r["run_id"]: r for r in records}
    member_of = {s["eval_id"]: gid for gid, members in groups.items() for s in members}
    tuned = {gid: {"eval_id": f"tuned-{gid}", "tune": members[0]["tune"],
                   "config": {**members[0]["config"], **{t: TUNED for t in members[0]["tune"]}}}
             for gid, members in groups.items()}
    out_rows = [r for r in rows if r["eval_id"] not in member_of]
    out_settings = []
    for s in settings:  # each tuned group where its first member was
        gid = member_of.get(s["eval_id"])
        entry = s if gid is None else tuned[gid]
        if entry not in out_settings:
            out_settings.append(entry)
    winners = []
    for gid, members in groups.items():
        tune = members[0]["tune"]
        configs = {m["eval_id"]: m["config"] for m in members}
        shapes: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            run = by_run.get(r["run_id"])
            if r["eval_id"] in configs and run is not None and r.get(metric) is not None:
                shapes[tuple(run.get(a) for a in axes)][r["eval_id"]].append(r)
        for shape, candidates in sorted(shapes.items(), key=_point_order):
            def rank(e, candidates=candidates):
                runs = candidates[e]
                return (sign * np.mean([r[metric] for r in runs]),
                        np.mean([r.get("val_loss", np.nan) for r in runs]), e)

            best = min(candidates, key=rank)
            out_rows += [{**r, "eval_id": f"tuned-{gid}"} for r in candidates[best]]
            chosen = {t: configs[best][t] for t in tune}
            winners.append({
                "setting": setting_label(tuned[gid]["config"]), "point": dict(zip(axes, shape)),
                "chosen": chosen,
                metric: float(np.mean([r[metric] for r in candidates[best]])),
                "at_edge": [t for t, v in chosen.items()
                            if at_edge(v, sorted({c[t] for c in configs.values()}))]})
    return out_rows, out_settings, winners


def gains_by_point(rows: Sequence[dict[str, Any]], settings: Sequence[dict[str, Any]],
                   records: Sequence[dict[str, Any]], axes: Sequence[str],
                   metric: str = "test_acc", level: float = 0.95) -> list[dict[str, Any]]:
    """Per grid point (the scientific ``axes``) and setting: mean ``metric`` and its error,
    and the difference to the first setting paired by trained model, with a per-point
    (unadjusted) t-based CI and a paired t-test p, Holm-adjusted over every point × setting."""
    if not settings:
        return []
    by_run = {r["run_id"]: r for r in records}
    base = settings[0]["eval_id"]
    cells: dict[tuple, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        run = by_run.get(r["run_id"])
        if run is None or r.get(metric) is None:
            continue
        cells[tuple(run.get(a) for a in axes)][r["eval_id"]][r["run_id"]] = float(r[metric])
    out = []
    for point, per_setting in sorted(cells.items(), key=_point_order):
        size = next((by_run[u].get("n_params") for u in per_setting.get(base, {})), None)
        for s in settings:
            got = per_setting.get(s["eval_id"], {})
            if not got:
                continue
            units = sorted(set(got) & set(per_setting.get(base, {})))
            diffs = np.array([got[u] - per_setting[base][u] for u in units])
            entry = {**dict(zip(axes, point)), "n_params": size,
                     "setting": setting_label(s["config"]), "runs": len(got),
                     "mean": float(np.mean(list(got.values()))),
                     "gain": float(diffs.mean()) if len(diffs) else None,
                     "gain_low": None, "gain_high": None, "p": None, "p_holm": None}
            if len(diffs) > 1 and s["eval_id"] != base:
                _, entry["p"], entry["gain_low"], entry["gain_high"] = paired_t(diffs, level)
            out.append(entry)
    tested = [g for g in out if g["p"] is not None]
    for g, p in zip(tested, holm([g["p"] for g in tested])):
        g["p_holm"] = float(p)
    return out
