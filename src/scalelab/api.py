"""The Python API; the CLI is a thin layer over these functions.

>>> import scalelab
>>> result = scalelab.run("studies/quickstart.yaml", quick=True)   # doctest: +SKIP
>>> df = scalelab.load(result.out_dir)                               # doctest: +SKIP
"""

from __future__ import annotations

import ast
import builtins
import csv
import io
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .analysis import Summary, summarize
from .analysis.approaches import ComputeOptimal, compute_optimal_answers, study_answers
from .analysis.fitting import DEFAULT_HOLDOUT
from .analysis.isoflop import budget_groups, isoflop_plan_warnings
from .analysis.stats import Comparison
from .analysis.stats import compare as compare_records
from .analysis.study_analysis import FitEntry, fit_rows, in_study, per_shape_optimum
from .errors import ScalelabError, first_line
from .files import open_atomically
from .outdir import OutDir
from .output import Output
from .runner import StudyExecution, execute_study, parse_shard, select_shard
from .spec import RunSpec, Study, load_study
from .store import Store, Stores, StudyMeta
from .store import open_here as store_open_here

ExportFormat = Literal["csv", "json", "parquet"]


def default_out_dir(study: Study) -> Path:
    """``runs/<name>``, or ``runs/<name>-quick`` for a ``--quick`` look, so quick runs never
    mix into the full study's tables, fits or report."""
    return Path("runs") / (f"{study.name}-quick" if study.quick else study.name)


def _as_study(study: str | Path | Study, overrides: Sequence[str], quick: bool) -> Study:
    return study if isinstance(study, Study) else load_study(study, overrides, quick)


def run(
    study: str | Path | Study,
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    quick: bool = False,
    shard: str | None = None,
    output: Output | None = None,
    check: bool = True,
    backend: str = "auto",
    shard_store: bool = False,
    address: str | None = None,
    trackers: Sequence[str] = (),
) -> StudyExecution:
    """Train every run of ``study`` that ``out`` does not hold yet, storing each result; then,
    if the study declares ``evaluations`` (and saves checkpoints), re-score what is missing.

    Failed runs are stored with their tracebacks and listed in the result's ``failed``; with
    ``check`` (the default) a :class:`RunsFailed` error is then raised, as the CLI exits 1.
    ``backend`` names the executor (``scalelab list executor``; ``auto``: torchrun inside a
    torchrun job, else local worker processes).
    """
    spec = _as_study(study, overrides, quick)
    out_dir = Path(out) if out is not None else default_out_dir(spec)
    if os.path.isfile(spec.source):  # the store records it: `next` and `evaluate` find this
        spec.source = os.path.abspath(spec.source)  # file from any folder, not a namesake
    if shard:
        parse_shard(shard)  # a bad --shard is refused before anything is written
    if workers != 1:
        check_main_guard()
    result = execute_study(spec, out_dir, workers=workers, device=device, shard=shard,
                           output=output, backend=backend, shard_store=shard_store,
                           address=address, trackers=trackers)
    if spec.spec.evaluations and spec.spec.save_checkpoints and not shard and result.primary:
        evaluate(out_dir, study=spec, device=device, output=output)
    if check and result.failed:
        raise RunsFailed(result)
    return result


class RunsFailed(ScalelabError):
    """Some runs of a study failed (the rest finished and every result is stored)."""

    exit_code = 1

    def __init__(self, result: StudyExecution):
        self.result = result
        first, message = result.failed[0]
        super().__init__(
            f"{len(result.failed)} of {len(result.selected)} runs failed, e.g. run "
            f"{first.run_id}: {message} (tracebacks: scalelab status {result.out_dir}; rerun to "
            "retry them)")


def check_main_guard() -> None:
    """Refuse, before anything is written, a script that calls ``scalelab.run`` at module
    level: worker processes are spawned and re-import the main script, so each would start
    the study again. Interactive sessions and guarded scripts pass."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    names = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom)
             and node.module in ("scalelab", "scalelab.api") for a in node.names
             if a.name == "run"}
    modules = {"scalelab"} | {a.asname for node in tree.body if isinstance(node, ast.Import)
                              for a in node.names if a.name.startswith("scalelab") and a.asname}
    for statement in tree.body:
        if _is_main_guard(statement) or isinstance(
                statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Call) and _calls_run(node.func, names, modules):
                raise ScalelabError(
                    f"{path}: line {node.lineno}: scalelab.run is called at module level, but "
                    "worker processes re-import this script and would each start the study "
                    "again; put the call under `if __name__ == \"__main__\":` (or pass "
                    "workers=1)")


def _is_main_guard(statement: ast.stmt) -> bool:
    test = getattr(statement, "test", None)
    return isinstance(statement, ast.If) and isinstance(test, ast.Compare) and any(
        isinstance(side, ast.Name) and side.id == "__name__"
        for side in (test.left, *test.comparators))


def _calls_run(func: ast.expr, imported: set[str], modules: set[str]) -> bool:
    """``run(...)`` imported from scalelab, or ``scalelab.run`` / ``alias.api.run``."""
    if isinstance(func, ast.Name):
        return func.id in imported
    if not (isinstance(func, ast.Attribute) and func.attr == "run"):
        return False
    root = func.value
    while isinstance(root, ast.Attribute):
        root = root.value
    return isinstance(root, ast.Name) and root.id in modules


def dry_run(
    study: str | Path | Study,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    quick: bool = False,
    shard: str | None = None,
) -> Iterator[tuple[RunSpec, str]]:
    """Each run of the study (of ``--shard`` i/k) with its state in ``out`` (``new`` if never
    started), one at a time: a study of a million cells is listed without holding them
    (``list(...)`` for all at once). The study is validated, and ``shard`` parsed, before
    this returns; writes nothing."""
    spec = _as_study(study, overrides, quick)
    out_dir = Path(out) if out is not None else default_out_dir(spec)
    index, count = parse_shard(shard) if shard else (0, 1)
    statuses: dict[str, str] = {}
    if OutDir(out_dir).store.exists():
        with Store.open(out_dir) as store:
            statuses = store.statuses()
    runs = spec.iter_runs()
    if shard:  # the runner's own rule, one run at a time
        runs = (r for r in runs if select_shard((r,), index, count))
    return ((r, statuses.get(r.run_id, "new")) for r in runs)


def isoflop_plan(study: str | Path | Study, overrides: Sequence[str] = (), quick: bool = False):
    """(the IsoFLOP design's cells, the plan's warnings: too few sizes at a budget, a span too
    narrow to bracket a minimum or so wide it biases the parabola, too few budgets); None for
    a study without a design."""
    study = _as_study(study, overrides, quick)
    if not study.design_cells:
        return None
    budgets: dict[float, list[int]] = {}
    for cell in study.design_cells:
        budgets.setdefault(cell.budget, []).append(cell.params)
    return study.design_cells, isoflop_plan_warnings(budgets)


def records(out_dir: str | Path) -> list[dict[str, Any]]:
    """One flat dict per stored run (no pandas needed)."""
    with Store.open(out_dir) as store:
        return store.records()


def load(out_dir: str | Path, curves: bool = False):
    """A pandas DataFrame of the stored runs (or, with ``curves=True``, of the learning curves)."""
    try:
        import pandas as pd
    except ImportError:
        raise ScalelabError("scalelab.load needs pandas: pip install 'scalelab[pandas]'") from None
    with Store.open(out_dir) as store:
        return pd.DataFrame(store.curves() if curves else store.records())


def study_axes(out_dir: str | Path) -> dict[str, str]:
    """Grid axis label -> config path, as recorded by the run that wrote ``out_dir``."""
    with Store.open(out_dir) as store:
        return store.study_meta().axes


def planned_runs(out_dir: str | Path) -> list[str] | None:
    """The run ids of the study as its file was last run (None: a store written before they
    were recorded)."""
    with Store.open(out_dir) as store:
        return store.study_meta().run_ids


def search(out_dir: str | Path):
    """What a halving search did at each shape (:class:`~scalelab.analysis.tuning.
    SearchAnalysis`); None when no run was pruned."""
    from .analysis.tuning import analyze_search

    with Store.open(out_dir) as store:
        return analyze_search(store.records(), store.study_meta())


def study_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """The stored runs of the study as its file was last run (see :func:`in_study`)."""
    with Store.open(out_dir) as store:
        return in_study(store.records(), store.study_meta())[0]


def summary(out_dir: str | Path, metric: str | None = None, size: str | None = None
            ) -> Summary:
    """Mean ``metric`` by model ``size``, both by default the columns the study's analysis
    fits (its ``analysis:`` block: e.g. ``test_ppl`` by ``n_params_nonembed``); with nuisance
    axes, each shape at its best nuisance setting (chosen on validation loss), as the report
    and fits use it."""
    rows, meta = _per_shape_optimum(out_dir)
    settings = meta.settings
    axes = {k: v for k, v in meta.axes.items() if k not in meta.nuisance}
    if any(r.get("matched_to") for r in rows):  # compute-matched baselines: their own rows
        axes["matched_to"] = "matched_to"
    if meta.design:  # IsoFLOP cells: one column per budget, not per data amount
        axes = {k: v for k, v in axes.items() if k != meta.design["data"]} | {"budget": "budget"}
    return summarize(rows, axes, metric or settings["metric"], size or settings["size"])


def export(out_dir: str | Path, fmt: ExportFormat, path: str | Path | None = None,
           curves: bool = False) -> Path:
    """Write the runs (or curves) table as csv, json or parquet; returns the file written.

    Never destroys a stored result: a results store (the directory's own, or any SQLite
    file) is refused as the target; a link is written through (it stays a link), a device
    or a pipe (``-o /dev/stdout``) is written directly, a folder is refused, and the file is
    replaced in one step, leaving no temporary behind (see :mod:`scalelab.files`)."""
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ScalelabError(
                "export --to parquet needs pyarrow: pip install 'scalelab[parquet]'"
            ) from None
    elif fmt not in ("csv", "json"):
        raise ScalelabError(f"export: unknown format {fmt!r} (allowed: csv, json, parquet)")
    with Store.open(out_dir) as store:
        rows = store.curves() if curves else store.records()
    name = f"{'curves' if curves else 'results'}.{fmt}"
    target = Path(path) if path else Path(out_dir) / name
    _refuse_overwriting_a_store(Path(out_dir), target, name)
    if fmt == "csv":
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open_atomically(target, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "json":
        with open_atomically(target, "w") as f:
            f.write(json.dumps(rows, indent=1))
    else:
        buffer = pa.BufferOutputStream()  # whole first: a pipe cannot seek
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        with open_atomically(target, "wb") as f:
            f.write(buffer.getvalue().to_pybytes())
    return target


def _refuse_overwriting_a_store(out_dir: Path, target: Path, name: str) -> None:
    """One line instead of an export over the directory's store (or its log), or over any
    SQLite database (a copy of a store, most likely)."""
    try:
        info = os.stat(target)
    except OSError:
        return  # nothing there yet (or nothing this check can read: the write will say)
    if not stat.S_ISREG(info.st_mode):
        return
    stores = [OutDir(out_dir).store, *OutDir(out_dir).shard_stores()]
    for store in stores:
        for part in (store, store.with_name(store.name + "-wal"),
                     store.with_name(store.name + "-shm")):
            try:
                same = os.path.samefile(part, target)
            except OSError:
                continue
            if same:
                raise ScalelabError(
                    f"{target}: is the results store of {out_dir} (or its log); export writes "
                    f"a table beside it, never over it: choose another file (e.g. -o "
                    f"{out_dir / name})")
    try:
        if store_open_here(target):  # a store this process uses: its locks stay untouched
            header = b"SQLite format 3\x00"
        else:
            with open(target, "rb") as f:
                header = f.read(16)
    except OSError:
        return
    if header == b"SQLite format 3\x00":
        raise ScalelabError(f"{target}: is a SQLite database (a results store, or a copy of "
                            "one); export never overwrites one: choose another file")


# ------------------------------------------------------------------ analysis entry points

#: Short names accepted wherever a results column is named (``--x params``).
COLUMN_ALIASES = {"params": ("n_params",), "data": ("task.num_train", "task.num_train_tokens"),
                  "compute": ("train_flops",), "method": ("method.name",),
                  "samples": ("samples_seen",)}


class CsvRows(list):
    """Rows of a CSV file (dicts, numbers parsed), each with the line it ends on, so that a
    bad value is named by file and line."""

    def __init__(self, path: Path, rows: Sequence[dict[str, Any]], lines: Sequence[int]):
        super().__init__(rows)
        self.path, self.lines = path, list(lines)

    def where(self, i: int) -> str:
        return f"{self.path}: line {self.lines[i]}: "


def read_csv_records(path: str | Path) -> CsvRows:
    """Rows of a CSV of results from anywhere (one row per run), numbers parsed. Refused in
    one line naming the file and line: text that is not UTF-8 (a byte-order mark is fine),
    NUL bytes, a row with more or fewer fields than the header, a column named twice, a
    field too large to be a result."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScalelabError(f"{path}: no such CSV file") from None
    except IsADirectoryError:
        raise ScalelabError(f"{path}: is a folder, not a CSV file") from None
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise ScalelabError(f"{path}: line {line}: a NUL byte: not a CSV text file (save the "
                            "table as CSV, UTF-8)")
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark (Excel's "CSV UTF-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ScalelabError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})"
                            "; save the table as CSV, UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        header = builtins.next(reader, None)  # (`next` is a command here)
        if header is None:
            raise ScalelabError(f"{path}: empty; expected a header line and one row per run")
        for name in dict.fromkeys(header):
            at = [i + 1 for i, h in enumerate(header) if h == name]
            if len(at) > 1:
                raise ScalelabError(f"{path}: line {reader.line_num}: column {name!r} is named "
                                    f"{len(at)} times (columns {', '.join(map(str, at))}); "
                                    "give each column its own name")
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise ScalelabError(f"{path}: line {reader.line_num}: {len(row)} fields, but "
                                    f"the header names {len(header)} columns; give every row "
                                    "one value per column (an empty one for a missing value)")
            rows.append({k: _parse_cell(v) for k, v in zip(header, row)})
            lines.append(reader.line_num)
    except csv.Error as exc:
        problem = first_line(exc)
        if "field larger than field limit" in problem:
            problem = (f"a field longer than {csv.field_size_limit():,} characters, more than "
                       "any result (is this the right file?)")
        raise ScalelabError(f"{path}: line {reader.line_num}: not readable as CSV: "
                            f"{problem}") from None
    if not rows:
        raise ScalelabError(f"{path}: no rows")
    return CsvRows(path, rows, lines)


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def check_numbers(rows: Sequence[dict[str, Any]], columns: Sequence[str], what: str,
                  positive: bool = False) -> None:
    """Refuse in one line (naming the file and line of a CSV) a value of ``columns`` that
    is not a finite number (or, with ``positive``, not > 0); missing values pass."""
    for column in columns:
        for i, r in enumerate(rows):
            value = r.get(column)
            if value is None:
                continue
            where = rows.where(i) if isinstance(rows, CsvRows) else ""
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScalelabError(f"{where}{column}: {str(value)[:40]!r} is not a number; "
                                    f"{what} needs numbers in this column")
            if not math.isfinite(value):
                raise ScalelabError(f"{where}{column}: {value} is not a finite number; "
                                    f"{what} needs finite values (leave a missing one empty)")
            if positive and value <= 0:
                raise ScalelabError(f"{where}{column}: {value:g} is not positive; a scaling law "
                                    "is fitted in log space, so sizes, data, compute and the "
                                    "fitted metric must be > 0")


def resolve_column(records: Sequence[dict[str, Any]], name: str) -> str:
    """The results column a user means by ``name`` (an exact column, an alias, or a setting)."""
    columns = set().union(*(r.keys() for r in records)) if records else set()
    for candidate in (name, *COLUMN_ALIASES.get(name, ()), f"{name}.name",
                      *(f"{section}.{name}" for section in ("task", "model", "method", "train"))):
        if candidate in columns:
            return candidate
    raise ScalelabError(f"no column {name!r} in the results (e.g. {', '.join(sorted(columns)[:12])}"
                        f", ...; aliases: {', '.join(COLUMN_ALIASES)})")


def analysis_records(out_dir: str | Path | None = None, csv_path: str | Path | None = None
                     ) -> list[dict[str, Any]]:
    """Runs to analyse: a CSV as given, or a store's per-shape optimum over its nuisance axes."""
    if (out_dir is None) == (csv_path is None):
        raise ScalelabError("give either a study output directory or --csv FILE")
    if csv_path is not None:
        rows = read_csv_records(csv_path)
        kept = [i for i, r in enumerate(rows) if r.get("status", "completed") == "completed"]
        return CsvRows(rows.path, [rows[i] for i in kept], [rows.lines[i] for i in kept])
    return _per_shape_optimum(out_dir)[0]


def _per_shape_optimum(out_dir: str | Path) -> tuple[list[dict[str, Any]], StudyMeta]:
    """The study's runs at each shape's best nuisance setting, and the store's meta."""
    with Store.open(out_dir) as store:
        meta = store.study_meta()
        return per_shape_optimum(in_study(store.records(), meta)[0], meta)[0], meta


def fit(out_dir: str | Path | None = None, *, x: str = "params", y: str = "test_loss",
        by: str | None = None, form: str = "auto", csv_path: str | Path | None = None,
        n_resamples: int = 1000, holdout: str | float = DEFAULT_HOLDOUT) -> list[FitEntry]:
    """Fit ``y`` against ``x`` (comma-separated for a joint law), one fit per value of ``by``;
    a joint law gets compute-optimal allocation when the runs' counted FLOPs support one, and
    on a stored study is the report's form (chinchilla) unless ``form`` names another.
    Every fit carries its diagnostics and verdict (``entry.fit.verdict``)."""
    rows = analysis_records(out_dir, csv_path)
    labels = {} if out_dir is None else {path: label for label, path in
                                         study_axes(out_dir).items()}
    # a stored study's columns as its report names them (num_train, not task.num_train)
    x_names = [labels.get(c, c) for c in (resolve_column(rows, n.strip()) for n in x.split(","))]
    y_name = resolve_column(rows, y)
    by_name = resolve_column(rows, by) if by else None
    by_name = labels.get(by_name, by_name)
    if form == "auto" and len(x_names) == 2 and out_dir is not None:
        form = "chinchilla"  # the joint law the study's report fits, so the two agree
    check_numbers(rows, [*x_names, y_name], "fit", positive=True)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if all(r.get(n) is not None for n in (*x_names, y_name)):
            groups.setdefault(r.get(by_name) if by_name else None, []).append(r)
    if not groups:
        raise ScalelabError(f"no completed runs with values for {', '.join([*x_names, y_name])}")
    return [fit_rows(g, x_names, y_name, ((by_name, key),) if by_name else (), n_resamples, form,
                     holdout, allocate=len(x_names) == 2) for key, g in groups.items()]


def compute_optimal(out_dir: str | Path, *, n_resamples: int = 1000,
                    target: float | None = None) -> ComputeOptimal | str:
    """The stored study's compute-optimal answers (every approach its runs allow, their
    agreement and the one to use), computed as its report computes them; or why it has none
    (a sentence). ``target``: the FLOPs N* is quoted at [default: the study's
    ``analysis.target_compute``, else 10x its largest budget or run]."""
    _check_target(target)
    with Store.open(out_dir) as store:
        records, meta, curves = store.records(), store.study_meta(), store.curves()
    selected = per_shape_optimum(in_study(records, meta)[0], meta)[0]
    settings = meta.settings
    try:
        return study_answers(selected, settings["size"], settings["metric"], meta.design,
                             settings.get("data", "auto"), curves, n_resamples,
                             target if target is not None else settings.get("target_compute"))
    except ScalelabError as exc:  # the runs cannot support the approaches: say why
        return str(exc)


#: The columns of a CSV of one's own runs, by what they hold (matched ignoring case).
RUN_COLUMNS = {"model size": ("N", "params"), "data": ("D", "tokens", "examples"),
               "budget": ("C", "budget"), "loss": ("loss", "L")}
#: Runs whose k·N·D agree within this (relative) are one IsoFLOP budget.
SHARED_BUDGET_RTOL = 0.01
#: Fewest runs the approaches are asked to fit.
MIN_CSV_RUNS = 5


def is_runs_csv(path: str | Path) -> bool:
    """Whether a CSV names a loss column (``loss`` or ``L``): a table of one's own runs for
    :func:`fit_csv`, rather than a table of results to fit a named law to."""
    header = read_csv_records(path)[0].keys()
    return _column(header, "loss", Path(path), required=False) is not None


def fit_csv(path: str | Path, *, flops_per_param_token: float | None = None,
            target: float | None = None, n_resamples: int = 1000, seed: int = 0
            ) -> ComputeOptimal:
    """Chinchilla's Approaches 2 and 3 and their agreement on runs trained anywhere: a CSV
    with one row per run and columns for model size (``N`` or ``params``), data (``D``,
    ``tokens`` or ``examples``), loss (``loss`` or ``L``), the IsoFLOP budget (``C`` or
    ``budget``, optional) and optionally ``seed`` or ``group`` (runs drawn together when
    resampling). Without a budget column, ``flops_per_param_token`` k gives each run
    C = k·N·D, and runs whose C agree within 1% form one budget (a run that shares it with
    fewer than 3 sizes is left out of Approach 2). Rows whose ``status`` is not completed are
    skipped. N* is quoted at ``target`` FLOPs [default: 10x the largest budget]."""
    _check_target(target)
    if flops_per_param_token is not None and not (
            math.isfinite(flops_per_param_token) and flops_per_param_token > 0):
        raise ScalelabError(f"--flops-per-param-token: expected a positive number (6 for a "
                            f"transformer's forward and backward), got {flops_per_param_token!r}")
    every = read_csv_records(path)
    path = every.path
    columns = {role: _column(every[0].keys(), role, path) for role in RUN_COLUMNS}
    kept = [i for i, r in enumerate(every) if r.get("status", "completed") == "completed"]
    rows = CsvRows(path, [every[i] for i in kept], [every.lines[i] for i in kept])
    needed = [columns[r] for r in ("model size", "data", "loss")]
    check_numbers(rows, [c for c in (*needed, columns["budget"]) if c], "fit --csv",
                  positive=True)
    for i, r in enumerate(rows):
        empty = builtins.next((c for c in needed if r.get(c) is None), None)
        if empty is not None:
            raise ScalelabError(f"{rows.where(i)}{empty}: empty; every run needs its model "
                                "size, data and loss (leave the run out, or mark it with a "
                                "status column other than completed)")
    if len(rows) < MIN_CSV_RUNS:
        raise ScalelabError(f"{path}: {len(rows)} completed run(s); the approaches need at "
                            f"least {MIN_CSV_RUNS} (one row per run)")
    N, D, L = (np.array([float(r[c]) for r in rows]) for c in needed)
    notes: list[str] = []
    C = _csv_budgets(rows, columns["budget"], N, D, flops_per_param_token, notes)
    groups = _csv_groups(rows, C, N, D)
    result = compute_optimal_answers(N, D, C, L, groups, target=target,
                                     n_resamples=n_resamples, seed=seed,
                                     k=flops_per_param_token)
    said = any(n.startswith("Approach 2 is left out") for n in notes)  # in the CSV's words
    result.notes = notes + [n for n in result.notes
                            if not (said and n.startswith("Approach 2 is left out"))]
    return result


def _check_target(target: float | None) -> None:
    if target is not None and not (math.isfinite(target) and target > 0):
        raise ScalelabError(f"--target: expected a positive number of FLOPs, got {target!r}")


def _column(header, role: str, path: Path, required: bool = True) -> str | None:
    """The one column of ``header`` that holds ``role`` (RUN_COLUMNS), or a one-line error."""
    allowed = RUN_COLUMNS[role]
    found = [h for h in header if h.strip().lower() in {a.lower() for a in allowed}]
    if len(found) > 1:
        raise ScalelabError(f"{path}: columns {' and '.join(map(repr, found))} both give the "
                            f"{role}; keep one (allowed: {', '.join(allowed)})")
    if not found and required and role != "budget":
        raise ScalelabError(f"{path}: no {role} column (allowed: {', '.join(allowed)}; the "
                            f"file has {', '.join(map(repr, header))})")
    return found[0] if found else None


def _csv_budgets(rows: CsvRows, column: str | None, N: np.ndarray, D: np.ndarray,
                 k: float | None, notes: list[str]) -> np.ndarray | None:
    """Each run's IsoFLOP budget (NaN: none): the budget column as given, else k·N·D with
    runs whose compute agrees within SHARED_BUDGET_RTOL taken as one budget, else None."""
    if column is not None:
        if k is not None:
            notes.append(f"--flops-per-param-token is not used: the {column!r} column gives "
                         "each run's budget (k is measured from it)")
        return np.array([np.nan if r.get(column) is None else float(r[column]) for r in rows])
    if k is None:
        notes.append("Approach 2 is left out: no budget column (C or budget); give one, or "
                     "--flops-per-param-token k to take each run's C = k·N·D (runs whose C "
                     f"agree within {SHARED_BUDGET_RTOL:.0%} form one budget).")
        return None
    spent = k * N * D
    C = np.full(len(N), np.nan)
    alone = 0
    for members in budget_groups(spent, SHARED_BUDGET_RTOL):
        if len(np.unique(N[members])) >= 3:  # a parabola in ln N needs 3 sizes
            C[members] = float(np.median(spent[members]))
        else:
            alone += len(members)
    if alone:
        notes.append(f"{alone} run(s) share their C = {k:g}·N·D (within "
                     f"{SHARED_BUDGET_RTOL:.0%}) with runs of fewer than 3 sizes: no IsoFLOP "
                     "profile, so Approach 2 leaves them out (Approach 3 uses every run).")
    return C


def _csv_groups(rows: CsvRows, C: np.ndarray | None, N: np.ndarray, D: np.ndarray
                ) -> list[str] | None:
    """Labels of runs resampled together: the ``group`` column, else (with a ``seed``
    column) each budget, size and data's seeds, else None (every run alone)."""
    names = {h.strip().lower(): h for h in rows[0]}
    if "group" in names:
        return [str(r.get(names["group"])) for r in rows]
    if "seed" in names:
        budgets = C if C is not None else np.full(len(N), np.nan)
        return [f"{c:.6g}|{n:.6g}|{d:.6g}" for c, n, d in zip(budgets, N, D)]
    return None


def compare(out_dir: str | Path | None = None, *, metric: str, by: str, baseline: str,
            paired_by: str | None = "seed", within: Sequence[str] = (),
            csv_path: str | Path | None = None, level: float = 0.95) -> list[Comparison]:
    """Every value of ``by`` against ``baseline``, paired by ``paired_by`` (None: unpaired)."""
    rows = analysis_records(out_dir, csv_path)
    metric_name = resolve_column(rows, metric)
    check_numbers([r for r in rows if r.get("status", "completed") == "completed"]
                  if not isinstance(rows, CsvRows) else rows, [metric_name],
                  f"compare --metric {metric}")
    return compare_records(
        rows, metric_name, resolve_column(rows, by), baseline,
        resolve_column(rows, paired_by) if paired_by else None,
        [resolve_column(rows, w) for w in within], level)


def claims(out_dir: str | Path) -> list[dict[str, Any]]:
    """The runs being trained now by a live runner: its host:pid and token, how long it has
    held the claim, its heartbeat count and how long this machine has seen it unchanged."""
    with Store.open(out_dir) as store:
        return store.claims()


def merge(out_dir: str | Path) -> int:
    """Fold the shard stores of ``out_dir`` into its main store and remove them; returns the
    runs taken from shards (0 when there were none). Refused while a ``--shard-store`` runner
    is still writing; safe to kill at any moment and to repeat."""
    with Store.open(out_dir) as store:
        return store.merge() if isinstance(store, Stores) else 0


def check_store(out_dir: str | Path) -> None:
    """Raise a one-line error when the store in ``out_dir`` fails SQLite's integrity check."""
    with Store.open(out_dir) as store:
        store.check()


def report(out_dir: str | Path, n_resamples: int = 1000, out: str | Path | None = None,
           progress: Callable[[str], None] | None = None):
    """Write the study report (md, html, json, txt, figures) into ``out`` (default:
    ``out_dir``; another folder for a store that cannot be written, e.g. an archive).
    ``progress`` is told of each slow step (the fits, the figures) before it starts."""
    from .report import write_report

    return write_report(out_dir, n_resamples=n_resamples, out=out, progress=progress)


def evaluate(out_dir: str | Path, *, study: str | Path | Study | None = None,
             device: str = "auto",
             output: Output | None = None):
    """Re-score the stored checkpoints under the study's ``evaluations`` (trains nothing)."""
    from .evaluation.rescore import evaluate_study

    return evaluate_study(out_dir, study, device, output)


def evaluation_summary(out_dir: str | Path, result, metric: str = "test_acc"):
    """(per-setting summary rows, comparisons with the first setting) of an
    :func:`evaluate` result, with settings marked ``tune:`` tuned per shape on validation."""
    from .analysis.evaluations import analyze_evaluations

    settings = [{"eval_id": i, "config": c, "tune": result.tune.get(i, [])}
                for i, c in result.settings]
    evaluated = analyze_evaluations(result.rows, settings, study_records(out_dir),
                                    result.shape_axes, metric)
    return evaluated.summary, evaluated.comparisons


def coordcheck(study: str | Path | Study, *, out: str | Path | None = None,
               widths: Sequence[int] | None = None, steps: int = 5, seeds: int = 3,
               lr: float | None = None, overrides: Sequence[str] = (), quick: bool = False):
    """Coordinate check of the study's model under standard and μP (see
    :mod:`scalelab.train.coordcheck`); writes ``coordcheck.png``/``.svg``/``.json`` into
    ``out`` (default: the study's output directory) and returns the check and the figure."""
    from .files import write_atomically
    from .report.plots import coordcheck_figure, save
    from .train.coordcheck import coordinate_check

    study = _as_study(study, overrides, quick)
    if widths:
        _check_widths(study, list(widths))
    check = coordinate_check(study, list(widths) if widths else None, steps, seeds, lr)
    files = OutDir(out if out is not None else default_out_dir(study)).coordcheck
    figure = save(coordcheck_figure(check.to_dict()), files)[0]
    write_atomically(files.with_suffix(".json"), json.dumps(check.to_dict(), indent=2))
    return check, figure


def _check_widths(study: Study, widths: list[int]) -> None:
    """Refuse, before anything is trained or written, coordcheck widths that are not whole
    numbers of at least 1, that repeat, or that the model family cannot build or this
    machine could not hold (priced on the meta device, nothing allocated)."""
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ScalelabError(f"--widths: {w!r} is not a width; give whole numbers of at "
                                "least 1, e.g. --widths 64,128,256")
    repeated = [w for w in dict.fromkeys(widths) if widths.count(w) > 1]
    if repeated:
        raise ScalelabError(f"--widths: {repeated[0]} is given {widths.count(repeated[0])} "
                            "times; give each width once (the check fits a slope against width)")
    import torch
    from pydantic import ValidationError

    from .registry import models
    from .runner.local import device_memory
    from .train.stacking import estimate_bytes

    config = builtins.next(study.iter_runs()).config  # (`next` is a command here)
    setting = models.get(config["model"]["name"]).width_setting
    if setting is None:
        return  # the check itself says which families have a width
    available = device_memory(torch.device("cpu"))
    for w in sorted(widths, reverse=True):
        model = {**config["model"], setting: w, "parametrization": "mup",
                 **{k: v for k, v in study.spec.model.items() if k == "base_width"}}
        try:
            need = estimate_bytes({**config, "model": model})
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ScalelabError(f"--widths: {w}: {message}") from None
        except (RuntimeError, OverflowError, ValueError) as exc:
            raise ScalelabError(f"--widths: {w}: a model too large to build "
                                f"({first_line(exc, 120)}); choose smaller widths") from None
        if need > available:
            raise ScalelabError(f"--widths: {w}: the {config['model']['name']} model needs "
                                f"{need / 2**30:,.1f} GiB to train (weights, gradients, two "
                                f"optimizer moments, one batch), more than the "
                                f"{available / 2**30:,.1f} GiB of this machine; choose smaller "
                                "widths")


def next(out_dir: str | Path, budget: float, *, study: str | Path | None = None,  # noqa: A001
         where: dict[str, str] | None = None, extra: int = 2, append: bool = False,
         n_resamples: int = 1000, hyper: str = "bracket"):
    """The next runs of a stored study at compute ``budget`` (FLOPs): the compute-optimal run
    (N* from the approach the study's agreement verdict recommends, else its joint law's
    optimum; ``result.approach`` says which) snapped to a buildable shape and ``extra`` runs
    that most shrink the uncertainty there, each with its predicted metric and interval and,
    per ``hyper`` (bracket, predicted, grid), its tuned settings from their laws; recorded in
    the store's extrapolation ledger, and with ``append`` added to the study file's grid
    (see :mod:`scalelab.proposal`). ``scalelab.next`` in a notebook."""
    from .proposal import propose

    return propose(out_dir, budget, study=study, where=where, extra=extra, append=append,
                   n_resamples=n_resamples, hyper=hyper)


def data(name: str | None = None, *, to: str | Path | None = None, shards: int | None = None,
         output: Output | None = None) -> Path | list[dict[str, Any]]:
    """Fetch public dataset ``name`` (``scalelab data list`` names them) into the dataset
    cache, or the folder ``to``, unless it is there whole already; returns the folder its
    task reads. ``shards``: FineWeb training shards (100 M tokens each). With no ``name``:
    what the cache holds of every dataset, one dict each."""
    from . import datasets

    if name is None:
        return [datasets.state(n) for n in datasets.CATALOG]
    return datasets.get(name, to=to, shards=shards, output=output)


def data_state(name: str, to: str | Path | None = None) -> dict[str, Any]:
    """What the cache (or ``to``) holds of dataset ``name``: a row of ``scalelab data list``."""
    from . import datasets

    return datasets.state(name, to)
