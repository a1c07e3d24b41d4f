"""Nuisance search: how the nuisance settings (learning rate, ...) of each shape are tried.

``grid`` trains every setting to the end. ``halving`` is asynchronous successive halving
(ASHA, Li et al. 2018) in the stop-early form of Ray Tune's ``AsyncHyperBandScheduler`` (a
run is stopped at a rung, never paused), with its own cutoff: Ray keeps a trial whose result
beats the ``1 - 1/eta`` percentile of those recorded before it (``np.nanpercentile``);
here a setting, over its seeds, is kept by rank. Every setting of a shape starts; at rungs
``eta`` times apart in steps (the first at the budget / eta^rungs, each on the evaluation
cadence, so a survivor is evaluated exactly as a run trained without the search), a run's
setting trains on only if its mean validation loss over the seeds recorded there is among
the best ``max(1, floor(n / eta))`` of the ``n`` settings of its shape that have reached
that rung, or within ``margin`` standard errors over seeds of the last one kept
(:func:`promote`); the rest stop and are stored ``pruned`` with their curve up to the rung.
The store holds the rung records and each setting's decision, made once, so every runner,
executor and retry after a kill follows the same one.

``start: law`` seeds the search with scale: a shape's settings start only within a
``window`` of grid values centred on what a power law of the best value against parameter
count, fitted on the already searched smaller shapes, predicts for it (the grid while fewer
than two sizes are searched); a winner on the window's edge brings in the next grid value
beyond it. Values never started are stored ``pruned`` at rung 0.

``tpe`` searches continuous ranges (``lr: {log_range: [lo, hi]}``) with Optuna's TPE
sampler (:func:`suggest`): in rounds, one trial per shape each, proposed from that shape's
stored trials; the runner's side is ``runner/searches.py``.

Run ids do not change: a search decides which runs train how far, never what a run is.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .analysis.hyperlaws import PowerLaw, fit_power
from .analysis.nuisance import best_over_nuisance
from .errors import ScalelabError
from .records import PRUNED, PRUNED_RUNG, RunResult, RunSpec
from .store import Store


def shape_key(point: Mapping[str, Any], nuisance: Sequence[str]) -> str:
    """The cohort a run is ranked in: its grid point without seed and nuisance values."""
    return json.dumps({k: v for k, v in point.items() if k != "seed" and k not in nuisance},
                      sort_keys=True, default=str)


def setting_key(point: Mapping[str, Any], nuisance: Sequence[str]) -> str:
    """What is kept or pruned: a run's nuisance values (all its seeds share the decision)."""
    return json.dumps({k: point.get(k) for k in nuisance}, sort_keys=True, default=str)


def rung_steps(total: int, eval_every: int, eta: int, rungs: int) -> dict[int, int]:
    """Step -> rung (from 1): budget / eta^k for k = rungs..1, rounded to the evaluation
    cadence (at least one evaluation in), strictly before the budget's end."""
    out: dict[int, int] = {}
    for k in range(rungs, 0, -1):
        step = max(eval_every, round(total / eta ** k / eval_every) * eval_every)
        if step < total and step not in out:
            out[step] = len(out) + 1
    return out


def promote(losses: Mapping[str, Sequence[float]], setting: str, eta: int,
            margin: float = 1.0, unstarted: int = 0) -> tuple[bool, int, int]:
    """(whether ``setting`` trains on, its rank from 1 by mean loss, the cohort's size).

    The best ``max(1, floor(n / eta))`` of the ``n`` settings go on (ties: setting order;
    the first to reach a rung always does; ``unstarted``: settings of the shape a law-seeded
    start left out, counted in the first rung's ``n`` as the losers they are), and so does any
    setting whose mean is within ``margin`` standard errors (over seeds) of the last one
    kept: seeds that cannot tell two settings apart at a rung do not decide between them.
    Early in training a larger learning rate often trails a smaller one it later beats (the
    short-horizon bias), by less than the seeds' spread; plain ASHA (``margin`` 0) prunes it
    there."""
    means = {k: float(np.mean(v)) for k, v in losses.items()}
    order = sorted(means, key=lambda k: (means[k], k))
    rank, keep = order.index(setting), max(1, (len(order) + unstarted) // eta)
    if rank < keep:
        return True, rank + 1, len(order)
    keep = min(keep, len(order))
    last = order[keep - 1]
    gap = means[setting] - means[last]
    spread = math.sqrt(_sq_error(losses[setting]) + _sq_error(losses[last]))
    return bool(margin and math.isfinite(gap) and gap <= margin * spread), rank + 1, len(order)


def _sq_error(values: Sequence[float]) -> float:
    """The squared standard error of a mean over seeds (0 with one seed: no spread known)."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return 0.0
    return float(np.var(values, ddof=1)) / len(values)


class Board(Protocol):
    """Where a search's rung records are kept and its decisions made."""

    def record_rung(self, rung: int, step: int, entries: list[tuple[str, str, str, float]],
                    eta: int, margin: float, unstarted: Mapping[str, int]
                    ) -> dict[str, bool]: ...


@dataclass(frozen=True)
class StoreBoard:
    """The study's store itself, opened by whichever process reaches a rung (a worker on the
    machine that holds the output directory)."""

    path: Path

    def record_rung(self, rung: int, step: int, entries: list[tuple[str, str, str, float]],
                    eta: int, margin: float, unstarted: Mapping[str, int]
                    ) -> dict[str, bool]:
        def decide(losses, setting, shape):  # the unstarted lost at the first rung only
            return promote(losses, setting, eta, margin,
                           unstarted.get(shape, 0) if rung == 1 else 0)

        with Store(self.path) as store:
            return store.record_rung(rung, step, entries, decide)


@dataclass(frozen=True)
class RungPlan:
    """What a training needs to take part in a halving search: the board, the rule's
    ``eta`` and ``margin``, the number of rungs, each run's (shape, setting), and how many
    settings of each shape a law-seeded start left out."""

    board: Board
    eta: int
    rungs: int
    keys: Mapping[str, tuple[str, str]]
    margin: float = 1.0
    unstarted: Mapping[str, int] = field(default_factory=dict)

    def gate(self, run_ids: Sequence[str]) -> RungGate:
        return RungGate(self, list(run_ids))


@dataclass
class RungGate:
    """The training loop's side of a search: at which steps to report, and which of the
    runs trained together stop there."""

    plan: RungPlan
    run_ids: list[str]

    def steps(self, total: int, eval_every: int) -> dict[int, int]:
        return rung_steps(total, eval_every, self.plan.eta, self.plan.rungs)

    def decide(self, rung: int, step: int, losses: Mapping[int, float]) -> set[int]:
        """Report the runs' (by index) best validation losses so far; the indices to stop."""
        entries = [(self.run_ids[r], *self.plan.keys[self.run_ids[r]], loss)
                   for r, loss in losses.items()]
        keep = self.plan.board.record_rung(rung, step, entries, self.plan.eta,
                                           self.plan.margin, self.plan.unstarted)
        return {r for r in losses if not keep[self.run_ids[r]]}


def plan_for(runs: Iterable[RunSpec], nuisance: Sequence[str], board: Board, eta: int,
             rungs: int, margin: float = 1.0) -> RungPlan:
    """The rung plan of ``runs`` (every run of the study: keys are looked up by id)."""
    return RungPlan(board, eta, rungs, {r.run_id: (shape_key(r.point, nuisance),
                                                   setting_key(r.point, nuisance))
                                        for r in runs}, margin)


def not_started(run: RunSpec, why: str) -> RunResult:
    """The stored result of a run a law-seeded search never started."""
    return RunResult(PRUNED, metrics={PRUNED_RUNG: 0, "steps": 0, "train_flops": 0.0,
                                      "pruned_reason": why})


# ------------------------------------------------------------------ law-seeded starts


def law_axis(grid: Mapping[str, Sequence[Any]], nuisance: Sequence[str]) -> str | None:
    """The first nuisance axis whose values are all positive numbers (the one a law of the
    best value against size can predict), or None."""
    for axis in nuisance:
        values = grid.get(axis, [])
        if values and all(isinstance(v, Real) and not isinstance(v, bool) and v > 0
                          for v in values):
            return axis
    return None


def fit_seed_law(records: Sequence[dict[str, Any]], scientific: Sequence[str],
                 nuisance: Sequence[str], axis: str, below: float) -> PowerLaw | None:
    """The hyperparameter law (value = k·N^p, :func:`.analysis.hyperlaws.fit_power`) through
    the winning ``axis`` value of every stored shape with fewer than ``below`` parameters;
    None with fewer than two sizes. Winners, not interpolated optima: under halving only the
    winner of a shape trains to the end, so there are no neighbours to interpolate through."""
    smaller = [r for r in records if r.get("n_params") and r["n_params"] < below]
    _, winners = best_over_nuisance(smaller, scientific, nuisance)
    sizes = {tuple(r.get(a) for a in scientific): float(r["n_params"]) for r in smaller}
    points = [(sizes[tuple(w.point.get(a) for a in scientific)], float(w.nuisance[axis]))
              for w in winners]
    if len({n for n, _ in points}) < 2:
        return None
    n, value = (np.array(column) for column in zip(*points))
    return fit_power(n, value, np.empty((0, len(n))), "n_params", 0.95,
                     np.random.default_rng(0))


def window(values: Sequence[float], centre: float, width: int) -> list[float]:
    """The ``width`` grid values nearest ``centre`` in log distance (contiguous in order)."""
    ordered = sorted(values)
    nearest = sorted(ordered, key=lambda v: (abs(math.log(v / centre)), v))[:width]
    return [v for v in ordered if v in nearest]


def widen(values: Sequence[float], started: Sequence[float], best: float) -> float | None:
    """The next grid value beyond the started range when the winner ``best`` sits on its
    edge (None: inside, or the grid's own edge)."""
    ordered, lo, hi = sorted(values), min(started), max(started)
    i = ordered.index(best)
    if best == lo and i > 0:
        return ordered[i - 1]
    if best == hi and i + 1 < len(ordered):
        return ordered[i + 1]
    return None


@dataclass
class LawStart:
    """One shape's law-seeded start: the values started so far and the prediction."""

    shape: str
    predicted: float | None
    started: list[float]
    runs: list[RunSpec] = field(default_factory=list)


def law_starts(runs: Sequence[RunSpec], records: Sequence[dict[str, Any]],
               scientific: Sequence[str], nuisance: Sequence[str], axis: str, width: int,
               size_of: Callable[[RunSpec], float]) -> dict[str, LawStart]:
    """For each shape of ``runs``: the law fitted on the stored shapes smaller than it, its
    prediction, and the window of ``axis`` values to start (all of them without a law)."""
    by_shape: dict[str, list[RunSpec]] = defaultdict(list)
    for r in runs:
        by_shape[shape_key(r.point, nuisance)].append(r)
    laws: dict[float, PowerLaw | None] = {}  # one fit per size (a wave's shapes share it)
    out = {}
    for shape, members in by_shape.items():
        values = sorted({float(r.point[axis]) for r in members})
        size = size_of(members[0])
        if size not in laws:
            laws[size] = fit_seed_law(records, scientific, nuisance, axis, size)
        law = laws[size]
        predicted = law.predict(size)["value"] if law else None
        started = window(values, predicted, width) if predicted else values
        out[shape] = LawStart(shape, predicted, started, members)
    return out


# ------------------------------------------------------------------ model-based (tpe)


def suggest(history: Sequence[tuple[dict[str, float], float | None]],
            ranges: Mapping[str, Any], seed: int, startup: int) -> dict[str, float]:
    """The values Optuna's TPE sampler proposes next for a shape, given its finished trials
    ((values, mean validation loss over seeds); None: a trial that diverged), each value
    kept to 3 significant digits (a run's config, and its id, read as a person would write
    it). ``ranges``: label -> :class:`scalelab.spec.ValueRange`. The sampler is seeded, so
    the same history gives the same proposal: the store is the source of truth."""
    try:
        import optuna
    except ImportError:
        raise ScalelabError("nuisance_search: tpe needs Optuna: pip install "
                            "'scalelab[tune]'") from None
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {label: FloatDistribution(*r.bounds, log=r.log) for label, r in ranges.items()}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup))
    for params, loss in history:
        ok = loss is not None and math.isfinite(loss)
        study.add_trial(create_trial(params=params, distributions=dists,
                                     value=loss if ok else None,
                                     state=TrialState.COMPLETE if ok else TrialState.FAIL))
    proposed = study.ask(dists).params
    return {label: min(max(float(f"{value:.3g}"), ranges[label].bounds[0]),
                       ranges[label].bounds[1]) for label, value in proposed.items()}
