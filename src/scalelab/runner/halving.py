"""The runner's side of a halving search (``scalelab.search``): which runs train in which
order, and, with ``start: law``, in waves of increasing model size, each wave's shapes
starting only the settings the law fitted on the smaller shapes points at."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..analysis.nuisance import best_over_nuisance
from ..output import Output
from ..records import FINISHED, RunSpec
from ..search import law_axis, law_starts, not_started, plan_for, shape_key, widen
from ..spec import Study
from ..store import BaseStore


def rung_plan(study: Study, board: Any):
    """The study's :class:`~scalelab.search.RungPlan`, or None without a halving search."""
    search = study.spec.nuisance_search
    if search.method != "halving":
        return None
    return plan_for(study.runs, study.nuisance_labels(), board, search.eta, search.rungs,
                    search.margin)


def waves(study: Study, todo: list[RunSpec], store: BaseStore, output: Output,
          size_of: Callable[[RunSpec], float], skipped: Callable[[RunSpec], None]
          ) -> Iterator[list[RunSpec]]:
    """The runs to train, as one wave (``start: grid``) or, law-seeded, one wave per model
    size from the smallest, each shape's window widened while its winner sits on an edge;
    the values never started are stored ``pruned`` when their shape's search is over."""
    search = study.spec.nuisance_search
    nuisance = study.nuisance_labels()
    labels = study.axis_labels()
    grid = {labels[p]: v for p, v in study.axes.items()}
    axis = law_axis(grid, nuisance)
    if search.method != "halving" or search.start != "law" or axis is None:
        yield todo
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
            yield [r for start in starts.values() for r in start.runs
                   if float(r.point[axis]) in start.started and r.run_id in wanted
                   and statuses.get(r.run_id) not in FINISHED]
            if not _widen(starts, store.records(), scientific, nuisance, axis, output):
                break
        for start in starts.values():
            for r in start.runs:
                if float(r.point[axis]) not in start.started and r.run_id in wanted \
                        and store.statuses().get(r.run_id) not in FINISHED:
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


def _shape_words(run: RunSpec, nuisance: list[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in run.point.items()
                    if k != "seed" and k not in nuisance) or "the shape"


def _why(start, axis: str) -> str:
    lo, hi = min(start.started), max(start.started)
    return (f"not started: outside the {axis} values {lo:g}–{hi:g} searched around the law's "
            f"prediction {start.predicted:.3g}")
