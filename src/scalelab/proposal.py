"""From a fitted law to the next experiment (``scalelab next``).

The study's joint law L(N, D) and its compute model C = k·N·D give the compute-optimal
(N, D) at a budget C, with bootstrap intervals. N is snapped to a shape the model family
can build (its size axes, counted on PyTorch's meta device, nothing allocated) and D set so
that the run spends C. Then one or two more affordable runs are chosen greedily for how much
they would shrink the uncertainty of the prediction at the optimum: in the bootstrap's
Gaussian (linearised) picture, measuring point c with noise s² removes
cov(t, c)² / (var(c) + s²) of the variance at the target t. Every proposal carries the
predicted loss and an interval for the mean over the study's seeds (bootstrap of the law
plus the fit's own residual scatter), and is written to the store's extrapolation ledger, so
that the report can grade it once the run exists. ``append`` adds the proposals to the study
file as new grid entries, comments and order kept.

Where the study tunes positive numeric nuisance axes (lr, batch size) and a hyperparameter
law fits (analysis.hyperlaws), each proposed run gets the law's predicted value and one grid
step either side (``hyper="bracket"``, the default: the follow-up still finds its own
optimum, so the ledger can grade the prediction), or the predicted value alone
(``"predicted"``), instead of the whole grid (``"grid"``, and any axis without a law).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .analysis.allocation import compute_optimal
from .analysis.approaches import ComputeOptimal, study_answers
from .analysis.hyperlaws import HyperLaw, study_hyper_laws
from .analysis.isoflop import Agreement
from .analysis.study_analysis import (
    DATA_PATHS,
    FitEntry,
    analysis_settings,
    in_study,
    joint_fits,
    per_shape_optimum,
)
from .errors import ScalelabError, StudyError, first_line
from .files import write_atomically
from .spec import _read_yaml, load_study, validate_study
from .store import Store

try:  # the study file is locked while it is edited (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None


@dataclass
class Proposal:
    """One proposed grid point: its size and data, cost, predicted metric and interval."""

    kind: str                       # "compute-optimal" or "uncertainty"
    point: dict[str, Any]           # grid axis label -> value (nuisance axes left to tune)
    n: float                        # model size (the fit's size column) of the snapped shape
    d: float                        # data (the fit's data column)
    flops: float
    predicted: float
    interval: tuple[float, float]
    shrinks: float                  # fraction of the optimum's log-variance it would remove
    run_ids: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # its entry for the study's grid
    # per tuned axis with a law: the predicted value, its intervals, the law, the values proposed
    hyper: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "point": self.point, "n": self.n, "d": self.d,
                "flops": self.flops, "predicted": self.predicted,
                "interval": list(self.interval), "shrinks": self.shrinks,
                "run_ids": self.run_ids, "grid": self.grid, "hyper": self.hyper}


#: How proposed runs set a tuned axis that has a law (see the module docstring).
HYPER_MODES = ("bracket", "predicted", "grid")


@dataclass
class Tuning:
    """How the proposed runs set the study's nuisance axes: from each axis's hyperparameter
    law where one fits (``laws``), else its whole grid; ``notes`` say which, axis by axis."""

    mode: str
    grid: dict[str, list[Any]]      # each nuisance axis's values in the study
    laws: dict[str, HyperLaw] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def values(self, n: float, c: float) -> dict[str, list[Any]]:
        """Each nuisance axis's values for a run of size ``n`` spending ``c`` FLOPs."""
        out = {}
        for axis, values in self.grid.items():
            predicted = self.laws[axis].predict(n, c) if axis in self.laws else None
            out[axis] = list(values) if predicted is None else _around(
                predicted["value"], values, self.laws[axis].grid_step, self.mode)
        return out

    def predictions(self, n: float, c: float) -> dict[str, dict[str, Any]]:
        """Each law's prediction for the run, with the values it proposes."""
        values = self.values(n, c)
        return {axis: {**law.predict(n, c), "proposed": values[axis]}
                for axis, law in self.laws.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "notes": self.notes,
                "laws": [law.to_dict() for law in self.laws.values()]}


@dataclass
class NextRuns:
    """What ``scalelab next`` proposes, and from which fit."""

    fit: FitEntry
    budget: float
    k: float
    n_opt: float
    d_opt: float
    n_opt_ci: tuple[float, float]
    d_opt_ci: tuple[float, float]
    level: float
    seeds: int
    proposals: list[Proposal]
    study_file: Path
    appended: int = 0               # grid entries added to the study file
    tuning: Tuning | None = None    # how the runs set the nuisance axes (None: the study tunes none)
    approach: str = ""              # where N* and D* come from ...
    approach_why: str = ""          # ... and why that one
    agreement: Agreement | None = None  # the approaches' agreement (None: no answers)
    appended_to: str = "grid"       # what --append extends (an IsoFLOP study: its budgets)
    notes: list[str] = field(default_factory=list)  # warnings about the proposal

    def to_dict(self) -> dict[str, Any]:
        label, reasons = self.fit.fit.verdict
        return {"fit": self.fit.title, "verdict": label, "verdict_reasons": reasons,
                "budget": self.budget, "k": self.k, "n_opt": self.n_opt, "d_opt": self.d_opt,
                "n_opt_ci": list(self.n_opt_ci), "d_opt_ci": list(self.d_opt_ci),
                "level": self.level, "seeds": self.seeds, "study_file": str(self.study_file),
                "appended": self.appended, "proposals": [p.to_dict() for p in self.proposals],
                "hyper": self.tuning.to_dict() if self.tuning else None,
                "approach": self.approach, "approach_why": self.approach_why,
                "appended_to": self.appended_to, "notes": self.notes,
                "agreement": self.agreement.to_dict() if self.agreement else None}


#: Where N* and D* come from when the study has no compute-optimal answers (as before them).
JOINT_LAW = "the joint law's closed-form optimum (Huber fit)"


@dataclass
class Optimum:
    """The compute-optimal N and D at the budget, their intervals, and where they come from."""

    n: float
    d: float
    n_ci: tuple[float, float]
    d_ci: tuple[float, float]
    approach: str
    why: str
    agreement: Agreement | None = None


def propose(out_dir: str | Path, budget: float, *, study: str | Path | None = None,
            where: dict[str, str] | None = None, extra: int = 2, append: bool = False,
            n_resamples: int = 1000, seed: int = 0, hyper: str = "bracket") -> NextRuns:
    """The next runs for the study stored in ``out_dir`` at compute ``budget`` (FLOPs);
    ``hyper`` (one of HYPER_MODES) says how a tuned axis with a law is set."""
    _check_arguments(budget, hyper)
    out = Path(out_dir)
    records, meta, configs, path, curves = _stored(out, study, append)
    if meta.design:
        return _propose_budget(out, budget, records, meta, curves, path, append, n_resamples)
    settings = analysis_settings(meta)
    rows, _ = in_study(records, meta)
    selected, _ = per_shape_optimum(rows, meta)
    entry = _checked_joint_fit(selected, meta, settings["metric"], where or {}, out, n_resamples)
    the_study = load_study(path)
    k = entry.compute.k
    optimum = _optimum(entry, selected, meta, curves, budget, n_resamples)
    n_opt, d_opt = optimum.n, optimum.d
    _check_reach(entry, budget, k, n_opt, d_opt)

    axes, grid = meta.axes, meta.grid
    size_axes, data_axis, per = _proposal_axes(meta, entry, rows)
    template = _template(rows, configs, entry)
    shapes = _shapes(template, size_axes, axes, grid, settings["size"], n_opt)
    seeds = len(the_study.spec.seeds)
    tuning = _tuning(rows, meta, entry, hyper, n_resamples, seed)

    def grid_entry(shape: dict[str, Any], n: float, d: float) -> dict[str, list[Any]]:
        return {**{a: [v] for a, v in shape.items()}, data_axis: [round(d / per)],
                **{a: [v] for a, v in entry.point.items()},
                **tuning.values(n, k * n * per * round(d / per))}

    best_shape, best_n = min(shapes, key=lambda s: abs(math.log(s[1] / n_opt)))
    target = (best_n, budget / (k * best_n))
    # Affordable runs: every shape at each data size of the grid, and at the data that spends C.
    candidates = [(s, n, d) for s, n in shapes
                  for d in sorted({*(per * float(v) for v in grid[data_axis]), budget / (k * n)})
                  if k * n * d <= budget * (1 + 1e-9) and d >= per and s != best_shape]
    points = np.array([target] + [(n, d) for _, n, d in candidates])
    raw = _read_yaml(path)

    def runnable(i: int) -> list[str] | None:
        """The run ids of candidate i (0: the compute-optimal run), or None when the study
        cannot run it (more data than the task holds, ...)."""
        shape, n, d = (best_shape, *target) if i == 0 else candidates[i - 1]
        try:
            return [r.run_id for r in validate_study(
                {**raw, "grid": grid_entry(shape, n, d)}, str(path)).runs]
        except StudyError as exc:
            if i == 0:
                point = " ".join(f"{a}={v}" for a, v in shape.items())
                raise ScalelabError(f"next: the compute-optimal run ({point}, {data_axis}="
                                    f"{round(d / per)}) is not valid for this study: {exc}"
                                    ) from None
            return None

    chosen = _most_informative(entry, points, seeds, extra, runnable)
    rng = np.random.default_rng(seed)
    proposals = []
    for i, shrink, run_ids in chosen:
        shape, n, d = (best_shape, *target) if i == 0 else candidates[i - 1]
        d = per * round(d / per)  # the law's data, of a whole number of the axis's units
        predicted, interval = _predict(entry, (n, d), seeds, rng)
        proposals.append(Proposal("compute-optimal" if i == 0 else "uncertainty",
                                  {**shape, data_axis: round(d / per), **entry.point}, n, d,
                                  k * n * d,
                                  predicted, interval, shrink, run_ids, grid_entry(shape, n, d),
                                  tuning.predictions(n, k * n * d)))
    result = NextRuns(entry, budget, k, n_opt, d_opt, optimum.n_ci, optimum.d_ci,
                      entry.boot.level, seeds, proposals, path,
                      tuning=tuning if tuning.grid else None, approach=optimum.approach,
                      approach_why=optimum.why, agreement=optimum.agreement)
    if append:
        result.appended = append_to_study(path, [p.grid for p in proposals])
    with Store.open(out) as store:
        store.add_predictions(_ledger(result))
    return result


def _propose_budget(out: Path, budget: float, records, meta, curves, path: Path, append: bool,
                    n_resamples: int) -> NextRuns:
    """An IsoFLOP study's next profile: the design's sizes at ``budget``, N* from the approach
    the agreement recommends, each cell's loss predicted by the joint law Approach 3 chose;
    ``append`` adds the budget to ``design.isoflop.budgets``."""
    selected, _ = per_shape_optimum(in_study(records, meta)[0], meta)
    answers = _answers(selected, meta, curves, budget, n_resamples)
    if isinstance(answers, str) or answers.recommended is None:
        raise ScalelabError(f"next: {out}: " + (answers if isinstance(answers, str) else
                                                answers.agreement.why))
    best, k = answers.recommended, answers.k
    n_opt, (lo, hi) = best.n_opt_target, best.n_opt_target_interval
    raw = _read_yaml(path)
    budgets = list(raw["design"]["isoflop"]["budgets"])
    grown = {**raw, "design": {"isoflop": {**raw["design"]["isoflop"],
                                           "budgets": sorted({*map(float, budgets), budget})}}}
    study = validate_study(grown, str(path))
    cells = [c for c in study.design_cells if c.budget == budget]
    entry = _chosen_law(answers, meta)
    seeds = len(study.spec.seeds)
    nearest = min(cells, key=lambda c: abs(math.log(c.params / n_opt)))
    size_label = meta.design["size"]
    proposals = []
    for cell in cells:
        d = budget / (k * cell.params)
        predicted, interval = _predict(entry, (cell.params, d), seeds, np.random.default_rng(0))
        run_ids = [r.run_id for r in study.runs
                   if r.point["budget"] == budget and r.point[size_label] == cell.size]
        proposals.append(Proposal("compute-optimal" if cell is nearest else "profile",
                                  {size_label: cell.size, meta.design["data"]: cell.data,
                                   "budget": budget}, cell.params, d, cell.flops, predicted,
                                  interval, 0.0, run_ids))
    result = NextRuns(entry, budget, k, n_opt, budget / (k * n_opt), (lo, hi),
                      (budget / (k * hi), budget / (k * lo)), entry.boot.level, seeds,
                      proposals, path, approach=best.name, approach_why=answers.agreement.why,
                      agreement=answers.agreement, appended_to="design.isoflop.budgets")
    sizes = sorted(c.params for c in cells)
    if not sizes[0] < n_opt < sizes[-1]:
        result.notes.append(f"N* at {budget:.3g} FLOPs ({n_opt:.3g} parameters) lies outside "
                            f"the design's sizes ({sizes[0]:,} to {sizes[-1]:,}): this profile "
                            "cannot bracket its minimum; extend design.isoflop.sizes past it")
    if append:
        result.appended = _append_budget(path, budget)
    with Store.open(out) as store:
        store.add_predictions(_ledger(result))
    return result


def _chosen_law(answers: ComputeOptimal, meta) -> FitEntry:
    """The joint law Approach 3 chose, as a fit entry of the points it was fitted on (for the
    predictions, their intervals and the ledger)."""
    chosen = next(j for j in answers.joint if j.name == answers.chosen_joint)
    metric = meta.settings["metric"]
    return FitEntry(f"{metric} vs {' & '.join(answers.x_names)}, L(N, D) by {chosen.name}",
                    list(answers.x_names), metric, chosen.x, chosen.y, chosen.fit, chosen.boot,
                    chosen.x)


def _append_budget(path: Path, budget: float) -> int:
    """Add ``budget`` to the study file's ``design.isoflop.budgets`` (a ``[...]`` list on one
    line, or a block of ``- `` items), every other line kept as it is, under the study file's
    lock, validated before it replaces the file; 1 if added, 0 if it was there."""
    target = Path(os.path.realpath(path))
    with _locked(target) as text:
        if budget in map(float, yaml.safe_load(text)["design"]["isoflop"]["budgets"]):
            return 0
        lines = text.splitlines(keepends=True)
        at = _budgets_line(lines)
        if at is None:
            raise ScalelabError(f"next --append: {path}: design.isoflop.budgets is neither a "
                                "[...] list on one line nor a block of '- ' items; add the "
                                "budget by hand")
        line = lines[at]
        if "[" in line:
            close = line.index("]")
            lines[at] = line[:close].rstrip() + f", {_yaml_float(budget)}" + line[close:]
        else:
            last = at
            while last + 1 < len(lines) and lines[last + 1].lstrip().startswith("- "):
                last += 1
            item = lines[last]
            dash = item.index("- ")
            lines.insert(last + 1, f"{item[:dash]}- {_yaml_float(budget)}\n")
        new = "".join(lines)
        validate_study(yaml.safe_load(new), str(path))
        write_atomically(target, new)
        return 1


def _yaml_float(value: float) -> str:
    """``value`` as YAML 1.1 reads a float (it reads ``1e+08``, without a point, as text)."""
    text = f"{value:.6g}"
    mantissa, _, exponent = text.partition("e")
    mantissa += "" if "." in mantissa else ".0"
    return mantissa + (f"e{exponent}" if exponent else "")


def _budgets_line(lines: list[str]) -> int | None:
    """The line of the top-level design's ``budgets:`` (not the quick block's)."""
    top = next((i for i, line in enumerate(lines) if line.startswith("design:")), None)
    if top is None:
        return None
    for i in range(top + 1, len(lines)):
        if lines[i][:1].strip() and not lines[i].startswith("#"):
            return None  # the next top-level key: the design block has ended
        stripped = lines[i].strip()
        if stripped.startswith("budgets:"):
            flow = "[" in stripped and "]" in stripped
            block = stripped == "budgets:" and i + 1 < len(lines) and \
                lines[i + 1].lstrip().startswith("- ")
            return i if flow or block else None
    return None


def _check_arguments(budget: float, hyper: str) -> None:
    if not (math.isfinite(budget) and budget > 0):
        raise ScalelabError(f"--budget: expected a positive number of FLOPs, got {budget!r}")
    if hyper not in HYPER_MODES:
        raise ScalelabError(f"--hyper: expected one of {', '.join(HYPER_MODES)}, got {hyper!r}")


def _optimum(entry: FitEntry, selected, meta, curves, budget: float, n_resamples: int
             ) -> Optimum:
    """N* at ``budget`` from the approach the study's agreement verdict recommends (Approach
    3 quoted under the runs' own counted FLOPs), D* the data that spends the budget; the
    joint law's own optimum, saying why, when the study has no compute-optimal answers."""
    k = entry.compute.k
    answers = _answers(selected, meta, curves, budget, n_resamples)
    if isinstance(answers, ComputeOptimal) and answers.recommended is not None:
        best = answers.recommended  # at the budget, under the runs' own counted FLOPs
        n, (lo, hi) = best.n_opt_target, best.n_opt_target_interval
        if all(math.isfinite(v) and v > 0 for v in (n, lo, hi)):
            return Optimum(n, budget / (k * n), (lo, hi), (budget / (k * hi), budget / (k * lo)),
                           best.name, answers.agreement.why, answers.agreement)
        reason = f"{best.name} has no finite N* at this budget"
    else:
        reason = answers if isinstance(answers, str) else answers.agreement.why
    fit = entry.fit
    n_opt, d_opt = (float(v[0]) for v in compute_optimal(fit.params, [budget],
                                                         flops_per_param_sample=k))
    if not (math.isfinite(n_opt) and math.isfinite(d_opt)):
        raise ScalelabError(f"next: {entry.title} has no finite compute-optimal point "
                            f"(alpha = {fit.params['alpha']:.3g}, beta = {fit.params['beta']:.3g})")
    n_ci, d_ci = _optimum_intervals(entry, budget, k)
    return Optimum(n_opt, d_opt, n_ci, d_ci, JOINT_LAW,
                   f"as before the approaches: {reason.rstrip('.')}")


def _answers(selected, meta, curves, budget: float, n_resamples: int) -> ComputeOptimal | str:
    """The study's compute-optimal approaches at ``budget``, fitted as its report fits them
    (so next follows the verdict the report shows), or why there are none."""
    settings = meta.settings
    try:
        return study_answers(selected, settings["size"], settings["metric"], meta.design,
                             settings.get("data", "auto"), curves, n_resamples, budget)
    except ScalelabError as exc:
        return str(exc)


def _optimum_intervals(entry: FitEntry, budget: float, k: float
                       ) -> tuple[tuple[float, float], tuple[float, float]]:
    """Bootstrap intervals of the compute-optimal N and D at ``budget``."""
    boot = entry.boot
    per_sample = [compute_optimal(s, [budget], flops_per_param_sample=k) for s in boot.samples]
    lo, hi = 100 * (1 - boot.level) / 2, 100 * (1 + boot.level) / 2
    n_ci, d_ci = (tuple(float(np.nanpercentile([p[i][0] for p in per_sample], q))
                        for q in (lo, hi)) for i in (0, 1))
    return n_ci, d_ci


def _tuning(rows, meta, entry: FitEntry, mode: str, n_resamples: int, seed: int) -> Tuning:
    """The hyperparameter laws of the fit's group (``entry.point``), one per tuned axis that
    has one, and a sentence per nuisance axis saying how the proposed runs set it."""
    grid = {a: list(meta.grid[a]) for a in meta.nuisance}
    tuning = Tuning(mode, grid)
    laws = {law.axis: law for law in study_hyper_laws(
        rows, meta, group_by=list(entry.point), n_resamples=n_resamples, seed=seed)
        if law.group == entry.point}
    for axis in grid:
        law = laws.get(axis)
        if law is None:
            tuning.notes.append(f"{axis}: no law (its values are not all positive numbers, "
                                "or every run diverged); every run gets its whole grid")
        elif not law.laws:
            why = " ".join(d.message for d in law.diagnostics if d.code == "hyper_too_few")
            tuning.notes.append(f"{axis}: no law ({why}); every run gets its whole grid")
        elif mode == "grid":
            tuning.notes.append(f"{axis}: {law.sentence()}; not used (--hyper grid): every "
                                "run gets its whole grid")
        else:
            tuning.laws[axis] = law
            edges = sum(o.at_edge for o in law.optima)
            how = ("the predicted value and one grid step either side, so the follow-up finds "
                   "its own optimum and the ledger grades the prediction" if mode == "bracket"
                   else "the predicted value alone (the ledger records it with the run's loss)")
            tuning.notes.append(
                f"{axis}: {law.sentence()}"
                + (f" ({edges} shape(s) whose best {axis} is at its grid's edge left out)"
                   if edges else "") + f"; each run gets {how}")
    return tuning


def _around(value: float, grid: list[Any], step: float, mode: str) -> list[Any]:
    """The predicted ``value`` (3 significant digits; whole numbers when the grid's are),
    and for a bracket one grid ``step`` (a ratio) below and above it."""
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in grid)
    factors = (1 / step, 1.0, step) if mode == "bracket" and step > 1 else (1.0,)
    out = []
    for f in factors:
        v = max(1, round(value * f)) if whole else float(f"{value * f:.3g}")
        if v not in out:
            out.append(v)
    return out


def _stored(out: Path, study: str | Path | None, append: bool):
    """(records, typed meta, configs, study file, learning curves) of the store in ``out``."""
    with Store.open(out) as store:
        records, meta, configs = store.records(), store.study_meta(), store.configs()
        curves = store.curves()
    if study is None and not meta.source:
        raise ScalelabError(f"next: {out} does not record its study file; pass --study FILE")
    path = Path(study) if study is not None else recorded_study(out, meta.source)
    if meta.quick and append:
        raise ScalelabError(f"{out}: was run with --quick, whose grid replaces the file's; "
                            "--append would add runs to the full study instead. Run next on "
                            "the full study's directory, or add the grid entry by hand")
    return records, meta, configs, path, curves


def _check_fit(entry: FitEntry) -> None:
    """Refuse a fit that is not a law, or runs whose compute is not k·N·D."""
    label, reasons = entry.fit.verdict
    if label == "not a law":
        raise ScalelabError(f"next: refusing to extrapolate {entry.title}: it is not a law "
                            f"({reasons})")
    if entry.compute is None:
        why = entry.allocation_note.split(". Fit the joint law")[0]
        raise ScalelabError(f"next: {entry.title}: {why}. next proposes runs along the grid's "
                            "data axis, so it needs runs whose compute is k·N·D: train each "
                            "for a fixed number of passes (train.epochs instead of max_steps)")


#: A law fitted on consumed data proposes along the data axis when every run's consumed
#: data per unit of that axis is within this of the median (a fixed number of epochs).
MAX_PER_UNIT_SPREAD = 0.05


def _proposal_axes(meta, entry: FitEntry, rows) -> tuple[list[str], str, float]:
    """(the model-size axes a proposal sets, the grid's data axis, the law's data per unit
    of that axis: 1 when the joint law is fitted on the axis itself, else the consumed data
    (analysis.data) per unit, which must be the same for every run, as with fixed epochs)."""
    axes, nuisance = meta.axes, meta.nuisance
    size_axes = [a for a in axes if axes[a].startswith("model.") and a not in nuisance
                 and a not in entry.point]
    data_axis = next((a for a in axes if axes[a] in DATA_PATHS), None)
    if data_axis is None:
        raise ScalelabError(f"next: the study has no data axis ({' or '.join(DATA_PATHS)}) in "
                            "its grid to propose runs along")
    column = entry.x_names[1]
    if column == data_axis:
        return size_axes, data_axis, 1.0
    ratios = np.array([r[column] / r[data_axis] for r in rows if r.get("status") == "completed"
                       and r.get(column) and r.get(data_axis)], dtype=float)
    per = float(np.median(ratios)) if len(ratios) else math.nan
    if not (per > 0) or np.max(np.abs(ratios / per - 1)) > MAX_PER_UNIT_SPREAD:
        raise ScalelabError(f"next: the joint law is fitted against {column} (analysis.data), "
                            f"but the runs' {column} per unit of the grid's data axis "
                            f"{data_axis} is not one number (train each run for a fixed number "
                            f"of epochs), so no {data_axis} gives a proposed run its {column}; "
                            "fit against the axis (analysis.data: auto) to use next")
    return size_axes, data_axis, per


def _check_reach(entry: FitEntry, budget: float, k: float, n_opt: float, d_opt: float) -> None:
    """Refuse an optimum more than MAX_REACH past (or below) the sizes and data studied."""
    studied, smallest = entry.x.max(axis=0), entry.x.min(axis=0)
    reach = max(n_opt / studied[0], d_opt / studied[1])
    below = max(smallest[0] / n_opt, smallest[1] / d_opt) if min(n_opt, d_opt) > 0 else math.inf
    spent = k * entry.x[:, 0] * entry.x[:, 1]
    if reach > MAX_REACH:
        raise ScalelabError(
            f"next: at --budget {budget:.3g} the law's optimum is N = {n_opt:.3g}, D = "
            f"{d_opt:.3g}, {reach:.3g}x past the largest size or data studied: no fit on these "
            f"runs supports an extrapolation that far (at most {MAX_REACH:g}x); choose a "
            f"smaller --budget (the studied runs spend {spent.min():.3g} to {spent.max():.3g} "
            "FLOPs) or study larger runs first")
    if below > MAX_REACH or min(n_opt, d_opt) < 1:
        raise ScalelabError(
            f"next: at --budget {budget:.3g} the law's optimum is N = {n_opt:.3g}, D = "
            f"{d_opt:.3g}, {below:.3g}x below the smallest size or data studied: no fit on "
            f"these runs supports an extrapolation that far down (at most {MAX_REACH:g}x); "
            f"choose a larger --budget (the studied runs spend {spent.min():.3g} to "
            f"{spent.max():.3g} FLOPs)")


def _ledger(result: NextRuns) -> list[dict[str, Any]]:
    """The proposals as the store's extrapolation ledger keeps them."""
    entry = result.fit
    return [{**p.to_dict(), "budget": result.budget, "fit": entry.title,
             "optimum_from": result.approach,
             "metric": entry.y_name, "x_names": entry.x_names, "level": result.level,
             "seeds": result.seeds, "law": entry.fit.to_dict(),
             "fitted_on": {"x": entry.x.tolist(), "y": entry.y.tolist()},
             "study_file": str(result.study_file)} for p in result.proposals]


def _checked_joint_fit(selected, meta, metric: str, where: dict[str, str], out: Path,
                       n_resamples: int) -> FitEntry:
    """The joint law to extrapolate, with its bootstrap. Refusals are decided first, on each
    group's first look (the fit, its backtest and compute model, no bootstrap: whether it is a
    law never depends on the bootstrap), so a refusal costs a fit, not a thousand; then the
    chosen group alone is fitted with its bootstrap (the same fit again, deterministic)."""
    first = _joint_fit(joint_fits(selected, meta, metric, 0), where, out)
    _check_fit(first)
    group = [r for r in selected if all(r.get(k) == v for k, v in first.point.items())]
    return _joint_fit(joint_fits(group, meta, metric, n_resamples), {}, out)


def _joint_fit(fits: list[FitEntry], where: dict[str, str], out: Path) -> FitEntry:
    joint = [f for f in fits if len(f.x_names) == 2]
    if not joint:
        raise ScalelabError(f"next: {out} has no joint law of model size and data to extrapolate: "
                            "the study needs a model-size axis and a data axis (task.num_train "
                            "or task.num_train_tokens) in its grid, with at least 3 sizes")
    chosen = [f for f in joint if all(str(f.point.get(k)) == v for k, v in where.items())]
    if len(chosen) != 1:
        options = "; ".join(" ".join(f"{k}={v}" for k, v in f.point.items()) for f in joint)
        raise ScalelabError(f"next: {len(chosen)} joint fits match --where "
                            f"{' '.join(f'{k}={v}' for k, v in where.items()) or '(none)'}; "
                            f"choose one with --where AXIS=VALUE (fits: {options})")
    return chosen[0]


def _template(rows, configs, entry: FitEntry) -> dict[str, Any]:
    """A completed run of the fit's group (``rows``: the study's runs): the config every
    proposed shape is built from."""
    for r in rows:
        if r.get("status") == "completed" and all(r.get(k) == v for k, v in entry.point.items()):
            return configs[r["run_id"]]
    raise ScalelabError(f"next: no completed run of {entry.title} to build proposals from")


#: How far past the largest studied N or D a proposal may reach.
MAX_REACH = 100.0
#: Extra runs differ from every proposed one by at least this factor in N or in D.
DISTINCT = 1.25
#: Candidate widths: multiples of the grid's common step up to this factor past the optimum.
SHAPE_RANGE = 30.0


def _shapes(template: dict[str, Any], size_axes: list[str], axes: dict[str, str],
            grid: dict[str, list[Any]], size_column: str, n_opt: float
            ) -> list[tuple[dict[str, Any], float]]:
    """Shapes the family can build, each with its size as the fit counts it: the first size
    axis at every multiple of its grid's common step (up to well past ``n_opt``), the other
    size axes at their grid values. Counted on the meta device: nothing is allocated."""
    import torch

    from .models import count_parameters
    from .plugin import instantiate
    from .registry import models, tasks

    # the family counts its own non-embedding size (one whose embeddings are held otherwise)
    counters = {"n_params": lambda built, model: count_parameters(model),
                "n_params_nonembed": lambda built, model: built.non_embedding_parameters(model)}
    if size_column not in counters:
        raise ScalelabError(f"next: cannot count {size_column!r} for a new shape (analysis.size "
                            f"must be one of {', '.join(counters)})")
    if not size_axes:
        raise ScalelabError("next: the study has no model-size axis to choose a shape along")
    first, *others = size_axes
    values = [int(v) for v in grid[first]]
    step = math.gcd(*values)
    input_shape, num_classes, _ = instantiate(tasks, template["task"]).shape()
    family = models.get(template["model"]["name"])
    out = []
    for rest in itertools.product(*(grid[a] for a in others)):
        multiple = 0
        while True:  # every multiple at first, then 3% apart: a few hundred shapes at most
            multiple = max(multiple + 1, round(multiple * 1.03))
            shape = {first: step * multiple, **dict(zip(others, rest))}
            settings = {**template["model"]}
            settings.update({axes[a].split(".", 1)[1]: v for a, v in shape.items()})
            settings.pop("name")
            try:
                config = family.Config.model_validate(settings)
            except ValueError:
                continue  # e.g. heads that do not divide this d_model
            built = family(config)
            with torch.device("meta"):
                size = counters[size_column](built, built.build(input_shape, num_classes))
            out.append((shape, float(size)))
            if size > SHAPE_RANGE * n_opt:
                break
    return out


def _most_informative(entry: FitEntry, points: np.ndarray, seeds: int, extra: int,
                      runnable) -> list[tuple[int, float, list[str]]]:
    """Greedy choice among ``points`` (row 0: the compute-optimal run, always taken) of
    ``extra`` more that most reduce the variance of log L at row 0, in the linearised
    picture of the bootstrap, skipping those ``runnable`` refuses: (index, fraction of the
    initial variance it removes, its run ids)."""
    law = entry.fit.law
    logs = np.log(np.array([law.predict(t, points) for t in entry.boot.thetas]))
    cov = np.cov(logs, rowvar=False) if len(logs) > 1 else np.zeros((len(points),) * 2)
    residuals = np.log(entry.y) - np.log(entry.fit.predict(entry.x))
    noise = float(np.mean(residuals ** 2)) / seeds  # a new point: the mean of `seeds` runs
    initial = cov[0, 0]
    chosen: list[tuple[int, float, list[str]]] = []
    left = set(range(len(points)))
    while left and len(chosen) < 1 + extra:
        gain = {i: cov[0, i] ** 2 / (cov[i, i] + noise) if cov[i, i] + noise > 0 else 0.0
                for i in left}
        pick = 0 if not chosen else max(gain, key=gain.get)
        if chosen and gain[pick] <= 0:
            break
        left.discard(pick)
        if any(np.all(np.abs(np.log(points[pick] / points[c])) < math.log(DISTINCT))
               for c, _, _ in chosen):
            continue  # nearly a run already proposed
        run_ids = runnable(pick)
        if run_ids is None:
            continue
        chosen.append((pick, float(gain[pick] / initial) if initial > 0 else 0.0, run_ids))
        column = cov[:, pick].copy()
        cov = cov - np.outer(column, column) / (column[pick] + noise)
    return chosen


def _predict(entry: FitEntry, point: tuple[float, float], seeds: int,
             rng: np.random.Generator) -> tuple[float, tuple[float, float]]:
    """The law's prediction at ``point`` and an interval for the mean of ``seeds`` runs
    there: the bootstrap's spread of the law plus the fit's own residual scatter."""
    law, fit = entry.fit.law, entry.fit
    x = np.array([point], dtype=float)
    center = float(fit.predict(x)[0])
    logs = np.log([law.predict(t, x)[0] for t in entry.boot.thetas])
    residuals = np.log(entry.y) - np.log(fit.predict(entry.x))
    noise = rng.choice(residuals, (len(logs), seeds)).mean(axis=1)
    lo, hi = 100 * (1 - entry.boot.level) / 2, 100 * (1 + entry.boot.level) / 2
    spread = np.exp(logs + noise)
    return center, (float(np.percentile(spread, lo)), float(np.percentile(spread, hi)))


def recorded_study(out: Path, source: str) -> Path:
    """The study file a store records. Stores record it absolute; an older store recorded it
    as typed, relative to the folder `scalelab run` was started in, which is looked for from
    the store's own folder upward (never in the current folder, which may be another
    project holding a study of the same name)."""
    path = Path(source)
    if path.is_absolute():
        return path
    start = Path(os.path.abspath(out))
    for folder in (start, *start.parents):
        if (folder / path).is_file():
            return folder / path
    raise ScalelabError(f"next: {out} records its study file as {source!r}, relative to the "
                        f"folder it was run from, and no {path} is found in {start} or a "
                        "folder above it; pass --study FILE")


def append_to_study(path: Path, entries: list[dict[str, list[Any]]]) -> int:
    """Add each grid entry to the study file's grid (a mapping becomes a list of grids);
    entries already there are not added twice. Returns the entries added.

    The file is edited whole, under a lock: concurrent appends each add their entries; a
    link is followed (the file it names is edited, the link stays); the edited study is
    validated before it replaces the old one in one step, with the old one's permissions.
    Every line of the file is kept as it is (comments, order, quoting, indentation): new
    entries are added as lines of their own after the grid's last, and a grid that is one
    mapping becomes the first item of a list by a ``- `` in its first line's indentation."""
    target = Path(os.path.realpath(path))  # a link: edit the file it names
    with _locked(target) as text:
        new, added = add_grid_entries(text, entries, str(path))
        if not added:
            return 0
        validate_study(yaml.safe_load(new), str(path))  # the edited study must load first
        write_atomically(target, new)
        return added


@contextlib.contextmanager
def _locked(path: Path):
    """The text of ``path``, read under an exclusive lock on the file that is there now:
    another process editing it is waited for, and a file it replaced is locked anew."""
    while True:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ScalelabError(f"{path}: no such study file") from None
        with f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(f.fileno())
            if current is None or (current.st_ino, current.st_dev) != (opened.st_ino,
                                                                       opened.st_dev):
                continue  # replaced while we waited: lock the new file
            data = f.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise StudyError(str(path), "", "not UTF-8 text; save the study file as UTF-8"
                                 ) from None
            yield text  # the lock is held until the caller has written its edit
            return


def add_grid_entries(text: str, entries: list[dict[str, list[Any]]], source: str
                     ) -> tuple[str, int]:
    """``text`` (a study file) with the grid entries it does not hold yet added, every
    existing line kept as it is, and how many were added."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        grid = yaml.safe_load(text).get("grid")
    except (yaml.YAMLError, AttributeError) as exc:
        raise StudyError(source, "", f"not a valid study file now ({first_line(exc)})") from None
    if not isinstance(root, yaml.MappingNode):
        raise StudyError(source, "", "a study must be a YAML mapping")
    node = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode)
                 and k.value == "grid"), None)
    if node is None or not isinstance(grid, dict | list):
        raise ScalelabError(f"{source}: grid: --append needs a grid (a mapping or a list)")
    existing = [json.loads(json.dumps(g)) for g in (grid if isinstance(grid, list) else [grid])]
    new = []
    for entry in entries:
        if entry not in existing and entry not in new:
            new.append(entry)
    if not new:
        return text, 0
    items = [yaml.safe_dump(e, default_flow_style=True, sort_keys=False, width=10**9).strip()
             for e in new]
    if node.flow_style:  # grid: {...} or grid: [...]: edit inside the brackets
        start, end = node.start_mark.index, node.end_mark.index
        inner = text[start:end]
        if isinstance(node, yaml.SequenceNode):
            body = inner[:-1].rstrip()
            edited = body + ("" if body.endswith("[") else ", ") + ", ".join(items) + "]"
        else:
            edited = "[" + ", ".join([inner, *items]) + "]"
        result = text[:start] + edited + text[end:]
    else:
        if isinstance(node, yaml.MappingNode):  # one grid: make it the list's first item
            first = node.value[0][0].start_mark
            line_start = first.index - first.column
            if first.column < 2 or text[line_start:first.index].strip():
                raise ScalelabError(f"{source}: grid: cannot add entries to this grid's layout "
                                    "(indent it by at least two spaces), or add them by hand")
            dash = first.column - 2
            text = text[:first.index - 2] + "- " + text[first.index:]
        else:
            at = text.rfind("-", 0, node.value[-1].start_mark.index)  # the last item's dash
            dash = at - (text.rfind("\n", 0, at) + 1)
        end = _end_of(node)
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        lines = "".join(f"\n{' ' * dash}- {item}" for item in items)
        result = text[:line_end] + lines + text[line_end:]
    grids = yaml.safe_load(result).get("grid")
    if json.loads(json.dumps(grids)) != existing + new:  # the edit must mean what it says
        raise ScalelabError(f"{source}: grid: cannot add entries to this grid's layout; add "
                            f"them by hand: {'; '.join(items)}")
    return result, len(new)


def _end_of(node) -> int:
    """Where a node's own text ends: its last scalar or closing bracket (a block
    collection's end mark lies past the comments and blank lines after it)."""
    while isinstance(node, yaml.CollectionNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node.end_mark.index
