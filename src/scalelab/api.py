"""The Python API; the CLI is a thin layer over these functions.

>>> import scalelab
>>> result = scalelab.run("studies/quickstart.yaml", quick=True)   # doctest: +SKIP
>>> df = scalelab.load(result.out_dir)                               # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .analysis import Summary, summarize
from .errors import ScalelabError
from .output import Output
from .runner import StudyRun, execute_study, plan
from .spec import RunSpec, Study, load_study
from .store import FILENAME, Store

ExportFormat = Literal["csv", "json", "parquet"]


def default_out_dir(study: Study) -> Path:
    return Path("runs") / study.name


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
) -> StudyRun:
    """Train every run of ``study`` that ``out`` does not hold yet, storing each result."""
    spec = _as_study(study, overrides, quick)
    out_dir = Path(out) if out is not None else default_out_dir(spec)
    return execute_study(spec, out_dir, workers=workers, device=device, shard=shard, output=output)


def dry_run(
    study: str | Path | Study,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    quick: bool = False,
    shard: str | None = None,
) -> list[tuple[RunSpec, str]]:
    """Each run of the study with its state in ``out`` (``new`` if never started); writes nothing."""
    spec = _as_study(study, overrides, quick)
    out_dir = Path(out) if out is not None else default_out_dir(spec)
    statuses: dict[str, str] = {}
    if (out_dir / FILENAME).exists():
        with Store.open(out_dir) as store:
            statuses = store.statuses()
    selected, _ = plan(spec, statuses, shard)
    return [(r, statuses.get(r.run_id, "new")) for r in selected]


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
        return json.loads(store.meta().get("axes", "{}"))


def summary(out_dir: str | Path, metric: str = "test_loss") -> Summary:
    return summarize(records(out_dir), study_axes(out_dir), metric)


def export(out_dir: str | Path, fmt: ExportFormat, path: str | Path | None = None,
           curves: bool = False) -> Path:
    """Write the runs (or curves) table as csv, json or parquet; returns the file written."""
    with Store.open(out_dir) as store:
        rows = store.curves() if curves else store.records()
    target = Path(path) if path else Path(out_dir) / f"{'curves' if curves else 'results'}.{fmt}"
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ScalelabError(
                "export --format parquet needs pyarrow: pip install 'scalelab[parquet]'"
            ) from None
    elif fmt not in ("csv", "json"):
        raise ScalelabError(f"export: unknown format {fmt!r} (allowed: csv, json, parquet)")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "json":
        tmp.write_text(json.dumps(rows, indent=1))
    else:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, target)
    return target
