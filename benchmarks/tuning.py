"""Nuisance tuning at a fraction of a grid's compute: the quickstart's 15 shapes (MLP width
16-256 x 10k/20k/40k MNIST-1D examples) with `nuisance: [lr]` over 7 learning rates
(1-2-5 steps from 0.001 to 0.1) and 3 seeds, searched three ways into three stores:

- grid: every setting trained to the end (315 runs);
- halving: asynchronous successive halving (eta 3, 2 rungs: at 1/9 and 1/3 of the budget);
- halving started by the law: the same, each shape of width 64 and up starting only the 3
  learning rates nearest the law of the best rate against parameters fitted on the smaller
  shapes already searched.

For each: (a) total counted training FLOPs of every run stored (pruned ones up to their
rung; never-started ones count 0), and (b) per shape, the mean test loss over seeds of the
setting the analysis chooses (best mean validation loss; a pruned setting never wins).
Goal: at least 3x less compute than the grid, with every shape's chosen loss within one seed
standard deviation of the grid winner's (the grid winner's std over its 3 seeds). The
training budget is the quickstart's shortened to 1000 steps (its `quick:` budget is 500) so
the three searches fit in about ten minutes on 2 cores; it is a setting (`--steps`).

The wall time of each search is printed beside (the same process, one after another; a
ratio, not a goal). Last line: one JSON object (metric, value, goal, and both figures for both variants).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine

from scalelab import api
from scalelab.analysis.nuisance import best_over_nuisance
from scalelab.spec import load_study

LRS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
SEARCHES = {
    "grid": "grid",
    "halving": {"method": "halving", "eta": 3, "rungs": 2},
    "halving_law": {"method": "halving", "eta": 3, "rungs": 2, "start": "law", "window": 3},
}


def searched(search, steps: int, quick: bool):
    study = load_study(ROOT / "studies" / "quickstart.yaml")
    spec = study.spec.model_dump(mode="json")
    spec["grid"] = dict(spec["grid"]) | {"lr": LRS}
    if quick:  # a smoke test of the script: 3 widths x 1 data size, 1 seed
        spec["grid"] |= {"width": [16, 64, 256], "num_train": [10000]}
        spec["seeds"] = [0]
    spec.update(nuisance=["lr"], nuisance_search=search, quick={})
    spec["train"] = dict(spec["train"]) | {"max_steps": steps, "eval_every": 50,
                                           "warmup_steps": steps // 30}
    spec["train"]["early_stopping"] = {"patience": 8}
    return spec


def outcome(out: Path) -> tuple[float, dict[tuple, tuple[float, float, float]]]:
    """(total train FLOPs, shape -> (chosen lr, mean test loss, std over seeds))."""
    records = api.records(out)
    flops = sum(r.get("train_flops") or 0.0 for r in records)
    selected, winners = best_over_nuisance(records, ["width", "num_train"], ["lr"])
    chosen = {}
    for w in winners:
        losses = [r["test_loss"] for r in selected if r["width"] == w.point["width"]
                  and r["num_train"] == w.point["num_train"]]
        chosen[(w.point["width"], w.point["num_train"])] = (
            w.nuisance["lr"], statistics.mean(losses),
            statistics.stdev(losses) if len(losses) > 1 else 0.0)
    return flops, chosen


def _in_stds(gap: float, std: float) -> float | None:
    """A loss gap in seed standard deviations (None: a gap with no spread to measure it by)."""
    if std:
        return gap / std
    return 0.0 if gap <= 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 shapes, 1 seed (a smoke test)")
    args = parser.parse_args()
    print(json.dumps(machine()), flush=True)
    results, walls = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, search in SEARCHES.items():
            spec = searched(search, args.steps, args.quick)
            spec["name"] = f"tuning_{name}"
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(json.dumps(spec))
            out = Path(tmp) / name
            started = time.perf_counter()
            api.run(path, out=out)
            walls[name] = time.perf_counter() - started
            results[name] = outcome(out)
            print(f"{name}: {results[name][0]:.4g} train FLOPs, {walls[name]:.0f} s", flush=True)
    grid_flops, grid = results["grid"]
    summary = {}
    for name in ("halving", "halving_law"):
        flops, chosen = results[name]
        gaps = {shape: (chosen[shape][1] - grid[shape][1], grid[shape][2])
                for shape in grid if shape in chosen}
        within = sum(gap <= std for gap, std in gaps.values())
        summary[name] = {"compute_saving": grid_flops / flops,
                         "wall_time_saving": walls["grid"] / walls[name], "shapes": len(grid),
                         "shapes_within_one_std": within,
                         "missing_shapes": len(grid) - len(gaps),
                         "worst_gap_in_stds": max(
                             (_in_stds(gap, std) for gap, std in gaps.values()),
                             key=lambda v: float("inf") if v is None else v)}
        for shape, (_gap, std) in sorted(gaps.items()):
            print(f"{name} width={shape[0]} num_train={shape[1]}: lr {chosen[shape][0]:g} "
                  f"(grid {grid[shape][0]:g}), test loss {chosen[shape][1]:.4f} vs "
                  f"{grid[shape][1]:.4f} ± {std:.4f}", flush=True)
        print(f"{name}: {summary[name]['compute_saving']:.2f}x less compute; "
              f"{within}/{len(grid)} shapes within one seed std", flush=True)
    ok = all(s["compute_saving"] >= 3 and s["shapes_within_one_std"] == s["shapes"]
             for s in summary.values())
    print(json.dumps({"metric": "compute_saving_vs_grid (halving, law-seeded halving)",
                      "value": min(s["compute_saving"] for s in summary.values()),
                      "goal": ">= 3x less compute, every shape's chosen test loss within one "
                              "seed std of the grid winner's", "met": ok, "steps": args.steps,
                      "quick": args.quick, **summary}))


if __name__ == "__main__":
    main()
