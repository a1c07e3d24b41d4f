"""Comparisons you can defend: paired and unpaired tests, effect sizes, CIs, Holm, power.

Wherever scipy computes a quantity, scipy computes it here (t-tests, Wilcoxon, bootstrap,
the noncentral t for power); this module adds the bookkeeping: which units pair up, effect
sizes, Holm's step-down adjustment across many configs against one baseline.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from ..errors import ScalelabError


@dataclass
class Comparison:
    """``candidate - baseline`` on one metric."""

    candidate: str
    baseline: str
    metric: str
    paired: bool
    n_candidate: int
    n_baseline: int
    mean_candidate: float
    mean_baseline: float
    mean_diff: float
    ci_low: float             # t-based CI of the mean difference
    ci_high: float
    t_statistic: float
    p_value: float            # paired t-test, or Welch's t-test when unpaired
    wilcoxon_p: float | None  # Wilcoxon signed-rank (paired only)
    effect_size: float        # Cohen's d_z (paired) or Hedges' g (unpaired)
    effect_name: str
    bootstrap_low: float
    bootstrap_high: float
    p_holm: float | None = None
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired(candidate: Sequence[float], baseline: Sequence[float], *, level: float = 0.95,
           n_resamples: int = 10_000, seed: int = 0, names=("candidate", "baseline"),
           metric: str = "") -> Comparison:
    """Paired comparison over matched units (same seeds, or the same models scored two ways)."""
    a, b = np.asarray(candidate, float), np.asarray(baseline, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ScalelabError("a paired comparison needs two equally long 1-D samples")
    if len(a) < 2:
        raise ScalelabError(f"a paired comparison needs at least 2 matched units, got {len(a)}")
    d = a - b
    statistic, p_value, low, high = paired_t(d, level)
    sd = 0.0 if _no_spread(d) else d.std(ddof=1)
    wilcoxon_p = 1.0 if np.all(d == 0) else float(stats.wilcoxon(a, b).pvalue)
    boot = _bootstrap((d,), np.mean, level, n_resamples, seed)
    return Comparison(
        names[0], names[1], metric, True, len(a), len(b), float(a.mean()), float(b.mean()),
        float(d.mean()), low, high, statistic, p_value, wilcoxon_p,
        float(d.mean() / sd) if sd > 0 else math.nan, "cohen_dz", *boot, level=level,
    )


def paired_t(d: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(t, p, CI low, CI high) of the mean of paired differences ``d`` (one-sample t-test).

    When every unit differs by the same amount (identical configs give 0) the t statistic is
    0/0 or ±inf and scipy would only warn about precision: the answer is given exactly."""
    d = np.asarray(d, dtype=float)
    if _no_spread(d):
        mean = float(d.mean())
        statistic, p_value = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
        return statistic, p_value, mean, mean
    test = stats.ttest_1samp(d, 0.0)
    ci = test.confidence_interval(level)
    return float(test.statistic), float(test.pvalue), float(ci.low), float(ci.high)


def _no_spread(values: np.ndarray) -> bool:
    """True when the values are equal up to floating-point noise."""
    return bool(np.ptp(values) <= 1e-12 * max(1.0, float(np.max(np.abs(values)))))


def unpaired(candidate: Sequence[float], baseline: Sequence[float], *, level: float = 0.95,
             n_resamples: int = 10_000, seed: int = 0, names=("candidate", "baseline"),
             metric: str = "") -> Comparison:
    """Welch's t-test and Hedges' g for independent samples."""
    a, b = np.asarray(candidate, float), np.asarray(baseline, float)
    if len(a) < 2 or len(b) < 2:
        raise ScalelabError("an unpaired comparison needs at least 2 values on each side")
    test = stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(level)
    boot = _bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), level,
                      n_resamples, seed)
    return Comparison(
        names[0], names[1], metric, False, len(a), len(b), float(a.mean()), float(b.mean()),
        float(a.mean() - b.mean()), float(ci.low), float(ci.high), float(test.statistic),
        float(test.pvalue), None, hedges_g(a, b), "hedges_g", *boot, level=level,
    )


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference with the small-sample correction J = 1 - 3/(4(na+nb)-9)."""
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.nan
    return float((1 - 3 / (4 * (na + nb) - 9)) * (a.mean() - b.mean()) / pooled)


def _bootstrap(samples, statistic, level, n_resamples, seed) -> tuple[float, float]:
    if all(np.ptp(s) == 0 for s in samples):  # no spread: the interval is the point
        value = float(statistic(*samples))
        return value, value
    result = stats.bootstrap(samples, statistic, confidence_level=level, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed),
                             paired=len(samples) == 1, vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def power(n: int, delta: float, sd: float, alpha: float = 0.05, is_paired: bool = True) -> float:
    """Power of a two-sided t-test with n units (paired) or n per group (unpaired)."""
    if is_paired:
        df, nc = n - 1, delta / sd * math.sqrt(n)
    else:
        df, nc = 2 * n - 2, delta / sd * math.sqrt(n / 2)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(delta: float, sd: float, target: float = 0.8, alpha: float = 0.05,
                 is_paired: bool = True, max_n: int = 100_000) -> int:
    """Smallest number of seeds (per group if unpaired) that detects ``delta`` with ``target`` power.

    ``sd`` is the standard deviation of the paired differences (paired) or of each group.
    """
    if delta == 0 or sd <= 0:
        raise ScalelabError("seeds_needed: delta must be non-zero and sd positive")
    n = 2
    while power(n, abs(delta), sd, alpha, is_paired) < target:
        n += 1
        if n > max_n:
            raise ScalelabError(f"more than {max_n} seeds would be needed")
    return n


class Comparisons(list):
    """The comparisons of :func:`compare`, and the cells it skipped for want of a baseline."""

    skipped: list[str]


def compare(records: Sequence[dict[str, Any]], metric: str, by: str, baseline: str,
            paired_by: str | None = "seed", within: Sequence[str] = (), level: float = 0.95,
            ) -> Comparisons:
    """Every value of ``by`` against ``baseline`` on ``metric``, within each group of ``within``.

    With ``paired_by`` (e.g. ``seed``), units are matched by that column and only units present
    on both sides are used; without it the samples are compared unpaired. Holm's adjustment
    runs over all comparisons returned. A baseline run without a value on a ``within`` column
    (``full`` has no ``target_rate``) is the baseline of every value of it; a cell left
    without a baseline is skipped and named in ``.skipped``.
    """
    groups: dict[tuple, dict[str, dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    shared: list[tuple[tuple, dict]] = []  # baseline rows missing some within values
    for r in records:
        if r.get(metric) is None or (r.get("status", "completed") != "completed"):
            continue
        if by not in r:
            raise ScalelabError(f"compare: no column {by!r} in the results")
        key = tuple(r.get(w) for w in within)
        label = str(r[by])
        if label == baseline and None in key:
            shared.append((key, r))
            continue
        _add(groups, values, key, label, r, metric, by, paired_by)
    for key, r in shared:
        matching = [k for k in values if all(a is None or a == b for a, b in zip(key, k))]
        for k in matching or [key]:
            if paired_by is not None and r.get(paired_by) in groups[k][baseline]:
                continue  # the cell has its own baseline for this unit: the closer match
            _add(groups, values, k, baseline, r, metric, by, paired_by)
    if not values:
        raise ScalelabError(f"compare: no completed results with a value for {metric!r}")
    comparisons, skipped = Comparisons(), []
    for key in values:
        labels = values[key]
        # a setting these runs do not have (None) is left out of their names
        cell = "".join(f" [{w}={k}]" if k is not None else f" [no {w}]"
                       for w, k in zip(within, key))
        named = "".join(f" [{w}={k}]" for w, k in zip(within, key) if k is not None)
        if set(labels) == {baseline}:
            continue  # baseline runs only (a baseline's own cell): nothing to compare
        if baseline not in labels:
            skipped.append(f"{cell.strip() or 'all results'}: no {by}={baseline} to compare "
                           f"with (values: {', '.join(sorted(labels))})")
            continue
        for label in labels:
            if label == baseline:
                continue
            name = label + named
            if paired_by is not None:
                units = sorted(set(groups[key][label]) & set(groups[key][baseline]), key=str)
                comparisons.append(paired(
                    [groups[key][label][u] for u in units],
                    [groups[key][baseline][u] for u in units],
                    level=level, names=(name, baseline), metric=metric))
            else:
                comparisons.append(unpaired(labels[label], labels[baseline], level=level,
                                            names=(name, baseline), metric=metric))
    if not comparisons:
        raise ScalelabError(f"compare: baseline {baseline!r} not found beside any other "
                            f"{by} ({'; '.join(skipped)})")
    comparisons.skipped = skipped
    for c, p in zip(comparisons, holm([c.p_value for c in comparisons])):
        c.p_holm = float(p)
    return comparisons


def _add(groups, values, key: tuple, label: str, r: dict, metric: str, by: str,
         paired_by: str | None) -> None:
    """File one result under its cell (``key``) and ``by`` value (``label``)."""
    if paired_by is not None:
        unit = r.get(paired_by)
        if unit in groups[key][label]:
            raise ScalelabError(f"compare: two results for {by}={label} and "
                                f"{paired_by}={unit}; add the axes that tell them apart "
                                "with --within")
        groups[key][label][unit] = float(r[metric])
    values[key][label].append(float(r[metric]))
