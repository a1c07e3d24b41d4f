"""Evaluation settings compared paired by trained model, each against the first (baseline)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluation._base import setting_label
from .stats import Comparison, holm, paired


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
