"""Test-time training: batched (one stacked head per chunk of points) vs a per-point loop.

A trained MNIST-1D MLP (width 64, 2,000 training points); 1,000 test points, each with its
k = 20 nearest training points in feature space and 10 Adam steps at lr 0.01 on the head,
the same neighbours and hyperparameters on both sides, in one process. Prints the speedup
(loop time / batched time) and how many predictions agree. Goal: >= 20 with >= 99% agreement.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from scalelab.evaluation.ttt import TTT, finetune_one  # noqa: E402
from scalelab.plugin import instantiate  # noqa: E402
from scalelab.registry import tasks  # noqa: E402
from scalelab.spec import validate_study  # noqa: E402
from scalelab.train import load_checkpoint, train_run  # noqa: E402

K, STEPS, LR, POINTS = 20, 10, 0.01, 1000


def main() -> None:
    config = validate_study({
        "name": "ttt_bench", "task": {"name": "mnist1d", "num_train": 2000},
        "model": {"name": "mlp", "width": 64, "depth": 2},
        "train": {"optimizer": "adam", "lr": 3e-3, "batch_size": 100, "max_steps": 1500,
                  "eval_every": 500}}, "ttt_bench").runs[0].config
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.pt").write_bytes(train_run(config, checkpoint=True).checkpoint)
        model = load_checkpoint(config, Path(tmp) / "m.pt")
    data = instantiate(tasks, config["task"]).load()
    x = data.x_test[:POINTS]
    ttt = TTT(TTT.Config(k=K, steps=STEPS, lr=LR))
    ttt.prepare(model, data)
    queries, index = ttt.neighbours(x)

    start = time.perf_counter()
    batched = ttt.logits(model, x).argmax(1)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    looped = torch.stack([
        finetune_one(ttt.head, ttt.train_feats[index[i]], ttt.train_labels[index[i]], queries[i],
                     STEPS, LR) for i in range(POINTS)]).argmax(1)
    t_loop = time.perf_counter() - start
    agreement = (batched == looped).float().mean().item()
    print(f"batched {t_batched:.2f} s, per-point loop {t_loop:.2f} s, agreement {agreement:.4f}")
    report("ttt_batched_speedup", t_loop / t_batched, ">= 20", agreement=round(agreement, 4),
           agreement_goal=">= 0.99", seconds_batched=round(t_batched, 3),
           seconds_loop=round(t_loop, 3), points=POINTS, k=K, steps=STEPS)


if __name__ == "__main__":
    main()
