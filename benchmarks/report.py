"""`scalelab report` of the quickstart: the command's wall time as a user runs it, goal <= 10 s
on 2 cores (issue 24: no silent minutes).

Store: runs/quickstart (the bundled study as `scalelab run studies/quickstart.yaml` stores it:
45 runs, 4 fits with 1,000 bootstrap resamples each, 8 figures) copied into a temporary
folder, so the benchmark never writes there. Without it the quickstart's `--quick` variant
(6 runs) is trained into the temporary folder first and the result says so (`store`); its
time is then no measure of the goal.

Measured: `python -m scalelab report DIR` in a fresh process (imports included), --repeats
times; the figure is the median wall time. Also: each repeat's wall and CPU seconds (user +
system of the command and the workers it forks), the 1-minute load average before each (the
2-core machines this is measured on are shared: at a load of 4 the same command takes about
twice as long), and the phases as the command's own progress lines time them (start to
"analysing", the fits, the figures and files).

Then, in this process and alternately, the report with its fits and figures on one process
(workers=1) against the default (every usable core): time(one) / time(all) is what the
second core brings (`one_over_all_cores`), and both must write the same report.md and
scaling_law.json (`same_report`): the numbers do not depend on how many processes made them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, quickstart_store, report  # noqa: E402

from scalelab.report import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def timed_command(out: Path) -> dict:
    """One `python -m scalelab report`: wall, CPU (with its workers), load, phase times."""
    load = round(os.getloadavg()[0], 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "scalelab", "report", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said = {}
    for line in proc.stderr:
        for phase in ("analysing", "writing", "wrote"):
            if line.startswith(phase):
                said[phase] = time.perf_counter() - start
    if proc.wait():
        raise SystemExit(f"scalelab report {out} failed (exit {proc.returncode})")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    phases = {}
    if "analysing" in said and "writing" in said:
        phases = {"start_s": round(said["analysing"], 2),
                  "fits_s": round(said["writing"] - said["analysing"], 2),
                  "figures_and_files_s": round(wall - said["writing"], 2)}
    print(f"  scalelab report: {wall:.2f} s wall, {cpu:.2f} s CPU, load before {load}, "
          f"phases {phases}", flush=True)
    return {"wall": round(wall, 2), "cpu": round(cpu, 2), "load": load, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", default=str(ROOT / "runs" / "quickstart"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side-by-side", type=int, default=2,
                        help="alternating repeats of one process against all cores")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        source = quickstart_store(Path(args.quickstart), out)
        runs = [timed_command(out) for _ in range(args.repeats)]
        written = {}

        def one_process():
            written["one"] = write_report(out, out=Path(tmp) / "one", workers=1)

        def all_cores():
            written["all"] = write_report(out, out=Path(tmp) / "all")

        ratios = alternate(one_process, all_cores, args.side_by_side)
        same = all((Path(tmp) / "one" / name).read_bytes()
                   == (Path(tmp) / "all" / name).read_bytes()
                   for name in ("report.md", "scaling_law.json"))
        analysis = written["all"].analysis
    wall = median([r["wall"] for r in runs])
    report("scalelab_report_quickstart_wall_s", wall, "<= 10", store=source,
           runs_s=[r["wall"] for r in runs], cpu_s=[r["cpu"] for r in runs],
           load_before=[r["load"] for r in runs], phases=[r["phases"] for r in runs],
           fits=len(analysis.fits), bootstrap_resamples=1000,
           figures=len(written["all"].figures), cores=os.cpu_count(),
           one_over_all_cores=round(median(ratios), 3),
           one_over_all_cores_runs=[round(r, 3) for r in ratios], same_report=same)


if __name__ == "__main__":
    main()
