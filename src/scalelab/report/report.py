"""The study report: ``report.md``, a self-contained ``report.html`` (figures embedded, no
external URLs), ``scaling_law.json``, ``comparison_table.txt`` and ``figures/``.

The content is built once as a list of blocks and rendered to both Markdown and HTML.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.approaches import compute_optimal_lines, estimate_rows
from ..analysis.evaluations import EvaluationAnalysis
from ..analysis.ledger import calibration, scorecard, setting_rows
from ..analysis.parallel import run_all
from ..analysis.sample_selection import (
    KINDS,
    SelectionAnalysis,
)
from ..analysis.study_analysis import Progress, StudyAnalysis, analyze_study
from ..files import write_atomically
from ..outdir import OutDir
from ..store import Store
from . import plots
from .provenance import provenance_blocks
from .search import search_blocks
from .tables import EMPTY, MeanStd, Percent, format_table, is_number, number, pm_caption

#: Adds a figure to the page: (matplotlib figure, file stem, caption).
Figure = Callable[[Any, str, str], None]


@dataclass
class Report:
    markdown: Path
    html: Path
    scaling_law: Path
    comparison_table: Path
    figures: list[Path]
    analysis: StudyAnalysis
    replaced_runs: int | None = None  # set when the report it replaced had more completed


def write_report(out_dir: str | Path, n_resamples: int = 1000,
                 out: str | Path | None = None, progress: Progress = None,
                 workers: int | None = None) -> Report:
    """Analyse the study stored in ``out_dir`` and write every report file there (or into
    ``out``: a store on read-only storage is read, and its report written elsewhere).
    ``progress`` is told of each slow step before it starts (one line each); the fits and
    the figures run on ``workers`` processes (default: every usable core)."""
    out = Path(out if out is not None else out_dir)
    with Store.open(out_dir) as store:
        records, meta, curves = store.records(), store.study_meta(), store.curves()
        evaluations, predictions = store.evaluations(), store.predictions()
    analysis = analyze_study(records, meta, n_resamples=n_resamples, predictions=predictions,
                             evaluations=evaluations, curves=curves, progress=progress,
                             workers=workers)
    fig_dir = OutDir(out).figures
    blocks: list[tuple] = []
    pending: list[tuple[Any, Path]] = []  # drawn, saved together once every one is drawn

    def figure(fig, name: str, caption: str) -> None:
        pending.append((fig, fig_dir / name))
        blocks.append(("fig", (fig_dir / name).with_suffix(".png"), caption))

    # Completed results, not runs of every status: 6 completed replaced by 6 failed is a loss.
    before, now = _previous_run_count(out), analysis.counts.get("completed", 0)
    shrunk = before if before is not None and now < before else None
    _render_head(analysis, before, now, blocks)
    blocks += provenance_blocks(analysis, records, meta)
    blocks.append(("muted", READING))
    _render_verdicts(analysis, blocks)
    _render_summary(analysis, blocks)
    _render_results(analysis, blocks, figure)
    _render_laws(analysis, blocks, figure)
    _render_compute_optimal(analysis, blocks, figure)
    _render_methods(analysis, curves, blocks, figure)
    if analysis.search:
        search_blocks(analysis.search, curves, blocks, figure)
    _render_figures(analysis, records, curves, blocks, figure, meta.design)
    _render_closing(analysis, blocks)
    if pending and progress:
        progress(f"writing {len(pending)} figure{'s' * (len(pending) != 1)} (PNG and SVG) "
                 f"and the report into {out} …")
    figures = [path for paths in run_all([functools.partial(plots.save, fig, stem)
                                          for fig, stem in pending], workers=workers)
               for path in paths]

    paths = OutDir(out)
    report = Report(paths.report_md, paths.report_html, paths.scaling_law,
                    paths.comparison_table, figures, analysis, shrunk)
    write_atomically(report.markdown, _markdown(blocks, out))
    write_atomically(report.html, _html(blocks, analysis.study))
    write_atomically(report.scaling_law, json.dumps(analysis.to_dict(), indent=2, default=_json_default))
    write_atomically(report.comparison_table, comparison_text(analysis))
    return report


#: How to read the numbers, said once near the top.
READING = ("Numbers have 4 significant digits, set to one decimal place per column where the "
           "column spans less than a decade; a ± is defined in the caption of each table that "
           "shows one; relative errors are in percent.")


def _render_head(a: StudyAnalysis, before: int | None, now: int, blocks: list) -> None:
    """The title and a warning when the report shrank."""
    blocks.append(("h1", f"Study report: {a.study}"))
    if before is not None and now < before:
        blocks.append(("warn", f"This report is built from {now} runs, fewer than the {before} "
                               "of the report it replaced (completed runs; failed or unfinished "
                               "ones count for none): results were removed from the store, runs "
                               "failed when trained again, or the study file now declares fewer "
                               "(runs not in it are listed at the end). Restore the store from a "
                               "backup if that was not meant."))


def _render_verdicts(a: StudyAnalysis, blocks: list) -> None:
    """The verdict of every fitted law, and the runs left out."""
    if a.fits:
        blocks.append(("h2", "Verdicts"))
        blocks.append(("p", "Each fitted law, judged by its diagnostics: trustworthy (none found a "
                            "problem), use with care (warnings), or not a law (the curve does not "
                            "describe loss falling with scale; no allocation is derived from it)."))
        rows = [[e.title, e.fit.form, *e.fit.verdict] for e in a.fits]
        blocks.append(("table", ["fit", "form", "verdict", "why"], rows,
                       _optimum_notation(r[3] for r in rows)))
    if a.excluded:
        blocks.append(("warn", f"{len(a.excluded)} stored run(s) are not in this study as its "
                               "file is now written (an older version of the file, or other "
                               "overrides): they are left out of every table and fit, and "
                               "listed under Runs not in this study at the end."))


def _render_summary(a: StudyAnalysis, blocks: list) -> None:
    """Run counts and the compute used (the platforms are under Provenance)."""
    blocks.append(("h2", "Summary"))
    blocks.append(("table", ["status", "runs"], sorted(a.counts.items())))
    blocks.append(("p", f"Compute used: {a.compute['train_flops']:.3g} training FLOPs (counted), "
                        f"{a.compute['wall_time_s']:.1f} s of training wall time, "
                        f"{a.compute['samples_seen']:.3g} samples seen. Scientific axes: "
                        f"{', '.join(a.scientific) or 'none'}; nuisance axes (tuned per shape on "
                        f"validation loss): {', '.join(a.nuisance) or 'none'}."))


def _render_results(a: StudyAnalysis, blocks: list, figure: Figure) -> None:
    """The results table, the per-shape optima, their transfer and the ledger."""
    if a.table and not a.selection:  # a selection study's results are its own section
        blocks.append(("h2", "Results"))
        cols = [*a.scientific, a.size, a.metric, a.compare_metric, "runs"]
        rows = [[_setting(r.get(c)) for c in a.scientific] + [r.get(a.size)]
                + [_pm(r, a.metric), _pm(r, a.compare_metric), r.get("runs")] for r in a.table]
        spread = any(isinstance(v, MeanStd) and v.std is not None for row in rows for v in row)
        blocks.append(("table", cols, rows,
                       "Mean of each grid point's runs"
                       + (f" at its best {', '.join(a.nuisance)}" if a.nuisance else "")
                       + (". " + pm_caption("runs") if spread else " (one run each: no ±).")))
    if a.winners:
        blocks.append(("h2", "Per-shape optimum over nuisance axes"))
        blocks.append(("table", ["point", *a.nuisance, "val_loss", "at grid edge"],
                       [[_point(w.point), *map(_setting, w.nuisance.values()), w.val_loss,
                         ", ".join(w.at_edge) or "—"] for w in a.winners]))
    if a.transfers:
        _transfer_blocks(a.transfers, blocks, figure)
    if a.hyper_laws:
        _hyper_law_blocks(a.hyper_laws, blocks)
    if a.ledger:
        _ledger_blocks(a.ledger, blocks)


def _render_laws(a: StudyAnalysis, blocks: list, figure: Figure) -> None:
    """Every fitted law: verdict, diagnostics, parameters, backtest, allocation, figure."""
    if a.fits:
        blocks.append(("h2", "Scaling laws"))
    for i, entry in enumerate(a.fits):
        fit, bt = entry.fit, entry.fit.backtest
        blocks.append(("h3", entry.title))
        label, reasons = fit.verdict
        blocks.append(("warn" if label != "trustworthy" else "p", f"Verdict: {label} — {reasons}"))
        for d in entry.diagnostics:
            blocks.append(("li", f"{d.severity}: {d.message}"))
        notation = _optimum_notation(d.message for d in entry.diagnostics)
        if notation:
            blocks.append(("muted", notation))
        blocks.append(("p", f"Form `{fit.form}`: {fit.formula}. Huber (δ = {fit.delta:g}) on log "
                            f"loss, summed over {fit.n_points} runs, L-BFGS-B from {fit.n_starts} "
                            f"starts; converged: {'yes' if fit.converged else 'NO'} (max |gradient| "
                            f"{fit.grad_norm:.2g}). Intervals: {int(entry.boot.level * 100)}% "
                            f"percentile bootstrap over runs ({len(entry.boot.samples)} resamples)."))
        blocks.append(("table", ["parameter", "value", "CI low", "CI high"],
                       [[k, *map(_num, (v, *fit.intervals.get(k, (None, None))))]
                        for k, v in fit.params.items()],
                       f"The full fit (on all {fit.n_points} runs) and its "
                       f"{int(entry.boot.level * 100)}% bootstrap CI."))
        if bt is not None:
            chosen = (" The form was chosen by this backtest, so this error is optimistic."
                      if fit.form_choice else "")
            blocks.append(("p", f"Backtest (fitted on {bt.train_points} points, holdout = "
                                f"{_holdout_words(bt.holdout)}): RMSLE {bt.rmsle:.4g}, mean "
                                f"|relative error| {bt.mean_abs_relative_error:.2%} on "
                                f"{int(bt.held_out.sum())} held-out points.{chosen}"))
        if fit.form_choice:
            blocks.append(("table", ["candidate form", "backtest RMSLE", "mean |relative error|"],
                           [[s["form"], s.get("rmsle"), Percent(s.get("mean_abs_relative_error"))]
                            for s in fit.form_choice],
                           "Each candidate form fitted on the smaller points and scored on the "
                           "held-out ones ('—': too few points to fit it)."))
        if entry.allocation:
            blocks.append(("p", f"Compute-optimal allocation at the largest counted budget of "
                                f"the runs and 10× and 100× beyond it; compute model: "
                                f"{entry.allocation_note}."))
            blocks.append(("table", ["i", "budget C (FLOPs)", "N_opt", "N_opt CI", "D_opt",
                                     "D_opt CI", "warning"],
                           [[j, r["flops"], _num(r["N_opt"]), _ci(r["N_opt_ci"]),
                             _num(r["D_opt"]), _ci(r["D_opt_ci"]),
                             " ".join(r["warnings"]) or "—"]
                            for j, r in enumerate(entry.allocation)],
                           "From the full fit; CIs from its bootstrap. Row i is what the "
                           "diagnostics call N_opt[i] and D_opt[i]."))
        elif entry.allocation_note:
            blocks.append(("muted", entry.allocation_note + "."))
        figure(plots.law_figure(entry), f"law_{i}", _law_caption(entry))


def _law_caption(entry) -> str:
    """Which fit the figure draws: always the full fit; the backtest's only as predictions."""
    bt, level = entry.fit.backtest, int(entry.boot.level * 100)
    words = (f"{entry.title}. Line and band: the full fit (on all {entry.fit.n_points} runs) and "
             f"its {level}% bootstrap band")
    if bt is None or not bt.held_out.any():
        return words + "; no backtest (too few points to hold any out)."
    return (words + f"; hollow: the {int(bt.held_out.sum())} runs the backtest held out; ×: "
            f"the backtest fit's predictions for them (fitted on the other {bt.train_points} "
            "runs; its curve is not drawn).")


def _render_compute_optimal(a: StudyAnalysis, blocks: list, figure: Figure) -> None:
    """Every approach's answer to "how big a model for this compute?", their agreement, the
    approach to use, and each approach's diagnostics in plain words."""
    co = a.compute_optimal
    if co is None:
        return
    blocks.append(("h2", "How big a model for the compute: three approaches"))
    verdict = co.agreement
    blocks.append(("warn" if verdict.verdict != "agree" else "p",
                   f"Agreement: {verdict.verdict} — {verdict.reason} Use {verdict.why}"))
    blocks.append(("p", f"N* ∝ C^a and D* ∝ C^b, with N* quoted at the target compute "
                        f"C = {co.target:.3g} FLOPs (`analysis.target_compute`); compute model "
                        f"C = k·N·D with k = {co.k:.3g} FLOPs per parameter per example, "
                        f"measured from the runs' counted FLOPs. Intervals: "
                        f"{int(co.joint[0].boot.level * 100)}% bootstrap."))
    blocks.append(("table", ["approach", "a [CI]", "b [CI]", "N* at target [CI]", "verdict"],
                   [[e.name, f"{_num(e.a)} {_ci(e.a_interval)}", f"{_num(e.b)} {_ci(e.b_interval)}",
                     f"{_num(e.n_opt_target)} {_ci(e.n_opt_target_interval)}", row[-1]]
                    for e, row in zip(verdict.estimates, estimate_rows(co))],
                   f"Each approach's exponents and N* at C = {_num(co.target)} FLOPs, with "
                   f"{int(co.joint[0].boot.level * 100)}% bootstrap intervals."))
    for note in co.notes:
        blocks.append(("muted", note))
    for e in verdict.estimates:
        for d in e.diagnostics:
            if d.severity != "info":
                blocks.append(("li", f"{e.name} — {d.severity}: {d.message}"))
    blocks.append(("p", f"Approach 3 is the joint law L = E + A/N^α + B/D^β fitted two ways: "
                        f"variable projection (E, A, B solved exactly for each α, β; squared "
                        f"relative error) and the Huber fit on log loss. Shown as Approach 3: "
                        f"{co.chosen_joint_why}."))
    names = sorted({k for j in co.joint for k in j.fit.params})
    blocks.append(("table", ["fit", *names, "verdict"],
                   [[j.name, *(j.fit.params.get(k) for k in names), j.fit.verdict[0]]
                    for j in co.joint]))
    budgets = []
    if co.approach2 is not None:
        budgets = [p.budget for p in co.approach2.profiles]
        blocks.append(("table", ["budget C", "runs", "N* [CI]", "D*", "loss at N*", "used"],
                       [[p.budget, len(p.sizes), f"{_num(p.n_opt)} {_ci(list(p.n_opt_interval))}",
                         p.d_opt, p.loss_opt, "yes" if p.usable else "no"]
                        for p in co.approach2.profiles]))
        figure(plots.isoflop_figure(co.approach2, a.metric), "isoflop_profiles",
               "IsoFLOP profiles (Approach 2): each budget's runs and the parabola in ln N "
               "fitted to all of them (no backtest); ◆ its minimum N* with its bootstrap "
               "interval (cut at the figure's edge where it runs off; the table has its "
               "numbers); filled minima enter the power laws N*(C), hollow ones are left out.")
    figure(plots.approaches_figure(verdict.estimates, compute_optimal_lines(co), budgets,
                                   co.target), "compute_optimal",
           "Compute-optimal size N* against compute: each approach's full fit (on all the runs "
           "it uses; no backtest fit is drawn), from the smallest budget to the target "
           f"compute (dotted); at the target, each approach's {int(co.joint[0].boot.level * 100)}% "
           "bootstrap interval (cut at the figure's edge where it runs off).")


def _render_methods(a: StudyAnalysis, curves, blocks: list, figure: Figure) -> None:
    """Selection cells against their baselines, and the evaluations of checkpoints."""
    if a.selection:
        _selection_blocks(a.selection, curves, blocks, figure)
    if a.evaluations:
        _evaluation_blocks(a.evaluations, blocks, figure)
        if a.evaluations.tuned:
            _tuning_blocks(a.evaluations.tuned, a.evaluations.tuned_on, blocks)
        if a.evaluations.gains is not None:
            _evaluation_scale_blocks(a.evaluations, blocks, figure)


def _render_figures(a: StudyAnalysis, records: list[dict[str, Any]], curves, blocks: list,
                    figure: Figure, design: dict[str, Any] | None = None) -> None:
    """Comparisons, and the metric along each axis, against compute and during training."""
    if a.comparisons:
        blocks.append(("h2", "Comparisons"))
        blocks.append(("table", *_comparison_rows(a)))
        figure(plots.forest_figure(a.comparisons), "forest", "difference to the baseline")
    axes, table, data = _figure_axes(a, records, design)
    if table and a.scientific and not a.selection:
        blocks.append(("h2", "Metrics along each axis"))
        for axis in a.scientific:
            # in an IsoFLOP design the data axis is set by size and budget: never a line of its own
            others = [o for o in axes if o != axis and not (o == "budget" and axis == data)]
            figure(plots.axis_figure(table, a.metric, axis, others), f"axis_{axis}",
                   f"{plots.label(a.metric)} vs {axis}: mean ± std over seeds (error bars) of "
                   "each grid point's runs, joined by straight lines; no law is drawn"
                   + _encoding_words(others, table) + ".")
    if any(r.get("train_flops") for r in records):
        blocks.append(("h2", "Loss against compute"))
        figure(plots.compute_figure(records, a.metric, axes),
               "compute", f"{plots.label(a.metric)} of every completed run (every seed"
                          + (f" and every {', '.join(a.nuisance)}" if a.nuisance else "")
                          + ") against its counted training FLOPs; no law is drawn"
                          + _encoding_words(axes, records) + ".")
    if curves:
        blocks.append(("h2", "Learning curves"))
        tuned = bool(a.nuisance) and bool(a.selected)
        figure(plots.curves_figure(curves, a.selected if tuned else records, axes),
               "curves", "validation loss during training of "
               + (f"each grid point's runs at its best {', '.join(a.nuisance)}" if tuned
                  else "every run") + _encoding_words(axes, records) + ".")


def _figure_axes(a: StudyAnalysis, records: list[dict[str, Any]],
                 design: dict[str, Any] | None) -> tuple[list[str], list[dict[str, Any]], str]:
    """The axes the figures tell apart, the results table they draw and the design's data
    axis: the scientific axes, except that an IsoFLOP design's data axis (a different value
    in every run) is replaced by the budget that set it."""
    data = (design or {}).get("data", "")
    done = [r for r in records if r.get("status") == "completed"]
    if data not in a.scientific or not done or any(r.get("budget") is None for r in done):
        return list(a.scientific), a.table, ""
    budget = {tuple(r.get(x) for x in a.scientific): r["budget"] for r in done}
    table = [{**row, "budget": budget.get(tuple(row.get(x) for x in a.scientific))}
             for row in a.table]
    return [x if x != data else "budget" for x in a.scientific], table, data


def _encoding_words(axes: list[str], rows: list[dict[str, Any]]) -> str:
    """How a figure's lines tell its grid axes apart (plots.styles), for its caption."""
    if not axes:
        return ""
    words = [f"colour: {axes[0]}"]
    if len(axes) > 1:
        numbers = all(isinstance(r.get(axes[1]), int | float) for r in rows if axes[1] in r)
        words.append(f"lightness and marker: {axes[1]} (lighter: "
                     f"{'smaller' if numbers else 'earlier alphabetically'})")
    if len(axes) > 2:
        words.append(f"line style and hollow markers: {', '.join(axes[2:])}")
    return "; " + "; ".join(words)


def _render_closing(a: StudyAnalysis, blocks: list) -> None:
    """The runs left out of this study, and the analysis's notes."""
    if a.excluded:
        blocks.append(("h2", "Runs not in this study"))
        blocks.append(("table", ["run_id", "status", "grid point"],
                       [[r["run_id"], r["status"], _point(r["point"])] for r in a.excluded]))
    if a.notes:
        blocks.append(("h2", "Notes"))
        for note in a.notes:
            blocks.append(("p", note))

def _ledger_blocks(ledger: list[dict[str, Any]], blocks: list) -> None:
    """Predicted against measured for every extrapolation `scalelab next` made."""
    blocks.append(("h2", "Extrapolation ledger"))
    card = scorecard(ledger)
    check = calibration(ledger)  # a warning only for more misses than chance explains
    blocks.append(("warn" if check and check["overconfident"] else "p", card + "."))
    blocks.append(("p", "Every prediction `scalelab next` made, with the law and data it was "
                        "fitted on stored beside it (scaling_law.json), graded once its runs "
                        "exist: measured is the mean over seeds at the best nuisance setting."))
    blocks.append(("table", ["made (UTC)", "kind", "grid point", "N", "D", "budget C",
                             "predicted", "interval", "measured (runs)", "held"],
                   [[time.strftime("%Y-%m-%d %H:%M", time.gmtime(g["created_at"])), g["kind"],
                     _point(g["point"]), g["n"], g["d"], g["budget"], g["predicted"],
                     f"[{g['interval'][0]:.4g}, {g['interval'][1]:.4g}]",
                     "—" if g["measured"] is None else
                     f"{g['measured']:.4g} ({g['runs']}/{g['proposed']})",
                     {True: "yes", False: "NO"}.get(g["held"], "pending")] for g in ledger]))
    settings = [(g, h) for g in ledger for h in (g.get("hyper") or {}).values()]
    if settings:
        blocks.append(("p", scorecard(setting_rows(ledger), "tuned-setting prediction(s)")
                       + ". A setting proposed as one value was not tuned: its prediction and "
                         "the run's loss are recorded, not graded."))
        blocks.append(("table", ["grid point", "setting", "predicted", "interval of the "
                                 "optimum", "proposed", "found", "held"],
                       [[_point(g["point"]), h["axis"], h["value"],
                         f"[{h['optimum_interval'][0]:.4g}, {h['optimum_interval'][1]:.4g}]",
                         ", ".join(f"{v:g}" for v in h.get("proposed", [])),
                         "—" if h.get("found") is None else h["found"],
                         _held(h)] for g, h in settings]))


def _held(h: dict[str, Any]) -> str:
    if not h["tuned"]:
        return "not tuned"
    if h["held"] is None:
        return "bound" if h.get("found_at_edge") else "pending"
    return "yes" if h["held"] else "NO"


def _hyper_law_blocks(laws, blocks: list) -> None:
    """The best value of each tuned setting against size and compute, per shape and as a law
    (what `scalelab next` proposes new shapes' settings from)."""
    blocks.append(("h2", "Hyperparameter laws"))
    blocks.append(("p", "Each shape's optimum is interpolated (a parabola in the log of the "
                        "setting through its best grid value and the two neighbours), then "
                        "fitted as a power law of the parameter count N and of the training "
                        "compute C; an optimum at the edge of its grid is a bound and is left "
                        "out. `scalelab next` proposes new shapes' settings from the law."))
    for law in laws:
        warned = any(d.severity in ("warning", "error") for d in law.diagnostics)
        blocks.append(("warn" if warned else "p", law.sentence() + "."))
        for d in law.diagnostics:
            blocks.append(("li", f"{d.severity}: {d.message}"))
        blocks.append(("table", ["point", "N", "C", f"best {law.axis} on the grid",
                                 "interpolated optimum", "at grid edge"],
                       [[_point(o.point), o.n, o.c, _setting(o.best), o.optimum,
                         "yes" if o.at_edge else "—"] for o in law.optima]))


def _transfer_blocks(transfers, blocks: list, figure) -> None:
    """Does each tuned setting's optimum move with width? A sentence and a table per group,
    and the validation loss against the setting, one line per width."""
    blocks.append(("h2", "Do tuned settings transfer across widths?"))
    blocks.append(("p", "For each width, the best grid value (lowest mean validation loss) and "
                        "the optimum interpolated by a parabola in log scale through it and its "
                        "two neighbours. A setting transfers when the optima stay within one "
                        "grid step."))
    for t in transfers:
        blocks.append(("p" if t.stays and not t.edges else "warn", t.sentence() + "."))
        blocks.append(("table", [t.width_axis, f"best {t.axis} (grid)",
                                 f"interpolated {t.axis}", "val_loss", "at grid edge"],
                       [[_setting(r[t.width_axis]), _setting(r["best"]), r["optimum"],
                         r["val_loss"], "yes" if r["at_edge"] else "—"] for r in t.rows]))
    axes = {t.axis for t in transfers}
    for axis in sorted(axes):
        chosen = [t for t in transfers if t.axis == axis]
        figure(plots.transfer_figure(chosen), f"transfer_{axis}",
               f"Validation loss against {axis}, one line per {chosen[0].width_axis}; a star "
               "marks each width's interpolated optimum (one panel per group).")


def _evaluation_blocks(e: EvaluationAnalysis, blocks: list, figure: Figure) -> None:
    """Checkpoints re-scored under each evaluation setting, compared with the first."""
    summary, comparisons, metric = e.summary, e.comparisons, e.metric
    blocks.append(("h2", "Evaluation settings (checkpoints re-scored, nothing retrained)"))
    blocks.append(("p", f"{metric} of every trained model under each setting (`scalelab "
                        "evaluate`). Each setting is compared with the first, paired by trained "
                        "model: mean difference with t-based CI, paired t-test and Wilcoxon p, "
                        "Holm-adjusted over all settings, Cohen's d_z."))
    by_name = {c.candidate: c for c in comparisons}
    table = []
    for row in summary:
        c = by_name.get(row["setting"])
        table.append([row["setting"], row["models"],
                      _mean_std(row["mean"], row["std"]),
                      f"{c.mean_diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]" if c else "baseline",
                      c.p_value if c else None, c.wilcoxon_p if c else None,
                      c.p_holm if c else None, c.effect_size if c else None])
    blocks.append(("table", ["setting", "models", metric, "Δ vs first [CI]", "p (t)",
                             "p (Wilcoxon)", "p (Holm)", "d_z"], table,
                   pm_caption("models", over="the trained models scored")))
    if comparisons:
        figure(plots.forest_figure(comparisons), "evaluations",
               f"difference in {metric} to {summary[0]['setting']}, paired by model")


def _tuning_blocks(winners: list[dict[str, Any]], metric: str, blocks: list) -> None:
    """Which values each tuned evaluation setting took at each shape."""
    blocks.append(("h3", "Evaluation settings tuned per shape"))
    blocks.append(("p", "Settings listed under `tune:` are nuisance axes of their evaluator: "
                        f"at each shape (over its seeds) the values with the best mean {metric} "
                        "(validation) are used, never chosen on the test set. A value at the "
                        "edge of its list may mean the list should be widened."))
    blocks.append(("table", ["setting", "shape", "chosen", metric, "at list edge"],
                   [[w["setting"], _point(w["point"]) or "all runs",
                     ", ".join(f"{k}={v}" for k, v in w["chosen"].items()), w[metric],
                     ", ".join(w["at_edge"]) or "—"] for w in winners]))


def _evaluation_scale_blocks(e: EvaluationAnalysis, blocks: list, figure: Figure) -> None:
    """Each setting across model (and data) sizes: its metric and its gain over the first."""
    axes, gains, metric = e.axes, e.gains, e.metric
    if not gains:
        return
    first = gains[0]["setting"]
    blocks.append(("h3", f"Across sizes: each setting against {first}"))
    tests = sum(g["p"] is not None for g in gains)
    blocks.append(("p", f"Mean {metric} per grid point and setting, and the gain over "
                        f"{first} paired by trained model (seeds), with 95% t-based CIs. The "
                        "CIs are per point and unadjusted (exploratory); p (Holm) adjusts the "
                        f"paired t-test over all {tests} point × setting tests."))
    blocks.append(("table", [*axes, "n_params", "setting", "runs", metric, "gain",
                             "CI low", "CI high", "p (Holm)"],
                   [[*(g[x] for x in axes), g["n_params"], g["setting"], g["runs"], g["mean"],
                     g["gain"], g["gain_low"], g["gain_high"], g["p_holm"]] for g in gains]))
    data_axis = next((x for x in axes if x in ("num_train", "num_train_tokens")), None)
    figure(plots.settings_figure(gains, data_axis, gain=False, metric=metric),
           "evaluations_by_size", f"{metric} of each setting against model size")
    figure(plots.settings_figure(gains, data_axis, gain=True, metric=metric),
           "evaluations_gain", f"gain over {first} against model size (95% CI)")


def _selection_blocks(sel: SelectionAnalysis, curves, blocks: list, figure) -> None:
    """Each selection cell against full data at equal steps, the compute-matched full run and
    a random subset at the same rate; the Pareto front; controller traces; per-class effects."""
    blocks.append(("h2", "Sample selection"))
    blocks.append(("p", f"{sel.metric} per method and target rate (mean ± std over seeds). "
                        "Compute is the counted training FLOPs actually spent (scoring forward "
                        "plus forward/backward of the selected samples) and wall time the "
                        "measured training time, both as a fraction of full data at the same "
                        "steps (the same epochs, for a method that takes fewer steps over "
                        "them); energy, where the hardware's counters measured it (NVML on "
                        "NVIDIA GPUs, RAPL on CPUs), likewise ('—': not measured). The "
                        "controller is AST's threshold controller (pi or reference). "
                        "Differences are paired by seed; p (Holm) adjusts over every "
                        "test in this table; d_z is Cohen's paired effect size."))
    headers = ["method", "rate", "scoring", "controller", "seeds", sel.metric, "compute",
               "matched run's compute", "wall", "energy", "activation (2nd half)"]
    for kind in KINDS:
        headers += [f"Δ vs {KINDS[kind]} [CI]", "p", "p (Holm)", "d_z"]
    rows = []
    varied = any(cell.context for cell in sel.cells)
    if varied:  # cells also differ in other settings (e.g. a model-size axis)
        headers.insert(4, "where")
    for cell in sel.cells:
        where = [", ".join(f"{k}={v}" for k, v in cell.context.items())] if varied else []
        rate = " = ".join([f"{cell.rate:g}", *(s.lstrip("@") for s in cell.same_as)])
        row = [cell.method, rate, cell.scoring or "—", cell.controller_name or "—", *where,
               cell.seeds,
               _mean_std(cell.metric_mean, cell.metric_std),
               cell.compute_fraction, cell.matched_compute, cell.wall_fraction,
               cell.energy_fraction,
               f"{cell.activation[0]:.3f}–{cell.activation[1]:.3f}" if cell.activation else "—"]
        for kind in KINDS:
            c = cell.comparisons.get(kind)
            row += [f"{c.mean_diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]", c.p_value,
                    c.p_holm, c.effect_size] if c else ["—", None, None, None]
        rows.append(row)
    blocks.append(("table", headers, rows, pm_caption("seeds")))
    controlled = [c for c in sel.cells if c.controller]
    if controlled:
        blocks.append(("p", "Threshold controller (means over seeds): settling step = first step "
                            "after which the EMA activation rate stays within ±0.02 of the "
                            "target; overshoot as a fraction of the target; steady-state error "
                            "= mean batch rate over the second half − target."))
        blocks.append(("table", ["cell", "settling step", "overshoot", "steady-state error"],
                       [[c.label, c.controller.get("settling_step"), c.controller.get("overshoot"),
                         c.controller.get("steady_state_error")] for c in controlled]))
    figure(plots.pareto_figure(sel.points, sel.front, sel.metric), "selection_pareto",
           f"{plots.label(sel.metric)} against realized training compute; Pareto front: "
           + ", ".join(p["label"] for p in sel.front))
    for t in sel.traces:
        references = sorted({ref for _, ref in t.declared.values() if ref})
        figure(plots.traces_figure(curves, t.labels, t.runs, t.declared),
               f"selection_traces_{t.method}", f"{t.method}: per-step traces, first seed of "
               "each cell" + (f"; dotted: each run's {', '.join(references)}"
                              if references else ""))
    with_classes = [(c.label, c.class_diffs) for c in sel.cells if c.class_diffs]
    if with_classes:
        figure(plots.class_figure(with_classes), "selection_classes",
               "per-class test accuracy difference to the compute-matched full run")
        blocks.append(("p", "Per-class differences to the compute-matched run, paired by seed. "
                            "A class is listed as gaining or losing only when its Holm-adjusted "
                            "p (over the classes of that cell) is below 0.05; the per-class "
                            "intervals in the figure are unadjusted and exploratory."))
        blocks.append(("table", ["cell", "classes that gain (Holm p < 0.05)",
                                 "classes that lose (Holm p < 0.05)"],
                       [[name, ", ".join(str(c) for c, d, *_, ph in diffs
                                         if ph < 0.05 and d > 0) or "—",
                         ", ".join(str(c) for c, d, *_, ph in diffs
                                   if ph < 0.05 and d < 0) or "—"]
                        for name, diffs in with_classes]))


def _comparisons(a: StudyAnalysis) -> list:
    if a.selection:
        return [c for cell in a.selection.cells for c in cell.comparisons.values()]
    return a.comparisons


def comparison_text(analysis: StudyAnalysis) -> str:
    if not _comparisons(analysis):
        return "no comparisons in this study (it has no method axis)\n"
    headers, rows = _comparison_rows(analysis)
    texts, numeric = format_table(rows, len(headers))
    cells = [headers, *texts]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.rjust(w) if n else v.ljust(w)
                                for v, w, n in zip(row, widths, numeric)).rstrip()
                      for row in cells) + "\n"


def _comparison_rows(a: StudyAnalysis) -> tuple[list[str], list[list[Any]]]:
    headers = ["candidate", "baseline", "metric", "n", "mean diff", "CI low", "CI high",
               "p (t)", "p (Wilcoxon)", "p (Holm)", "effect", "effect size"]
    rows = [[c.candidate, c.baseline, c.metric, c.n_candidate, c.mean_diff, c.ci_low, c.ci_high,
             c.p_value, c.wilcoxon_p, c.p_holm, c.effect_name, c.effect_size]
            for c in _comparisons(a)]
    return headers, rows


def _pm(row: dict, metric: str) -> MeanStd | None:
    return _mean_std(row.get(metric), row.get(f"{metric}_std"))


def _mean_std(mean: float | None, std: float | None) -> MeanStd | None:
    """A mean ± std cell (None: no mean), formatted with its column (tables.py)."""
    return None if mean is None else MeanStd(mean, std)


def _md_cell(text: str) -> str:
    """A table cell for CommonMark: pipes escaped, line breaks flattened."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _holdout_words(holdout: str) -> str:
    if holdout == "largest":
        return "the largest size"
    value = float(holdout)
    return (f"the largest {value:.0%} of distinct sizes" if value < 1
            else f"compute above 1/{value:g} of the largest")


def _setting(value: Any) -> Any:
    """A grid value as the study file writes it (0.1, not 0.1000): text, still right-aligned."""
    return f"{value:g}" if isinstance(value, float) else value


def _optimum_notation(texts) -> str | None:
    """The caption that explains N_opt[i] and D_opt[i] wherever a text uses them."""
    if not any("_opt[" in str(t) for t in texts):
        return None
    return ("N_opt[i] and D_opt[i]: the compute-optimal parameters and data at budget i of the "
            "law's allocation table (Scaling laws): i = 0 the largest counted budget of the "
            "runs, 1 = 10× and 2 = 100× beyond it.")


def _point(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _ci(pair) -> str:
    """An interval '[low, high]' to 4 significant digits ('—': not finite)."""
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in pair):
        return EMPTY
    return f"[{_num(pair[0])}, {_num(pair[1])}]"


def _num(value: float | None) -> str:
    """One number to 4 significant digits, as text (a row of different quantities)."""
    return EMPTY if value is None else number(float(value))


def _markdown(blocks: list[tuple], out: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind in ("p", "muted"):
            lines += [block[1], ""]
        elif kind == "warn":
            lines += [f"> **{block[1]}**", ""]
        elif kind == "li":
            lines += [f"- {block[1]}", ""]
        elif kind == "table":
            lines += _markdown_table(*block[1:]) + [""]
        elif kind == "fig":
            lines += [f"![{block[2]}]({block[1].relative_to(out).as_posix()})", "",
                      f"*Figure: {block[2]}*", ""]
    return "\n".join(lines)


def _markdown_table(headers: list[str], rows: list[list[Any]], caption: str | None = None
                    ) -> list[str]:
    """A table with its caption above it; numeric columns right-aligned (``---:``)."""
    cells, numeric = format_table(rows, len(headers))
    lines = [f"*{caption}*", ""] if caption else []
    lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
    lines.append("|" + "".join("---:|" if n else ":---|" for n in numeric))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
    return lines


def _html(blocks: list[tuple], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind in ("p", "muted", "warn"):
            css = "" if kind == "p" else f' class="{kind}"'
            body.append(f"<p{css}>{_inline(block[1])}</p>")
        elif kind == "li":
            item = f"<li>{_inline(block[1])}</li>"
            if body and body[-1].endswith("</ul>"):
                body[-1] = body[-1][:-len("</ul>")] + item + "</ul>"
            else:
                body.append(f"<ul>{item}</ul>")
        elif kind == "table":
            body.append(_html_table(*block[1:]))
        elif kind == "fig":
            data = base64.b64encode(block[1].read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(block[2])}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{_inline(block[2])}</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


#: The page's one style sheet: a paper's appendix (serif-free, tabular figures, captions).
STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222;"
         "line-height:1.4}"
         "table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:0.9em;"
         "font-variant-numeric:tabular-nums}"
         "caption{caption-side:top;text-align:left;font-size:0.85em;color:#555;"
         "padding-bottom:3px}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right;vertical-align:top}"
         "th{background:#f3f3f3}td.t,th.t{text-align:left}"
         "img{max-width:100%}figure{margin:1em 0}"
         "figcaption{font-size:0.85em;color:#555;max-width:48em}"
         ".muted{color:#888;font-style:italic}"
         ".warn{background:#fff4e5;border-left:4px solid #e69500;padding:4px 8px}"
         "ul{margin:0.2em 0}code{font-size:0.9em;background:#f3f3f3;padding:0 3px}")


def _html_table(headers: list[str], rows: list[list[Any]], caption: str | None = None) -> str:
    """A table with its caption; numbers and their headers right-aligned, words left (a
    dash in a numeric column stays with the numbers)."""
    cells, numeric = format_table(rows, len(headers))
    head = "".join(("<th>" if n else '<th class="t">') + f"{html.escape(str(h))}</th>"
                   for h, n in zip(headers, numeric))
    body = "".join("<tr>" + "".join(_html_cell(v, text, n)
                                    for v, text, n in zip(row, texts, numeric)) + "</tr>"
                   for row, texts in zip(rows, cells))
    top = f"<caption>{_inline(caption)}</caption>" if caption else ""
    return f"<table>{top}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_cell(value: Any, text: str, numeric_column: bool) -> str:
    right = is_number(value) or (text == EMPTY and numeric_column)
    return f"<td>{html.escape(text)}</td>" if right else f'<td class="t">{html.escape(text)}</td>'


def _inline(text: str) -> str:
    """Escaped text with `code` spans set as code."""
    parts = html.escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: left as it is
        return html.escape(text)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _previous_run_count(out: Path) -> int | None:
    """How many completed runs the report already in ``out`` counted (None: no report)."""
    try:
        counts = json.loads(OutDir(out).scaling_law.read_text()).get("counts") or {}
        return int(counts.get("completed", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _json_default(value: Any):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
