"""Command-line interface: a thin typer layer over :mod:`scalelab.api`.

Exit codes: 0 success, 1 some runs failed, 2 bad input (one-line error), 130 interrupted.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import sys
import threading
import warnings
from collections import Counter
from enum import Enum
from pathlib import Path

import typer

from . import api
from .analysis import Summary
from .analysis.approaches import ComputeOptimal, estimate_rows
from .analysis.fitting import parse_holdout
from .analysis.summary import format_params, law_rows, settings_label
from .errors import RenamedSetting, ScalelabError, log_crash, os_error_line
from .outdir import OutDir
from .output import Output, fmt_bytes
from .registry import FAMILIES

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Declare a study in YAML; scalelab trains every cell, stores the results and analyses them.",
)


class Fmt(str, Enum):
    text = "text"
    json = "json"


class ExportFmt(str, Enum):
    csv = "csv"
    json = "json"
    parquet = "parquet"


FormatOption = typer.Option(Fmt.text, "--format", help="text tables, or one JSON document")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: workers stopped, finished runs kept, one line."""


def _terminate(signum, frame):
    raise Terminated()


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM (main thread only); returns the previous one."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signal.SIGTERM, handler)


def command(fn):
    """Register ``fn`` as a command; user errors become one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        output = Output(kwargs["fmt"].value if "fmt" in kwargs else "text")
        previous = _on_sigterm(_terminate)
        try:
            code = fn(*args, output=output, **kwargs)
        except ScalelabError as exc:
            output.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (a scheduler's stop)
            output.error("interrupted; finished runs are stored, rerun the same command to "
                         "train the rest")
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # the one choke point for everything else
            line = os_error_line(exc) if isinstance(exc, OSError) else None
            if line is not None:
                output.error(line)
                raise typer.Exit(2) from None
            log = log_crash(exc)
            output.error(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:200]} "
                         f"(a bug in scalelab; the traceback is in {log or 'no log: unwritable'}; "
                         "please report it)")
            raise typer.Exit(1) from None
        finally:
            _on_sigterm(previous)
        raise typer.Exit(code or 0)

    # typer reads the signature: hide the injected ``output`` parameter from it.
    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(
        parameters=[p for n, p in sig.parameters.items() if n != "output"]
    )
    return app.command(fn.__name__.rstrip("_"))(wrapper)


@command
def run(
    study: Path = typer.Argument(..., help="study YAML file"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default: runs/<study name>, or runs/<study name>-quick with --quick)"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="parallel worker processes (default: cores, or one per GPU)"),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N|mps (auto takes a GPU when there is one)"),
    backend: str = typer.Option("auto", "--backend", help="executor: local (worker processes), torchrun (inside a torchrun job), ray (a Ray cluster); auto picks local or torchrun"),
    trackers: list[str] = typer.Option([], "--tracker", "--track", help="also log every run to this tracker (mlflow, wandb; repeatable), with its defaults; a study's `trackers:` sets them"),
    address: str | None = typer.Option(None, "--address", help="with --backend ray: the cluster (auto, or ray://HOST:PORT) (default: a local Ray)"),
    set_: list[str] = typer.Option([], "--set", help="override a setting: key=value (repeatable), e.g. train.lr=0.01 or grid.model.width=[16,32]"),
    quick: bool = typer.Option(False, "--quick", help="apply the study's own `quick:` overrides for a fast first look (kept apart in runs/<name>-quick)"),
    download: bool = typer.Option(False, "--download", help="let a task whose path is empty fetch its dataset into the cache on first use, as `download: true` in the task does (same as SCALELAB_DOWNLOAD=1)"),
    shard: str | None = typer.Option(None, "--shard", help="run only slice i of k (i/k, 0 <= i < k) for job arrays"),
    shard_store: bool = typer.Option(False, "--shard-store", help="with --shard: write this shard's own store file (job arrays on network filesystems); readers see all, `scalelab merge` folds them"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and their state; train and write nothing"),
    report: bool = typer.Option(True, "--report/--no-report", help="write the study report when done"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="bootstrap resamples for the report's intervals"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Train every run of a study that is not stored yet, print a summary, write the report."""
    if download:  # seen by this process's tasks and by the workers it starts
        from .datasets import DOWNLOAD_ENV

        os.environ[DOWNLOAD_ENV] = "1"
    if dry_run:
        loaded = api.load_study(study, set_, quick)
        _print_design(output, loaded)
        _print_search(output, loaded)
        _print_dry_run(output, api.dry_run(loaded, out=out, shard=shard))
        return 0
    result = api.run(study, out=out, workers=workers, device=device, overrides=set_,
                     quick=quick, shard=shard, output=output, check=False, backend=backend,
                     shard_store=shard_store, address=address, trackers=trackers)
    if not result.primary:  # a non-zero torchrun rank: rank 0 reports
        return 0
    if result.already_done == len(result.selected):
        output.info(f"all {len(result.selected)} runs are already stored in {result.out_dir}; "
                    "nothing to train")
    if result.elsewhere:
        output.info(f"{result.elsewhere} run(s) were left to another runner training into "
                    f"{result.out_dir} (`scalelab status {result.out_dir}` shows who runs what)")
    summary = api.summary(result.out_dir)
    _print_summary(output, summary)
    paths = OutDir(result.out_dir)
    output.info(f"results: {paths.store}  (scalelab status {result.out_dir})")
    report_path, laws = None, None
    if report and shard:
        output.info(f"--shard: no report for one slice; when every shard is done, run "
                    f"`scalelab report {result.out_dir}`")
    elif report and summary.n_params:
        report_path = paths.report_html
        if result.trained or not report_path.exists():
            written = _write_report(output, result.out_dir, bootstrap)
            laws = _report_laws(written.scaling_law)
            output.info(f"report: {report_path}  (and report.md, scaling_law.json beside it)")
            if result.study.spec.trackers or trackers:
                from .tracking import attach_report

                attach_report(result.study, [written.html, written.markdown,
                                             written.scaling_law], output, trackers)
        else:
            output.info(f"report: {report_path}  (up to date: nothing new was trained; "
                        f"`scalelab report {result.out_dir}` rewrites it)")
            laws = _report_laws(paths.scaling_law)
    _print_laws(output, laws)
    for r, message in result.failed:
        output.error(f"run {r.run_id} ({_point(r.point)}) failed: {message}")
    if result.failed:
        output.error(f"{len(result.failed)} run(s) failed; their tracebacks are stored "
                     f"(scalelab status {result.out_dir}); rerun to retry them")
    output.emit({
        "study": result.study.name, "out_dir": str(result.out_dir),
        "runs": len(result.selected), "already_done": result.already_done,
        "trained": dict(result.trained), "elsewhere": result.elsewhere,
        "failed": [{"run_id": r.run_id, "point": r.point, "error": m} for r, m in result.failed],
        "summary": summary.to_dict(), "laws": laws["fits"] if laws else [],
        "report": str(report_path) if report_path else None,
    })
    return 1 if result.failed else 0


@command
def status(
    out_dir: Path = typer.Argument(..., help="a study output directory"),
    top: int = typer.Option(5, "--top", min=1, help="best runs to show (by validation loss)"),
    check: bool = typer.Option(False, "--check", help="first run SQLite's full integrity check of the store (reads all of it)"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Counts by status, the best runs (chosen by validation loss) and any failures."""
    if check:
        api.check_store(out_dir)
        output.info(f"{out_dir}: the results store passed SQLite's integrity check")
    rows = api.records(out_dir)
    counts = Counter(r["status"] for r in rows)
    planned = api.planned_runs(out_dir)
    if planned is not None:  # the study's runs never started (e.g. an interrupted study)
        stored = {r["run_id"] for r in rows}
        missing = sum(1 for run_id in planned if run_id not in stored)
        if missing:
            counts["not started"] = missing
        title = f"{out_dir}: {len(planned) - missing} of the study's {len(planned)} runs stored"
        others = len(stored - set(planned))
        if others:
            title += f", and {others} from an earlier version of it"
    else:
        title = f"{out_dir}: {len(rows)} run{'s' * (len(rows) != 1)} stored"
    output.table(title, ["status", "runs"], sorted(counts.items()))
    search = api.search(out_dir) if counts.get("pruned") else None
    if search is not None:
        output.info(f"nuisance search (successive halving): {counts['pruned']} runs pruned; "
                    f"{search.spent_flops:.3g} training FLOPs spent, "
                    f"{search.grid_flops:.3g} for every setting to the end "
                    f"({search.grid_flops / search.spent_flops:.2f}× less)")
    done = sorted((r for r in rows if r["status"] == "completed"),
                  key=lambda r: (r.get("val_loss") is None, r.get("val_loss") or 0.0))
    axes = list(api.study_axes(out_dir)) + ["seed"]
    columns = ["run_id", *axes, "n_params", "val_loss", "test_loss", "test_acc", "wall_time"]
    output.table(f"best {min(top, len(done))} by validation loss", columns,
                 [[r.get(c) for c in columns] for r in done[:top]])
    claims = api.claims(out_dir)
    output.table("running now", ["run_id", "runner (host:pid)", "running for (s)", "heartbeats",
                                 "unchanged here for (s)"],
                 [[c["run_id"] + (" (retraining)" if c["retraining"] else ""), c["owner"],
                   round(c["running_s"]), c["heartbeats"],
                   None if c["heartbeat_s"] is None else round(c["heartbeat_s"])]
                  for c in claims], keep=["unchanged here for (s)"])
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        last = (r["error"] or "").strip().splitlines()[-1:] or [""]
        output.error(f"run {r['run_id']} failed: {last[0]}")
    output.emit({"counts": counts, "best": done[:top], "running": claims,
                 "search": search.to_dict() if search else None,
                 "failed": [{"run_id": r["run_id"], "error": r["error"]} for r in failed]})
    return 0


@command
def list_(
    family: str | None = typer.Argument(None, help="task, model, method, law, evaluator, executor or tracker (default: all)"),
    pattern: str = typer.Option("*", "--match", help="shell-style wildcard on names"),
    settings: bool = typer.Option(False, "--settings", help="also list each plug-in's settings"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """What is registered: tasks, model families, methods, law forms, evaluators, executors
    and trackers, with a line each."""
    if family is not None and family not in FAMILIES:
        raise ScalelabError(f"list: unknown family {family!r} (allowed: {', '.join(FAMILIES)})")
    chosen = [family] if family else list(FAMILIES)
    listing = []
    for kind in chosen:
        registry = FAMILIES[kind]
        for name, description in registry.describe(pattern):
            fields = registry.get(name).Config.model_fields
            options = {f: {"default": info.default, "description": info.description}
                       for f, info in fields.items()}
            listing.append({"family": kind, "name": name, "description": description,
                            "settings": options})
    output.table("registered plug-ins", ["family", "name", "description"],
                 [[e["family"], e["name"], e["description"]] for e in listing])
    if settings:
        for e in listing:
            output.table(f"{e['family']} {e['name']}", ["setting", "default", "meaning"],
                         [[k, v["default"], v["description"]] for k, v in e["settings"].items()],
                         keep=["default"])
    output.emit(listing)
    return 0


@command
def fit(
    out_dir: Path | None = typer.Argument(None, help="a study output directory (or use --csv)"),
    x: str | None = typer.Option(None, "--x", help="column(s) of the law's input: params, data, compute or any column; 'params,data' fits a joint law (default: params)"),
    y: str | None = typer.Option(None, "--y", help="the column to fit (default: test_loss)"),
    by: str | None = typer.Option(None, "--by", help="one fit per value of this column (e.g. method)"),
    form: str = typer.Option("auto", "--form", help="a registered law form, or auto (chosen by backtest error)"),
    csv: Path | None = typer.Option(None, "--csv", help="analyse a CSV instead of a store: one of your own runs per row (columns N or params, D or tokens or examples, loss or L; optional C or budget, seed, group) gets the compute-optimal approaches; a results table (no loss column, or --x/--y given) gets the law fit"),
    holdout: str = typer.Option("0.2", "--holdout", help="backtest holdout: a fraction f < 1 of the largest distinct sizes, largest (the largest size), or k > 1 (compute above max/k)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", "--resamples", min=10, help="bootstrap resamples over runs"),
    target: float | None = typer.Option(None, "--target", help="training FLOPs the compute-optimal approaches quote N* at (default: the study's analysis.target_compute, else 10x the largest budget)"),
    flops_per_param_token: float | None = typer.Option(None, "--flops-per-param-token", help="with --csv of your own runs and no budget column: each run's budget is C = k·N·D for this k (6: a transformer's forward and backward per parameter and token), and runs whose C agree within 1% form one IsoFLOP budget for Approach 2"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Fit a scaling law with bootstrap intervals and a backtest on held-out largest points;
    where the runs allow it (an IsoFLOP design, consumed data, or a CSV of your own runs),
    also every compute-optimal approach side by side, their agreement and the one to use."""
    if form != "auto" and form not in FAMILIES["law"]:
        raise ScalelabError(f"--form: unknown law {form!r} (allowed: auto, {', '.join(FAMILIES['law'].names())})")
    if (out_dir is None) == (csv is None):
        raise ScalelabError("give either a study output directory or --csv FILE")
    named = x is not None or y is not None or by is not None or form != "auto"
    own_runs = csv is not None and not named and (
        target is not None or flops_per_param_token is not None or api.is_runs_csv(csv))
    if csv is not None and not own_runs and (target, flops_per_param_token) != (None, None):
        raise ScalelabError("--target and --flops-per-param-token go with a CSV of your own runs "
                            "(N, D, loss columns), without --x, --y, --by or --form")
    if out_dir is not None and flops_per_param_token is not None:
        raise ScalelabError("--flops-per-param-token: only with --csv (a stored study's runs "
                            "count their own FLOPs)")
    optimal = (api.fit_csv(csv, flops_per_param_token=flops_per_param_token, target=target,
                           n_resamples=bootstrap) if own_runs else
               api.compute_optimal(out_dir, n_resamples=bootstrap, target=target)
               if out_dir is not None and csv is None else None)
    has_answers = isinstance(optimal, ComputeOptimal)
    entries = []
    if not own_runs:
        try:
            entries = api.fit(out_dir, x=x or "params", y=y or "test_loss", by=by, form=form,
                              csv_path=csv, n_resamples=bootstrap,
                              holdout=parse_holdout(holdout))
        except ScalelabError as exc:
            if csv is not None and not named and str(exc).startswith("no column"):
                raise ScalelabError(f"{exc}; for a CSV of your own runs give a loss column "
                                    "(loss or L) beside N and D (see `scalelab fit --help`)"
                                    ) from None
            if not has_answers:
                raise
            output.warn(f"{exc} (the compute-optimal approaches below fit the runs together)")
    _print_fits(output, entries)
    results = [e.to_dict() for e in entries]
    if has_answers:
        _print_compute_optimal(output, optimal)
        results.append({"title": "compute-optimal approaches",
                        "compute_optimal": optimal.to_dict()})
    output.emit(results)
    return 0


def _print_fits(output: Output, entries) -> None:
    """Each fitted law: its parameters with intervals, backtest, verdict, diagnostics and
    compute-optimal allocation."""
    for entry in entries:
        f, bt = entry.fit, entry.fit.backtest
        output.table(f"{entry.title}: {f.form}  {f.formula}  (converged: {'yes' if f.converged else 'NO'})",
                     ["parameter", "value", f"{int(entry.boot.level * 100)}% CI low", "CI high"],
                     [[k, v, *f.intervals.get(k, (None, None))] for k, v in f.params.items()])
        if bt is not None:
            output.info(f"backtest (fitted on {bt.train_points} points, {int(bt.held_out.sum())} "
                        f"held out, holdout {bt.holdout}): RMSLE {bt.rmsle:.4g}, mean |relative "
                        f"error| {bt.mean_abs_relative_error:.2%}")
        label, reasons = f.verdict
        output.info(f"verdict: {label} — {reasons}")
        for d in f.diagnostics:
            output.info(f"  {d.severity}: {d.message}")
        for r in entry.allocation:
            output.info(f"  C = {r['flops']:.3g}: N_opt {r['N_opt']:.3g} [{r['N_opt_ci'][0]:.3g}, "
                        f"{r['N_opt_ci'][1]:.3g}], D_opt {r['D_opt']:.3g} "
                        f"[{r['D_opt_ci'][0]:.3g}, {r['D_opt_ci'][1]:.3g}] {' '.join(r['warnings'])}")
        if entry.allocation_note:
            output.info(f"  allocation: {entry.allocation_note}")


def _print_compute_optimal(output: Output, result: ComputeOptimal) -> None:
    """The agreement table (each approach's a, b and N* at the target, with intervals), the
    verdict and its reason, the approach to use and why, each approach's diagnostics and
    the approaches left out."""
    output.table(f"how big a model for C = {result.target:.3g} FLOPs: every approach "
                 "(N* ∝ C^a, D* ∝ C^b, bootstrap intervals)",
                 ["approach", "a [CI]", "b [CI]", f"N* at {result.target:.3g} [CI]", "verdict"],
                 estimate_rows(result))
    agreement = result.agreement
    output.info(f"agreement: {agreement.verdict} — {agreement.reason}")
    output.info(f"recommended: {agreement.why}" if agreement.recommended else
                f"recommended: none — {agreement.why}")
    output.info(f"Approach 3 is fitted by {result.chosen_joint_why}")
    seen = set()
    for e in agreement.estimates:
        for d in e.diagnostics:
            if d.message not in seen:
                seen.add(d.message)
                output.info(f"  {e.name}: {d.severity}: {d.message}")
    for note in result.notes:
        output.info(f"note: {note}")


@command
def coordcheck(
    study: Path = typer.Argument(..., help="study YAML file (its model must have a width: mlp, gpt)"),
    out: Path | None = typer.Option(None, "--out", help="where coordcheck.png/.svg/.json go (default: the study's output directory)"),
    widths: str | None = typer.Option(None, "--widths", help="comma-separated widths (default: the study grid's widths)"),
    steps: int = typer.Option(5, "--steps", min=2, help="training steps per width"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="seeds averaged per width"),
    lr: float | None = typer.Option(None, "--lr", min=0, help="the constant learning rate (default: the study's train.lr)"),
    set_: list[str] = typer.Option([], "--set", help="override a setting: key=value (repeatable)"),
    quick: bool = typer.Option(False, "--quick", help="apply the study's `quick:` overrides"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Coordinate check: train each width a few steps under standard and μP and plot how far
    every layer's activations moved against width; passes (exit 0) when μP is flat, exit 1
    if not."""
    sizes = None
    if widths is not None:
        try:
            sizes = [int(w) for w in widths.split(",")]
        except ValueError:
            raise ScalelabError(f"--widths: expected comma-separated whole numbers (e.g. "
                                f"64,128,256), got {widths!r}") from None
    check, figure = api.coordcheck(study, out=out, widths=sizes, steps=steps, seeds=seeds,
                                   lr=lr, overrides=set_, quick=quick)
    for name, slopes in check.slopes.items():
        last = check.sizes[name][:, :, -1]
        output.table(f"{name}: mean |change of activation| after {check.steps - 1} updates "
                     f"({check.optimizer}, lr {check.lr:g})", ["layer", *map(str, check.widths), "slope"],
                     [[layer, *map(float, last[:, i]), slopes[layer]]
                      for i, layer in enumerate(check.layers)])
    verdict = ("PASS: μP's updates are the same size at every width"
               if check.passed else "FAIL: some μP layers' updates change size with width")
    contrast = ("standard parametrization grows with width, as expected" if check.separates
                else "standard parametrization does not grow at this lr either: raise --lr "
                "for an informative check" if check.passed else "")
    output.info(f"{verdict} (|slope of log size vs log width| <= {check.tolerance} for every "
                "layer)"
                + (f"; {contrast}" if contrast else ""))
    output.info(f"figure: {figure}")
    output.emit({**check.to_dict(), "figure": str(figure)})
    return 0 if check.passed else 1


class Hyper(str, Enum):
    bracket = "bracket"
    predicted = "predicted"
    grid = "grid"


@command
def next_(
    out_dir: Path = typer.Argument(..., help="a study output directory with a joint law (model size x data)"),
    budget: float = typer.Option(..., "--budget", help="training compute of the next run, in FLOPs (e.g. 1e13)"),
    study: Path | None = typer.Option(None, "--study", help="the study file (default: the one the store was run from)"),
    where: list[str] = typer.Option([], "--where", help="AXIS=VALUE: which joint fit, when the study has several (e.g. method=full)"),
    extra: int = typer.Option(2, "--extra", min=0, max=5, help="runs besides the compute-optimal one, chosen to shrink its uncertainty"),
    hyper: Hyper = typer.Option(Hyper.bracket, "--hyper", help="tuned settings (lr, batch size) with a hyperparameter law: the predicted value and one grid step either side (bracket), the predicted value alone (predicted), or the whole grid (grid)"),
    append: bool = typer.Option(False, "--append", help="add the proposed runs to the study file's grid (comments kept); `scalelab run` then trains exactly them"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="bootstrap resamples"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Propose the next runs: the compute-optimal (N, D) at --budget from the approach the
    study's agreement verdict recommends (else the joint law's optimum) and the runs that
    most shrink its uncertainty, each with its predicted loss and interval (and predicted
    lr or batch size where a law fits); every prediction is kept in the store's
    extrapolation ledger and graded in the report."""
    filters = {}
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ScalelabError(f"--where: expected AXIS=VALUE, got {item!r}")
        filters[key] = value
    result = api.next(out_dir, budget, study=study, where=filters, extra=extra, append=append,
                      n_resamples=bootstrap, hyper=hyper.value)
    label, reasons = result.fit.fit.verdict
    level = int(round(100 * result.level))
    if result.agreement is not None:
        output.info(f"agreement of the approaches: {result.agreement.verdict} — "
                    f"{result.agreement.reason}")
    output.info(f"N_opt and D_opt from {result.approach}: {result.approach_why}")
    output.info(f"C = {result.budget:.3g} FLOPs = k·N·D with k = {result.k:.3g}: N_opt "
                f"{result.n_opt:.4g} [{result.n_opt_ci[0]:.4g}, {result.n_opt_ci[1]:.4g}], D_opt "
                f"{result.d_opt:.4g} [{result.d_opt_ci[0]:.4g}, {result.d_opt_ci[1]:.4g}] "
                f"({level}% bootstrap intervals)")
    output.info(f"predicted {result.fit.y_name} from {result.fit.title}: verdict {label} — "
                f"{reasons}")
    for note in result.tuning.notes if result.tuning else ():
        output.info(f"tuning: {note}")
    for note in result.notes:
        output.warn(note)
    _print_proposals(output, result, level)
    output.info(f"recorded {len(result.proposals)} prediction(s) in the extrapolation ledger of "
                f"{out_dir}; the report grades them once their runs exist")
    if append:
        runs = sum(len(p.run_ids) for p in result.proposals)
        if result.appended_to == "grid":
            output.info(f"appended {result.appended} grid entr"
                        f"{'y' if result.appended == 1 else 'ies'} to {result.study_file}"
                        if result.appended else
                        f"{result.study_file} already holds these grid entries")
        else:
            output.info(f"added the budget {result.budget:.4g} to {result.appended_to} in "
                        f"{result.study_file}" if result.appended else
                        f"{result.study_file} already has the budget {result.budget:.4g}")
        output.info(f"`scalelab run {result.study_file} --out {out_dir}` trains exactly them "
                    f"({runs} runs)")
    output.emit(result.to_dict())
    return 0


def _print_proposals(output: Output, result, level: int) -> None:
    """The proposed runs: where, cost, predicted metric with its interval, what each shrinks,
    and for each tuned setting with a law its predicted value and the values proposed."""
    axes = list(result.tuning.laws) if result.tuning else []

    def predicted(h: dict | None) -> str:
        if not h:
            return "—"
        lo, hi = h["optimum_interval"]
        return f"{h['value']:.3g} [{lo:.3g}, {hi:.3g}]"

    output.table(f"proposed runs ({result.seeds} seed(s) each; {level}% interval of the mean "
                 "over seeds)", ["kind", "grid point", "N", "D", "FLOPs",
                                 f"predicted {result.fit.y_name}", "low", "high",
                                 "shrinks optimum's variance",
                                 *(c for a in axes for c in (f"predicted {a}", f"{a} proposed"))],
                 [[p.kind, _point(p.point), p.n, p.d, p.flops, p.predicted, *p.interval,
                   f"{p.shrinks:.0%}",
                   *(c for a in axes for c in (predicted(p.hyper.get(a)), ", ".join(
                       f"{v:g}" for v in p.hyper.get(a, {}).get("proposed", [])) or "—"))]
                  for p in result.proposals])


@command
def compare(
    out_dir: Path | None = typer.Argument(None, help="a study output directory (or use --csv)"),
    metric: str = typer.Option("test_acc", "--metric", help="the column to compare"),
    by: str = typer.Option("method", "--by", help="the column whose values are compared"),
    baseline: str = typer.Option(..., "--baseline", help="the value of --by everything is compared with"),
    paired_by: str = typer.Option("seed", "--paired-by", help="column that matches units across configs, or 'none' for unpaired tests"),
    within: list[str] = typer.Option([], "--within", help="compare separately within each value of this column (repeatable)"),
    csv: Path | None = typer.Option(None, "--csv", help="analyse a CSV of results instead of a store"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Paired (or Welch) tests of every config against a baseline, with effect sizes and Holm."""
    results = api.compare(out_dir, metric=metric, by=by, baseline=baseline,
                          paired_by=None if paired_by == "none" else paired_by, within=within,
                          csv_path=csv)
    output.table(f"{metric}: each {by} − {baseline}", ["candidate", "n", "mean diff", "95% CI", "p (t)",
                 "p (Wilcoxon)", "p (Holm)", "effect"],
                 [[c.candidate, c.n_candidate, c.mean_diff, f"[{c.ci_low:.4g}, {c.ci_high:.4g}]",
                   c.p_value, c.wilcoxon_p, c.p_holm, f"{c.effect_name} {c.effect_size:.3g}"]
                  for c in results])
    for cell in getattr(results, "skipped", []):
        output.warn(f"skipped {cell}")
    output.emit([c.to_dict() for c in results])
    return 0


@command
def report(
    out_dir: Path = typer.Argument(..., help="a study output directory"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="bootstrap resamples over runs"),
    out: Path | None = typer.Option(None, "--out", help="write the report into this folder (default: the study output directory; e.g. for one on read-only storage)"),
    output: Output = None,
) -> int:
    """Write report.md, a self-contained report.html, scaling_law.json and comparison_table.txt."""
    written = _write_report(output, out_dir, bootstrap, out)
    for note in written.analysis.notes:
        output.warn(note)
    output.info(f"wrote {written.html}, {written.markdown.name}, {written.scaling_law.name}, "
                f"{written.comparison_table.name} and {len(written.figures)} figure files")
    return 0


@command
def evaluate(
    out_dir: Path = typer.Argument(..., help="a study output directory with checkpoints"),
    study: Path | None = typer.Option(None, "--study", help="take the evaluation settings from this study file (default: the one the runs were trained from)"),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N|mps"),
    report: bool = typer.Option(True, "--report/--no-report", help="rewrite the study report when done"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Re-score every saved checkpoint under the study's `evaluations` settings; trains nothing."""
    result = api.evaluate(out_dir, study=study, device=device, output=output)
    summary, comparisons = api.evaluation_summary(out_dir, result)
    by_name = {c.candidate: c for c in comparisons}
    output.info(f"{result.scored} evaluations now, {result.already_done} already stored "
                f"({result.models} models x {len(result.settings)} settings); nothing was trained")
    output.table("test_acc by evaluation setting (paired by model, vs the first)",
                 ["setting", "models", "test_acc", "diff", "p (Holm)"],
                 [[r["setting"], r["models"], r["mean"],
                   by_name[r["setting"]].mean_diff if r["setting"] in by_name else None,
                   by_name[r["setting"]].p_holm if r["setting"] in by_name else None]
                  for r in summary])
    if report:
        _write_report(output, out_dir)
        output.info(f"report: {Path(out_dir) / 'report.html'}")
    output.emit({"out_dir": str(out_dir), "scored": result.scored,
                 "already_done": result.already_done, "models": result.models,
                 "settings": summary, "comparisons": [c.to_dict() for c in comparisons]})
    return 0


@command
def merge(
    out_dir: Path = typer.Argument(..., help="a study output directory holding shard stores"),
    output: Output = None,
) -> int:
    """Fold the shard stores (`--shard-store`) of a directory into its results.sqlite."""
    taken = api.merge(out_dir)
    output.info(f"{out_dir}: {taken} run(s) merged from shard stores into results.sqlite"
                if taken else f"{out_dir}: nothing to merge (no shard stores, or nothing new in them)")
    return 0


@command
def export(
    out_dir: Path = typer.Argument(..., help="a study output directory"),
    to: ExportFmt = typer.Option(ExportFmt.csv, "--to", help="file format (parquet needs pyarrow)"),
    path: Path | None = typer.Option(None, "--output", "-o", help="file to write (default: DIR/results.FORMAT)"),
    curves: bool = typer.Option(False, "--curves", help="export the learning curves instead of the runs"),
    output: Output = None,
) -> int:
    """Write the stored runs (or curves) as csv, json or parquet."""
    written = api.export(out_dir, to.value, path, curves=curves)
    output.info(f"wrote {written}")
    return 0


data_app = typer.Typer(no_args_is_help=True, help="Public datasets in the cache: fetch one "
                       "(checksummed, resumable) or list what is there.")
app.add_typer(data_app, name="data")


def _data_command(fn):
    """A ``scalelab data`` subcommand, with :func:`command`'s one-line errors and exit codes
    (registered by it, then moved under ``data``)."""
    command(fn)
    info = app.registered_commands.pop()
    info.name = fn.__name__.removeprefix("data_")
    data_app.registered_commands.append(info)
    return fn


@_data_command
def data_get(
    name: str = typer.Argument(..., help="mnist, fashion_mnist, cifar10, cifar100, imagenette or fineweb10B (`scalelab data list`)"),
    to: Path | None = typer.Option(None, "--to", help="put it in this folder instead of the dataset cache (then give the task `path:` that folder)"),
    shards: int | None = typer.Option(None, "--shards", min=1, help="fineweb10B: training shards of 100 M tokens to fetch, beside the validation shard (default: 1; 9 is modded-nanogpt's speedrun, 103 all)"),
    fmt: Fmt = FormatOption,
    output: Output = None,
) -> int:
    """Fetch a public dataset into the cache, checked against its publisher's checksums."""
    try:
        folder = api.data(name, to=to, shards=shards, output=output)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the partial file stays for resuming
        output.error(f"interrupted; what was downloaded is kept and `scalelab data get {name}` "
                     "resumes it")
        return 143 if isinstance(exc, Terminated) else 130
    row = api.data_state(name, to)
    use = (f"the {row['task']} task reads it when its path is empty" if to is None else
           f"give the {row['task']} task `path: {folder}`")
    output.info(f"{name}: {fmt_bytes(row['size_on_disk'])} in {folder} ({use})")
    output.emit({**row, "where": str(folder)})
    return 0


@_data_command
def data_list(fmt: Fmt = FormatOption, output: Output = None) -> int:
    """Each dataset `scalelab data get` fetches: whether it is cached, where, its size."""
    rows = api.data()
    output.table("datasets (`scalelab data get NAME`; SCALELAB_CACHE moves the cache)",
                 ["dataset", "cached", "size on disk", "download", "task", "where"],
                 [[r["name"], r["cached"], fmt_bytes(r["size_on_disk"]) if r["size_on_disk"] else
                   "—", fmt_bytes(r["download_size"]), r["task"], r["where"]] for r in rows])
    output.emit(rows)
    return 0


def _write_report(output: Output, out_dir: Path, bootstrap: int = 1000,
                  out: Path | None = None):
    """Write the report; say so when it has fewer completed runs than the one it replaced."""
    written = api.report(out_dir, n_resamples=bootstrap, out=out, progress=output.info)
    if written.replaced_runs is not None:
        output.warn(f"the report is built from {written.analysis.counts.get('completed', 0)} "
                    f"runs, fewer than the {written.replaced_runs} of the one it replaced "
                    "(completed runs; it says so at its top)")
    return written


#: Runs a dry run's table shows (the rest are counted; ``--format json`` lists every one).
DRY_RUN_ROWS = 500


def _print_design(output: Output, study) -> None:
    """An IsoFLOP design's plan (each budget's sizes and the data that spends it) and what
    could keep its profiles from bracketing a minimum: said before anything trains."""
    plan = api.isoflop_plan(study)
    if plan is None:
        return
    cells, warnings = plan
    if not output.is_json:
        axes = study.design_summary()
        output.table("IsoFLOP design: the data that spends each budget (counted FLOPs)",
                     ["budget (FLOPs)", axes["size"], "parameters", axes["data"],
                      "counted FLOPs", "off by"],
                     [[f"{c.budget:.3g}", c.size, f"{c.params:,}", f"{c.data:,}",
                       f"{c.flops:.4g}", f"{c.error:+.2%}"] for c in cells])
    for w in warnings:
        output.warn(w.message)


def _print_search(output: Output, study) -> None:
    """What a dry run cannot list of a tpe search: its values come as results arrive."""
    if study.ranges:
        search, labels = study.spec.nuisance_search, study.axis_labels()
        output.info(f"tpe proposes {', '.join(labels[p] for p in study.ranges)} per shape as "
                    f"results arrive: {search.trials} trials of every shape, each over every "
                    "seed; the runs below hold each range at its middle (they are what "
                    "validation checked), not the values that will train")


def _print_dry_run(output: Output, planned) -> None:
    """A dry run's runs, streamed: in JSON every run, written as it is resolved; as text
    the first :data:`DRY_RUN_ROWS` in a table and the rest counted by state."""
    if output.is_json:
        output.emit_each({"run_id": r.run_id, "state": state, "point": r.point,
                          "config": r.config} for r, state in planned)
        return
    shown, states, axes = [], Counter(), []
    for r, state in planned:
        states[state] += 1
        if len(shown) < DRY_RUN_ROWS:
            shown.append([r.run_id, state, *r.point.values()])
            axes = axes or list(r.point)
    total = sum(states.values())
    more = total - len(shown)
    output.table(f"{total} runs" + (f", the first {len(shown)} shown" if more else ""),
                 ["run_id", "state", *axes], shown)
    if more:
        output.info(f"... and {more:,} more runs; by state: "
                    + ", ".join(f"{n:,} {s}" for s, n in states.items())
                    + " (--format json lists every run)")


def _print_summary(output: Output, summary: Summary) -> None:
    if not summary.n_params:
        output.info("no completed runs to summarise")
        return
    def text(cell) -> str:
        if cell is None:
            return "—"
        return f"{cell[0]:.4f} ± {cell[1]:.4f}" if cell[1] is not None else f"{cell[0]:.4f} (1 run)"

    sizes = [f"{n:,}" + (f" ({label})" if label else "")
             for n, label in zip(summary.sizes, summary.row_labels)]
    if len(summary.column_labels) <= 6:  # sizes down, the other axes across
        output.table(f"mean {summary.metric} (± std over seeds) by {summary.size}",
                     [summary.size, *summary.column_labels],
                     [[size, *(text(summary.cells.get((n, c))) for c in summary.column_labels)]
                      for size, n in zip(sizes, summary.sizes)])
    else:  # many settings (a method study): one row each, sizes across
        output.table(f"mean {summary.metric} (± std over seeds) by setting and {summary.size}",
                     ["setting", *(f"{summary.size} {size}" for size in sizes)],
                     [[c, *(text(summary.cells.get((n, c))) for n in summary.sizes)]
                      for c in summary.column_labels])


def _print_laws(output: Output, laws: dict | None) -> None:
    """The laws the report's analysis fitted (``laws``: :func:`_report_laws`; None: no
    report), not refitted: each in the form the analysis chose, with its parameters, then
    each verdict with its reasons; none, and the report's notes that say why."""
    if laws is None:
        return
    fits = laws["fits"]
    if not fits:
        output.info("no law fitted" + (f" ({'; '.join(laws['notes'])})" if laws["notes"] else ""))
        return
    formulas = dict.fromkeys(f"{law['form']}: {law['formula']}" for law in fits
                             if law["formula"])
    output.table(f"laws fitted by the analysis ({'; '.join(formulas)}; intervals and "
                 "backtests in the report)", ["law", "form", "parameters", "points", "verdict"],
                 [[law["title"], law["form"], format_params(law["params"]), law["points"],
                   law["verdict"]] for law in fits])
    for law in fits:
        label, reasons = law["verdict"], law["verdict_reasons"]
        output.info(f"verdict: {law['title']} ({law['form']}): {label}"
                    + (f" — {reasons}" if label != "trustworthy" else ""))


def _report_laws(scaling_law: Path) -> dict | None:
    """The laws of the report's analysis as its scaling_law.json stores them (just written,
    or left up to date), so a fresh and a stored report print alike: ``fits``
    (:func:`~scalelab.analysis.summary.law_rows`) and the analysis's ``notes``."""
    try:
        stored = json.loads(scaling_law.read_text())
        return {"fits": law_rows(stored.get("fits", [])), "notes": stored.get("notes", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _point(point: dict) -> str:
    """A grid point as words, without the settings that do not apply to its run (None)."""
    return settings_label(point, sep=" ")


def main() -> None:
    """The ``scalelab`` command: typer's usage errors (a bad option value, an unknown option)
    become the same one line as every other user error, with exit code 2. A study that uses a
    renamed setting gets one ``warning:`` line per old name."""
    warnings.simplefilter("default", RenamedSetting)
    warnings.showwarning = _show_warning
    try:
        code = app(prog_name="scalelab", standalone_mode=False)
    except _USAGE_ERROR as exc:
        if exc.ctx is not None and type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.ctx.get_help())  # bare `scalelab` (or a group without a command)
            sys.exit(2)
        where = exc.ctx.command_path if exc.ctx else "scalelab"
        message = " ".join(exc.format_message().split())
        Output().error(f"{where}: {message} (see `{where} --help`)")
        sys.exit(2)
    except typer.Abort:
        Output().error("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, RenamedSetting):
        Output().warn(str(message))
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOW_WARNING = warnings.showwarning

#: click's UsageError, whether typer uses click or its own copy of it.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


if __name__ == "__main__":
    main()
