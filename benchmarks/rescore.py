"""Re-scoring airbench94's --quick models under its 9 TTA settings: each model's settings
sharing its forward passes against each setting scored alone (issue 24: the --quick run
spent minutes re-scoring three tiny models), goal >= 5 on 2 cores.

The study's 9 settings are TTA level 2 with 9 weights of the untranslated views: the same 6
views of the test set, weighted differently, so scored alone each setting makes the same 6
forwards again (54 per model); sharing them (``evaluation._base.Forwards``) makes 6.

Models: the --quick study's 3 runs (airbench, widths 16/32/32) built from their configs on
its generated CIFAR-format set (nothing downloaded), at their seeds' initial weights: a
forward costs the same with trained weights, and nothing is trained here.

Measured in this process, alternately, --repeats times: every model scored under every
setting alone (a fresh ``Forwards`` per setting: what the code did before) and shared (one
per model, as ``scalelab evaluate`` and ``scalelab run`` now score); the median of
time(alone) / time(shared) is the figure, and of their CPU seconds beside it (the forwards
made are 9x fewer; on a 2-core machine that other jobs load, a forward's wall time swings
several-fold between repeats, so the load before is recorded). Both must give the same metrics to the bit
(``same_numbers``; each setting's ``eval_time_s`` aside, which both measure).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, median, report, timed  # noqa: E402

from scalelab.evaluation._base import Forwards  # noqa: E402
from scalelab.plugin import instantiate  # noqa: E402
from scalelab.registry import evaluators, tasks  # noqa: E402
from scalelab.spec import load_study  # noqa: E402
from scalelab.train.common import build  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    study = load_study(ROOT / "studies" / "airbench94.yaml", quick=True)
    configs = [r.config for r in study.runs]
    data = instantiate(tasks, configs[0]["task"]).load()
    models = []
    for config in configs:
        torch.manual_seed(config["seed"])
        models.append(build(config, data).eval())
    settings = [instantiate(evaluators, setting) for _, setting in study.evaluations]
    batch = configs[0]["train"]["eval_batch_size"]
    scores: dict[str, list] = {}

    def alone():
        made = [Forwards() for _ in models for _ in settings]
        scores["alone"] = [s.evaluate(m, data, batch, made[i * len(settings) + j])
                           for i, m in enumerate(models) for j, s in enumerate(settings)]
        scores["forwards_alone"] = sum(f.made for f in made)

    def shared():
        made = [Forwards() for _ in models]
        scores["shared"] = [s.evaluate(m, data, batch, f)
                            for m, f in zip(models, made) for s in settings]
        scores["forwards_shared"] = sum(f.made for f in made)

    load = round(os.getloadavg()[0], 2)
    shared()  # warm-up: the first forward of each shape is slower
    ratios, cpu_ratios = [], []
    for i in range(args.repeats):  # alternated, so drift hits both alike
        order = (alone, shared) if i % 2 == 0 else (shared, alone)
        took = {}
        for f in order:
            cpu = time.process_time()
            took[f.__name__] = (timed(f), time.process_time() - cpu)
        ratios.append(took["alone"][0] / took["shared"][0])
        cpu_ratios.append(took["alone"][1] / took["shared"][1])
        print(f"  repeat {i + 1}: alone {took['alone'][0]:.2f} s ({took['alone'][1]:.2f} s "
              f"CPU), shared {took['shared'][0]:.2f} s ({took['shared'][1]:.2f} s CPU): "
              f"{ratios[-1]:.2f}x", flush=True)
    same = all({k: v for k, v in a.items() if k != "eval_time_s"}
               == {k: v for k, v in b.items() if k != "eval_time_s"}
               for a, b in zip(scores["alone"], scores["shared"]))
    report("rescore_airbench_quick_alone_over_shared", median(ratios), ">= 5",
           ratios=[round(r, 3) for r in ratios], cpu_ratio=round(median(cpu_ratios), 3),
           cpu_ratios=[round(r, 3) for r in cpu_ratios], models=len(models), settings=len(settings),
           test_images=len(data.y_test), forwards_alone=scores["forwards_alone"],
           forwards_shared=scores["forwards_shared"], alone_s=round(timed(alone), 3),
           shared_s=round(timed(shared), 3), same_numbers=same, load_before=load,
           cores=os.cpu_count())


if __name__ == "__main__":
    main()
