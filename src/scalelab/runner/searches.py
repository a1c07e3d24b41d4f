"""The runner's side of a nuisance search (``scalelab.search``): which runs train in which
waves. Halving with ``start: law`` goes in waves of increasing model size, each wave's
shapes starting only the settings the law fitted on the smaller shapes points at; tpe goes in
rounds, each adding one trial per shape, its values proposed from the shape's stored
results."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from ..analysis.nuisance import best_over_nuisance
from ..output import Output
from ..records import COMPLETED, FINISHED, RunSpec, run_id
from ..search import law_axis, law_starts, not_started, plan_for, setting_key, shape_key, suggest, widen
from ..spec import Study
from ..store import BaseStore

#: Proposals asked for before a shape's trial is given up (the sampler keeps proposing values
#: tried already, to 3 significant digits: it has converged).
REPROPOSALS = 20


def rung_plan(study: Study, board: Any):
    """The study's :class:`~scalelab.search.RungPlan`, or None without a halving search."""
    search = study.spec.nuisance_search
    if search.method != "halving":
        return None
    return plan_for(study.runs, study.nuisance_labels(), board, search.eta, search.rungs,
                    search.margin)


def waves(study: Study, todo: list[RunSpec], store: BaseStore, output: Output,
          size_of: Callable[[RunSpec], float], skipped: Callable[[RunSpec], None]
          ) -> Iterator[tuple[str, list[RunSpec], dict[str, int]]]:
    """The runs to train, as (what the wave is, its runs, the settings of each shape left
    unstarted by a law-seeded start): one wave (``start: grid``); or,
    law-seeded, one wave per model size from the smallest, each shape's window widened while
    its winner sits on an edge, the values never started stored ``pruned`` when their
    shape's search is over; or tpe's rounds."""
    search = study.spec.nuisance_search
    if search.method == "tpe":
        yield from ((what, runs, {}) for what, runs in _tpe_rounds(study, store, output))
        return
    nuisance = study.nuisance_labels()
    labels = study.axis_labels()
    grid = {labels[p]: v for p, v in study.axes.items()}
    axis = law_axis(grid, nuisance)
    if search.method != "halving" or search.start != "law" or axis is None:
        yield "", todo, {}
        return
    wanted = {r.run_id for r in todo}
    scientific = [a for a in labels.values() if a not in nuisance]
    shapes = {shape_key(r.point, nuisance) for r in todo}
    members = [r for r in study.runs if shape_key(r.point, nuisance) in shapes]
    for size in sorted({size_of(r) for r in members}):
        wave = [r for r in members if size_of(r) == size]
        starts = law_starts(wave, store.records(), scientific, nuisance, axis, search.window,
                            size_of)
        for start in starts.values():
            if start.predicted is not None:
                output.info(f"law-seeded search at {_shape_words(start.runs[0], nuisance)}: "
                            f"{axis} ≈ {start.predicted:.3g} predicted; starting "
                            f"{', '.join(f'{v:g}' for v in start.started)}")
        while True:
            statuses = store.statuses()
            yield f"models of {size:,} parameters", [
                r for start in starts.values() for r in start.runs
                if float(r.point[axis]) in start.started and r.run_id in wanted
                and statuses.get(r.run_id) not in FINISHED], _unstarted(starts, nuisance, axis)
            if not _widen(starts, store.records(), scientific, nuisance, axis, output):
                break
        statuses = store.statuses()
        for start in starts.values():
            for r in start.runs:
                if float(r.point[axis]) not in start.started and r.run_id in wanted \
                        and statuses.get(r.run_id) not in FINISHED:
                    store.write_result(r, not_started(r, _why(start, axis)))
                    skipped(r)


def _widen(starts: dict, records: list[dict[str, Any]], scientific: list[str],
           nuisance: list[str], axis: str, output: Output) -> bool:
    """Add the next grid value to every law-seeded shape whose winner is on its window's
    edge; whether any was added."""
    added = False
    for start in starts.values():
        if start.predicted is None:
            continue
        ids = {r.run_id for r in start.runs}
        _, winners = best_over_nuisance([r for r in records if r["run_id"] in ids],
                                        scientific, nuisance)
        if not winners:
            continue
        best = float(winners[0].nuisance[axis])
        values = sorted({float(r.point[axis]) for r in start.runs})
        beyond = widen(values, start.started, best)
        if beyond is not None:
            start.started.append(beyond)
            added = True
            output.info(f"{_shape_words(start.runs[0], nuisance)}: the best {axis} ({best:g}) "
                        f"is on the edge of the values started: adding {beyond:g}")
    return added


def _unstarted(starts: dict, nuisance: list[str], axis: str) -> dict[str, int]:
    """Per shape, its settings outside the values started (they count at every rung as
    losers: the law pruned them at rung 0)."""
    out = {}
    for shape, start in starts.items():
        every = {setting_key(r.point, nuisance) for r in start.runs}
        begun = {setting_key(r.point, nuisance) for r in start.runs
                 if float(r.point[axis]) in start.started}
        out[shape] = len(every - begun)
    return out


def _shape_words(run: RunSpec, nuisance: list[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in run.point.items()
                    if k != "seed" and k not in nuisance) or "the shape"


def _why(start, axis: str) -> str:
    lo, hi = min(start.started), max(start.started)
    return (f"not started: outside the {axis} values {lo:g}–{hi:g} searched around the law's "
            f"prediction {start.predicted:.3g}")


def _tpe_rounds(study: Study, store: BaseStore, output: Output
                ) -> Iterator[tuple[str, list[RunSpec]]]:
    """``trials`` rounds; in each, every shape short of that many trials gets one more,
    proposed from its finished ones, and its runs (every seed) train together. A trial
    stored in part (a kill) is finished first; the stored trials are the search's state."""
    search = study.spec.nuisance_search
    labels = study.axis_labels()
    ranges = {labels[p]: r for p, r in study.ranges.items()}
    shapes = sorted({shape_key(r.point, list(ranges)) for r in study.runs})
    for number in range(search.trials):
        records = store.records()
        trials = _stored_trials(records, list(labels.values()), shapes, list(ranges))
        for shape in shapes:
            if len(trials[shape]) > number:
                continue
            history = [(values, loss) for values, loss in trials[shape] if loss != "pending"]
            tried = [values for values, _ in trials[shape]]
            for again in range(REPROPOSALS):  # a value tried already: ask with the next seed
                seed = int(run_id({"shape": shape, "trial": number, "again": again}), 16)
                proposed = suggest(history, ranges, seed % 2**31, search.startup)
                if proposed not in tried:
                    trials[shape].append((proposed, "pending"))
                    break
        chosen = study.with_trials({k: [values for values, _ in v] for k, v in trials.items()})
        runs = chosen.runs
        store.set_meta(run_ids=[r.run_id for r in runs])
        statuses = store.statuses()
        yield f"tpe round {number + 1} of {search.trials}", \
            [r for r in runs if statuses.get(r.run_id) not in FINISHED]


def _stored_trials(records: list[dict[str, Any]], labels: list[str], shapes: list[str],
                   axes: list[str]) -> dict[str, list[tuple[dict[str, float], Any]]]:
    """Each shape's stored trials, in the order they were first stored: (values, mean
    validation loss over its seeds; None if any diverged; "pending" until all finished)."""
    found: dict[str, dict[str, list[dict]]] = {shape: {} for shape in shapes}
    for r in records:
        shape = shape_key({label: r.get(label) for label in labels}, axes)
        if shape in found:
            key = json.dumps({a: r.get(a) for a in axes}, sort_keys=True)
            found[shape].setdefault(key, []).append(r)
    return {shape: [(json.loads(key), _trial_loss(runs)) for key, runs in by_values.items()]
            for shape, by_values in found.items()}


def _trial_loss(runs: list[dict[str, Any]]) -> Any:
    if any(r.get("status") not in FINISHED for r in runs):
        return "pending"
    if any(r.get("status") != COMPLETED or r.get("val_loss") is None for r in runs):
        return None
    return sum(r["val_loss"] for r in runs) / len(runs)
