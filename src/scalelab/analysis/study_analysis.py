"""Everything the report says about one study, computed from its stored runs.

Fits use each scientific point's per-shape optimum over the nuisance axes (chosen on
validation loss) and every seed of it as a separate point, so the bootstrap resamples runs.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ScalelabError
from ..store import StudyMeta
from .allocation import compute_optimal
from .approaches import CONSUMED, ComputeOptimal, study_answers
from .diagnostics import Diagnostic, diagnose, extrapolation, is_law, verdict
from .evaluations import EvaluationAnalysis, analyze_evaluations
from .fitting import DEFAULT_HOLDOUT, LawFit, backtest, choose_form, fit_law, holdout_mask
from .hyperlaws import HyperLaw, study_hyper_laws
from .ledger import grade
from .nuisance import Transfer, Winner, best_over_nuisance, transfer
from .parallel import run_all
from .resampling import Bootstrap, bootstrap
from .sample_selection import SelectionAnalysis, analyze_selection
from .stats import Comparison, compare
from .tuning import SearchAnalysis, analyze_search

DATA_PATHS, METHOD_PATH = ("task.num_train", "task.num_train_tokens"), "method.name"

#: Told what a slow step is about to do (one line, e.g. "analysing: 4 fits, ..."); None: quiet.
Progress = Callable[[str], None] | None


@dataclass
class FitEntry:
    """One fitted law with the points it was fitted on and its bootstrap."""

    title: str
    x_names: list[str]
    y_name: str
    x: np.ndarray
    y: np.ndarray
    fit: LawFit
    boot: Bootstrap | None      # None: a first look (fit_rows with n_resamples=0)
    grid: np.ndarray            # where the curve and band are drawn
    allocation: list[dict[str, Any]] = field(default_factory=list)
    allocation_note: str = ""   # the compute model used, or why no allocation is shown
    point: dict[str, Any] = field(default_factory=dict)  # the other axes' values it is fitted at
    compute: ComputeModel | None = None  # C = k·N·D, where the runs follow one

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self.fit.diagnostics

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "x": self.x_names, "y": self.y_name,
                **self.fit.to_dict(), "bootstrap": self.boot.to_dict(),
                "bootstrap_resamples": self.boot.n_resamples,
                "bootstrap_failed": self.boot.failed, "ci_level": self.boot.level,
                "derived_intervals": {k: list(v) for k, v in self.boot.derived.items()},
                "allocation": self.allocation, "allocation_note": self.allocation_note}


@dataclass(frozen=True)
class ComputeModel:
    """C = k·N·D with k read off the runs' counted training FLOPs (not assumed to be 6)."""

    k: float            # FLOPs per parameter per unit of the data column
    spread: float       # largest |k_run / k - 1| over the runs
    data: str           # the data column D

    def describe(self) -> str:
        return (f"C = k·N·D with k = {self.k:.3g} FLOPs per parameter per {self.data} unit, "
                f"read off the runs' counted training FLOPs (every run within "
                f"{self.spread:.0%} of it)")


#: A compute model describes the runs when every run's counted FLOPs are within this of k·N·D.
MAX_COMPUTE_SPREAD = 0.25


def compute_model(rows: Sequence[dict[str, Any]], size: str, data: str
                  ) -> tuple[ComputeModel | None, str]:
    """The k of C = k·N·D that the runs' counted FLOPs follow, or None and the reason."""
    usable = [r for r in rows if r.get("train_flops") and r.get(size) and r.get(data)]
    if not usable:
        return None, "no compute-optimal allocation: the runs have no counted training FLOPs"
    ks = np.array([r["train_flops"] / (float(r[size]) * float(r[data])) for r in usable])
    k = float(np.median(ks))
    spread = float(np.max(np.abs(ks / k - 1)))
    if spread > MAX_COMPUTE_SPREAD:
        epochs = [r["epochs_seen"] for r in usable if r.get("epochs_seen")]
        seen = (f" The runs saw each training example {min(epochs):.3g}–{max(epochs):.3g} "
                "times, so their compute is set by steps × batch, not by "
                f"{data}." if epochs and max(epochs) > 1.5 else "")
        return None, (f"no compute-optimal allocation: the runs' counted training FLOPs are not "
                      f"k·N·D for any one k (FLOPs / ({size} · {data}) ranges "
                      f"{ks.min():.3g}–{ks.max():.3g}).{seen} Fit the joint law against "
                      "consumed data instead (analysis: {data: samples_seen}, or tokens_seen) to "
                      "get an allocation")
    return ComputeModel(k, spread, data), ""


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
    # stored runs not in the study as its file is now written: id, status and grid point
    excluded: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)  # tuned optima across widths
    ledger: list[dict[str, Any]] = field(default_factory=list)  # graded `scalelab next` predictions
    # where the completed runs trained: each distinct platform and its number of runs
    platforms: list[dict[str, Any]] = field(default_factory=list)
    # checkpoint evaluations (`scalelab evaluate`), tuned per shape and compared
    evaluations: EvaluationAnalysis | None = None
    # how big a model for the compute: every approach the runs allow, and their agreement
    compute_optimal: ComputeOptimal | None = None
    # the best value of each tuned setting as a power law of size and compute
    hyper_laws: list[HyperLaw] = field(default_factory=list)
    # what a halving search did at each shape (None: every setting trained to the end)
    search: SearchAnalysis | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "metric": self.metric, "size": self.size,
                "counts": self.counts, "compute": self.compute,
                "scientific_axes": self.scientific, "nuisance_axes": self.nuisance,
                "fits": [f.to_dict() for f in self.fits],
                "winners": [w.to_dict() for w in self.winners],
                "comparisons": [c.to_dict() for c in self.comparisons], "notes": self.notes,
                "runs_not_in_study": self.excluded,
                "transfer": [t.to_dict() for t in self.transfers],
                "ledger": self.ledger, "platforms": self.platforms,
                "selection": self.selection.to_dict() if self.selection else None,
                "compute_optimal": self.compute_optimal.to_dict()
                if self.compute_optimal else None,
                "hyper_laws": [h.to_dict() for h in self.hyper_laws],
                "search": self.search.to_dict() if self.search else None}


def per_shape_optimum(records: Sequence[dict[str, Any]], meta: StudyMeta
                      ) -> tuple[list[dict[str, Any]], list[Winner]]:
    """The runs of each scientific point's best nuisance setting, per the store's meta."""
    meta = StudyMeta.coerce(meta)
    return best_over_nuisance(records, meta.shape_axes, meta.nuisance, meta.grid)


def analysis_settings(meta: StudyMeta) -> dict[str, Any]:
    """The study's ``analysis:`` block as stored in meta (defaults for older stores)."""
    return StudyMeta.coerce(meta).settings


def method_roles(meta: StudyMeta) -> dict[str, str | None]:
    """Each method's declared comparison role, as the study recorded it (empty for a store
    written before roles were recorded: ``scalelab run`` on it again records them)."""
    return StudyMeta.coerce(meta).roles


def analyze_study(records: Sequence[dict[str, Any]], meta: StudyMeta,
                  metric: str | None = None, compare_metric: str | None = None,
                  n_resamples: int = 1000,
                  predictions: Sequence[dict[str, Any]] = (),
                  evaluations: Sequence[dict[str, Any]] = (),
                  curves: Sequence[dict[str, Any]] = (), progress: Progress = None,
                  workers: int | None = None) -> StudyAnalysis:
    """Per-shape optima, scaling-law fits, compute-optimal approaches (Approach 1 reads the
    ``curves``) and method comparisons of one stored study, its ledger of ``predictions``
    graded and its checkpoint ``evaluations`` tuned per shape and compared; ``metric`` and
    ``compare_metric`` default to the study's ``analysis:`` settings. ``progress`` is told
    of each slow step before it starts; the fits run on ``workers`` processes (default:
    every usable core; the same numbers on any count)."""
    meta = StudyMeta.coerce(meta)
    ledger = grade(predictions, records, meta)  # every stored run: proposals may be new
    stored, (records, excluded) = records, in_study(records, meta)
    settings = meta.settings
    metric = metric or settings["metric"]
    compare_metric = compare_metric or settings["compare_metric"]
    size = settings["size"]
    axes, grid, nuisance, scientific = meta.axes, meta.grid, meta.nuisance, meta.shape_axes
    evaluated = analyze_evaluations(
        evaluations, meta.evaluations, stored, [x for x in scientific if x != "seed"],
        compare_metric, by_size=any(axes.get(x, "").startswith("model.") for x in scientific)
    ) if evaluations else None
    selected, winners = per_shape_optimum(records, meta)
    notes: list[str] = []
    unvalidated = sum(1 for r in records if r.get("no_validation_split"))
    if unvalidated:
        notes.append(f"{unvalidated} run(s) trained without a validation split (task.num_val: "
                     "0): no weights were chosen or stopped early on held-out data, and the "
                     "test set was only scored after training, never to choose anything")
    for w in winners:
        if w.at_edge:
            notes.append(f"at {_fmt_point(w.point)} the best {', '.join(w.at_edge)} is at the "
                         "edge of its grid: widen the grid")
    model_axes = [a for a in scientific if axes[a].startswith("model.")]
    sizes = [a for a in model_axes if all(isinstance(v, int | float) and not isinstance(v, bool)
                                          for v in grid.get(a, [None]))]
    # a halving search trains only winners to the end: no neighbours to interpolate through
    searched = any(r.get("status") == "pruned" for r in records)
    transfers = transfer(records, scientific, nuisance, sizes[0], grid) \
        if sizes and not searched else []
    method_axis = next((a for a in scientific if axes[a] == METHOD_PATH), None)
    fits, optimal = _laws(selected, meta, metric, n_resamples, curves, notes, progress, workers)
    search, hyper = _tuning(records, meta, n_resamples, notes, progress)

    comparisons: list[Comparison] = []
    roles = meta.roles
    selection = analyze_selection(records, roles, compare_metric, traces={
        name: d.get("traces") or {} for name, d in meta.methods.items()})
    if selection:  # selection studies compare each cell with its own baselines
        notes += selection.notes
    elif method_axis:
        values = [str(v) for v in grid.get(method_axis, [])]
        full = [v for v in values if roles.get(v) == "full"]  # plain training, if on the axis
        baseline = full[0] if full else (values[0] if values else "")
        within = [a for a in scientific if a != method_axis]
        comparisons = _attempt(notes, compare, selected, compare_metric, method_axis, baseline,
                               "seed", within) or []

    done = [r for r in records if r.get("status") == "completed"]
    compute = {"train_flops": float(sum(r.get("train_flops", 0) for r in records)),
               "wall_time_s": float(sum(r.get("wall_time", 0) for r in records)),
               "samples_seen": float(sum(r.get("samples_seen", 0) for r in records))}
    return StudyAnalysis(
        study=meta.study, metric=metric, compare_metric=compare_metric, size=size,
        counts=dict(Counter(r["status"] for r in records)),
        compute=compute, scientific=scientific, nuisance=nuisance,
        table=_results_table(selected, scientific, size, metric, compare_metric),
        winners=winners, fits=fits, comparisons=comparisons, notes=notes,
        selected=selected if done else [], selection=selection,
        excluded=[{"run_id": r["run_id"], "status": r.get("status"),
                   "point": {a: r.get(a) for a in [*axes, "seed"] if a in r}} for r in excluded],
        transfers=transfers, ledger=ledger, platforms=platforms(records), evaluations=evaluated,
        compute_optimal=optimal, hyper_laws=hyper, search=search,
    )


def _tuning(records: Sequence[dict[str, Any]], meta: StudyMeta, n_resamples: int,
            notes: list[str], progress: Progress) -> tuple[SearchAnalysis | None,
                                                          list[HyperLaw]]:
    """What a halving search did, or (every setting trained to the end) the laws of each
    tuned setting's best value against size."""
    search = analyze_search(records, meta)
    if search:
        notes.append("The nuisance settings were searched by successive halving: only each "
                     "shape's best settings trained to the end, so no shape's optimum can be "
                     "interpolated between neighbours: neither the transfer of tuned settings "
                     "across widths nor a law of the best setting against size is shown "
                     "(train the grid for those).")
        return search, []
    if not meta.nuisance:
        return None, []
    if progress:
        progress(f"hyperparameter laws: {n_resamples:,} seed resamples …")
    return None, study_hyper_laws(records, meta, n_resamples=n_resamples)


def _laws(selected: Sequence[dict[str, Any]], meta: StudyMeta, metric: str, n_resamples: int,
          curves: Sequence[dict[str, Any]], notes: list[str], progress: Progress = None,
          workers: int | None = None) -> tuple[list[FitEntry], ComputeOptimal | None]:
    """The laws against size (or data) per point of the other axes, the joint laws L(N, D),
    and the compute-optimal approaches; what the data cannot support goes to ``notes``."""
    settings, axes, scientific = meta.settings, meta.axes, meta.shape_axes
    model_axes = [a for a in scientific if axes[a].startswith("model.")]
    data_axis = next((a for a in scientific if axes[a] in DATA_PATHS), None)
    if meta.design:  # budgets x sizes: the approaches below fit every run together
        model_axes, data_axis = [], None
    jobs: list[tuple] = []
    if model_axes or data_axis:
        x_name, fixed = (settings["size"], model_axes) if model_axes else (data_axis, [data_axis])
        for key, rows in _groups(selected, [a for a in scientific if a not in fixed]).items():
            for form in settings["forms"] if model_axes else ["auto"]:
                jobs.append((rows, [x_name], metric, key, n_resamples, form))
    jobs += [] if meta.design else _joint_jobs(selected, meta, metric, n_resamples)
    if jobs and progress:
        progress(f"analysing: {len(jobs)} fit{'s' * (len(jobs) != 1)}, {n_resamples:,} "
                 "bootstrap resamples each …")
    done = _fit_all(jobs, notes, workers)
    optimal = None
    if meta.design or any(f.fit.form == "chinchilla" for f in done):
        if progress and (meta.design or settings.get("data", "auto") in CONSUMED):
            progress(f"compute-optimal approaches: {n_resamples:,} bootstrap resamples each …")
        optimal = _attempt(notes, study_answers, selected, settings["size"], metric,
                           meta.design, settings.get("data", "auto"), curves, n_resamples,
                           settings.get("target_compute"))
        if isinstance(optimal, str):
            notes.append(optimal)
            optimal = None
    return done, optimal


#: Bootstrap refits (resamples x runs, over all fits) below which a study's fits run one
#: after another: forking workers costs more than it saves on a small analysis.
PARALLEL_REFITS = 50_000


def _fit_all(jobs: Sequence[tuple], notes: list[str], workers: int | None = None
             ) -> list[FitEntry]:
    """:func:`fit_rows` of every job (its arguments), on every usable core when the
    bootstraps are large (:mod:`.parallel`: the same numbers as one after another); a fit
    the data cannot support is left out with the reason in ``notes``, in the jobs' order."""
    refits = sum(len(job[0]) * job[4] for job in jobs)
    outcomes = run_all([functools.partial(_fit_or_reason, *job) for job in jobs],
                       weights=[len(job[1]) for job in jobs],  # a joint law costs about twice
                       workers=workers if refits >= PARALLEL_REFITS else 1)
    notes += [o for o in outcomes if isinstance(o, str)]
    return [o for o in outcomes if not isinstance(o, str)]


def _fit_or_reason(*args) -> FitEntry | str:
    """:func:`fit_rows`, or why the data cannot support it."""
    try:
        return fit_rows(*args)
    except ScalelabError as exc:
        return str(exc)


#: What a run's last digits depend on, as its provenance records it.
PLATFORM = ("device", "cpu", "cpu_capability", "torch_version", "torch_threads")


def platforms(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct platform the completed runs trained on, with its run count: numbers
    agree to the last digit only between runs of one platform (README, Reproducibility)."""
    counts = Counter(tuple(r.get(k) for k in PLATFORM) for r in records
                     if r.get("status") == "completed")
    return [{**dict(zip(PLATFORM, key)), "runs": n} for key, n in sorted(
        counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]


def joint_fits(selected: Sequence[dict[str, Any]], meta: StudyMeta, metric: str,
               n_resamples: int = 1000, notes: list[str] | None = None) -> list[FitEntry]:
    """The joint laws L(N, D) of a study, one per point of its other scientific axes, fitted
    on ``selected`` (the per-shape optimum), with compute-optimal allocation; a group the data
    cannot support is left out with the reason in ``notes``."""
    notes = [] if notes is None else notes
    fits = [_attempt(notes, fit_rows, *job)
            for job in _joint_jobs(selected, StudyMeta.coerce(meta), metric, n_resamples)]
    return [f for f in fits if f is not None]


def _joint_jobs(selected: Sequence[dict[str, Any]], meta: StudyMeta, metric: str,
                n_resamples: int) -> list[tuple]:
    """The :func:`fit_rows` arguments of each of :func:`joint_fits`' laws."""
    settings, axes, scientific = meta.settings, meta.axes, meta.shape_axes
    model_axes = [a for a in scientific if axes[a].startswith("model.")]
    data_axis = next((a for a in scientific if axes[a] in DATA_PATHS), None)
    data_column = data_axis if settings.get("data", "auto") == "auto" else settings["data"]
    if not (model_axes and data_column):
        return []
    return [(rows, [settings["size"], data_column], metric, key, n_resamples, "chinchilla",
             DEFAULT_HOLDOUT, True)
            for key, rows in _groups(selected, [a for a in scientific if a not in model_axes
                                                and a != data_axis]).items()]


def in_study(records: Sequence[dict[str, Any]], meta: StudyMeta
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs of the study as its file was last run, the other stored runs). Runs of an older
    version of the file, or of other overrides, stay stored but enter no table or fit."""
    run_ids = StudyMeta.coerce(meta).run_ids
    if run_ids is None:  # a store written before run ids were recorded
        return list(records), []
    wanted = set(run_ids)
    return ([r for r in records if r["run_id"] in wanted],
            [r for r in records if r["run_id"] not in wanted])


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
    return ", ".join(f"{k}={v}" for k, v in items if v is not None) or "all runs"


def fit_rows(rows: Sequence[dict[str, Any]], x_names: Sequence[str], metric: str,
             key: tuple = (), n_resamples: int = 1000, form: str = "auto",
             holdout: str | float = DEFAULT_HOLDOUT, allocate: bool = False) -> FitEntry:
    """Fit ``metric`` against the ``x_names`` columns of ``rows``, with bootstrap, backtest and
    diagnostics; with ``allocate`` (a joint law), compute-optimal allocation under the compute
    model the runs' counted FLOPs follow, only when the fit is a law and that model exists.
    ``n_resamples=0``: the first look alone (no bootstrap, ``boot`` None, no allocation): the
    fit, its backtest, the diagnostics that need no bootstrap (whether it is a law is decided
    by them: the bootstrap's diagnostics are never errors) and the compute model."""
    rows = [r for r in rows if r.get(metric) is not None
            and all(r.get(n) is not None for n in x_names)]
    x = np.array([[float(r[n]) for n in x_names] for r in rows]).reshape(len(rows), len(x_names))
    y = np.array([float(r[metric]) for r in rows])
    title = (f"{metric} vs {' & '.join(x_names)}" + (f", form {form}" if form != "auto" else "")
             + (f" [{_fmt_point(key)}]" if key else ""))
    if len(np.unique(x[:, 0])) < 3:
        raise ScalelabError(f"{title}: needs at least 3 distinct {x_names[0]} values to fit")
    xs = x if len(x_names) > 1 else x[:, 0]
    # Diagnosed once when finished (with its bootstrap); the first look (before the bootstrap,
    # and for a given form before its backtest) only decides whether to allocate compute.
    if form == "auto":
        fit = choose_form(xs, y, holdout=holdout, diagnostics=False)
    else:
        fit = fit_law(xs, y, form, diagnostics=False)
        try:
            fit.backtest = backtest(xs, y, form, holdout)
        except ScalelabError:
            fit.backtest = None  # too few points to hold any out; the diagnostics say so
    first_look = diagnose(fit, x, y, None, x_names, metric)
    lo, hi = x[:, 0].min(), x[:, 0].max() * 2
    line = np.geomspace(lo, hi, 60)
    if len(x_names) == 1:
        grid = line
    else:
        grid = np.array([[n, d] for d in np.unique(x[:, 1]) for n in line])
    derived, budgets, note, model = {}, [], "", None
    if allocate and len(x_names) == 2:
        model, note = compute_model(rows, x_names[0], x_names[1])
        if model and not is_law(first_look):
            model, note = None, ("no compute-optimal allocation: the fit is not a law ("
                                 + verdict(first_look)[1] + ")")
        if model:
            c_max = float(max(r["train_flops"] for r in rows))
            budgets = [c_max, 10 * c_max, 100 * c_max]
            for i, c in enumerate(budgets):
                derived[f"N_opt[{i}]"] = lambda p, c=c: float(
                    compute_optimal(p, [c], flops_per_param_sample=model.k)[0][0])
                derived[f"D_opt[{i}]"] = lambda p, c=c: float(
                    compute_optimal(p, [c], flops_per_param_sample=model.k)[1][0])
    if n_resamples == 0:
        fit.diagnostics = first_look
        return FitEntry(title, list(x_names), metric, x, y, fit, None, grid,
                        allocation_note=model.describe() if model else note, point=dict(key),
                        compute=model)
    boot = bootstrap(fit, xs, y, n_resamples=n_resamples, predict_at=grid, derived=derived,
                     diagnostics=False)
    fit.diagnostics = diagnose(fit, x, y, boot, x_names, metric)
    entry = FitEntry(title, list(x_names), metric, x, y, fit, boot, grid,
                     allocation_note=model.describe() if model else note, point=dict(key),
                     compute=model)
    if model:
        n_opt, d_opt = compute_optimal(fit.params, budgets, flops_per_param_sample=model.k)
        for i, (c, n, d) in enumerate(zip(budgets, n_opt, d_opt)):
            warnings = [w for w in (extrapolation("N_opt", float(n), x[:, 0]),
                                    extrapolation("D_opt", float(d), x[:, 1])) if w]
            entry.allocation.append(
                {"flops": c, "N_opt": float(n), "D_opt": float(d),
                 "N_opt_ci": list(boot.derived[f"N_opt[{i}]"]),
                 "D_opt_ci": list(boot.derived[f"D_opt[{i}]"]),
                 "N_opt_undefined": boot.undefined.get(f"N_opt[{i}]", 0),
                 "warnings": [w.message for w in warnings]})
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
