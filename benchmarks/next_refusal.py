"""`scalelab next` refusing the quickstart: the command's wall time as a user runs it, goal
<= 5 s on 2 cores (issue 24: no silent minutes).

The quickstart trains for max_steps, so its runs' counted FLOPs are not k·N·D and next
refuses to propose runs along its data axis. That refusal is decided on the joint law's
first look (its fit, backtest and compute model), before any bootstrap resample is drawn.

Store: runs/quickstart (as `scalelab run studies/quickstart.yaml` stores it) copied into a
temporary folder, so the benchmark never writes there; without it the quickstart's --quick
variant is trained there first and the result says so (`store`).

Measured: `python -m scalelab next DIR --budget 1e12` in a fresh process (imports included),
--repeats times, each with the 1-minute load average before it; the figure is the median
wall time. Then, in this process and alternately, what a refusal waited for before (every
joint law fitted with its 1,000-resample bootstrap, then checked: the code before issue 24)
against the refusal as it is now (``scalelab.next``): time(before) / time(now) is
``before_over_now``, and both must refuse with the same message (``same_refusal``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, alternate, median, quickstart_store, report  # noqa: E402

import scalelab  # noqa: E402
from scalelab.analysis.study_analysis import (  # noqa: E402
    in_study,
    joint_fits,
    per_shape_optimum,
)
from scalelab.errors import ScalelabError  # noqa: E402
from scalelab.proposal import _check_fit, _joint_fit, recorded_study  # noqa: E402
from scalelab.spec import load_study  # noqa: E402
from scalelab.store import Store  # noqa: E402

BUDGET = 1e12


def timed_command(out: Path) -> dict:
    """One `python -m scalelab next`: wall seconds, load before, and its refusal."""
    load = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scalelab", "next", str(out), "--budget",
                           f"{BUDGET:g}"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 2 or "error: next:" not in proc.stderr:
        raise SystemExit(f"scalelab next {out} did not refuse (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    print(f"  scalelab next: {wall:.2f} s wall, load before {load}: "
          f"{proc.stderr.strip()[:100]} …", flush=True)
    return {"wall": round(wall, 2), "load": load}


def refusal_before(out: Path) -> str:
    """What ``next`` did before refusing, before issue 24: the study loaded, every joint law
    fitted with its 1,000-resample bootstrap, then the fit checked."""
    with Store.open(out) as store:
        records, meta = store.records(), store.study_meta()
        store.curves()
    load_study(recorded_study(out, meta.source))
    selected, _ = per_shape_optimum(in_study(records, meta)[0], meta)
    entry = _joint_fit(joint_fits(selected, meta, meta.settings["metric"], 1000), {}, out)
    try:
        _check_fit(entry)
    except ScalelabError as exc:
        return str(exc)
    raise SystemExit(f"{out}: the joint law passes next's checks: no refusal to time")


def refusal_now(out: Path) -> str:
    try:
        scalelab.next(out, BUDGET)
    except ScalelabError as exc:
        return str(exc)
    raise SystemExit(f"{out}: next proposed runs: no refusal to time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", default=str(ROOT / "runs" / "quickstart"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side-by-side", type=int, default=2,
                        help="alternating repeats of the refusal before and now, in-process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        source = quickstart_store(Path(args.quickstart), out)
        runs = [timed_command(out) for _ in range(args.repeats)]
        said = {}
        ratios = alternate(lambda: said.setdefault("before", refusal_before(out)),
                           lambda: said.setdefault("now", refusal_now(out)), args.side_by_side)
    report("scalelab_next_refusal_quickstart_wall_s", median([r["wall"] for r in runs]), "<= 5",
           store=source, runs_s=[r["wall"] for r in runs],
           load_before=[r["load"] for r in runs], cores=os.cpu_count(),
           before_over_now=round(median(ratios), 2),
           before_over_now_runs=[round(r, 2) for r in ratios],
           same_refusal=said["before"] == said["now"], refusal=said["now"][:160])


if __name__ == "__main__":
    main()
