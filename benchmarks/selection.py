"""Does sample selection save the wall time its counted FLOPs say it saves?

AST at a 20% target on an MNIST-1D CNN (64 channels, batch 1,024, so arithmetic rather than
per-call overhead dominates) against full data, both through scalelab's real trainer, in
alternation in one process. Per step, the realized wall-clock saving (1 - AST's training
time per step / full's) is divided by the counted-FLOPs saving (1 - AST's counted training
FLOPs per step / full's: AST's scoring forward plus the forward/backward of the samples it
kept). Goal: >= 0.8, i.e. the selection bookkeeping costs little. The same ratio at the
bundled selection study's batch (100, 32 channels) shows where selection stops paying on a
CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, report  # noqa: E402

from scalelab.spec import validate_study  # noqa: E402
from scalelab.train import train_run  # noqa: E402


def config(method: dict, channels: int, batch: int, steps: int) -> dict:
    return validate_study({
        "name": "selection_bench",
        "task": {"name": "mnist1d", "num_train": 8000, "num_val": 1000},
        "model": {"name": "cnn", "channels": channels, "depth": 3},
        "method": method,
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": batch, "max_steps": steps,
                  "eval_every": steps, "schedule": "cosine", "eval_train_samples": 1000},
    }, "selection_bench").runs[0].config


def per_step(method: dict, channels: int, batch: int, steps: int) -> tuple[float, float, float]:
    """(wall seconds per step, counted training FLOPs per step, activation rate)."""
    result = train_run(config(method, channels, batch, steps))
    if result.error:
        raise RuntimeError(result.error)
    m = result.metrics
    return m["wall_time"] / m["steps"], m["train_flops"] / m["steps"], m.get("activation_rate", 1)


def ratio(channels: int, batch: int, steps: int, repeats: int) -> tuple[float, list, dict]:
    ratios, last = [], {}
    for i in range(repeats):
        pair = [({"name": "full"}, "full"), ({"name": "ast", "target_rate": 0.2}, "ast")]
        if i % 2:
            pair.reverse()
        measured = {name: per_step(method, channels, batch, steps) for method, name in pair}
        (t_full, f_full, _), (t_ast, f_ast, rate) = measured["full"], measured["ast"]
        wall_saving, flops_saving = 1 - t_ast / t_full, 1 - f_ast / f_full
        ratios.append(wall_saving / flops_saving)
        last = {"wall_saving": round(wall_saving, 4), "flops_saving": round(flops_saving, 4),
                "ms_per_step_full": round(1e3 * t_full, 2), "ms_per_step_ast": round(1e3 * t_ast, 2),
                "activation_rate": round(rate, 4)}
        print(f"  batch {batch}, {channels} channels, repeat {i + 1}: wall saving "
              f"{wall_saving:.3f}, FLOPs saving {flops_saving:.3f}, ratio {ratios[-1]:.3f}",
              flush=True)
    return median(ratios), ratios, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    big, big_ratios, big_detail = ratio(64, 1024, 60, args.repeats)
    small, small_ratios, small_detail = ratio(32, 100, 300, args.repeats)
    report("selection_wall_saving_per_flops_saving", big, ">= 0.8",
           ratios=[round(r, 4) for r in big_ratios], detail=big_detail,
           small_batch={"batch": 100, "channels": 32, "ratio": round(small, 4),
                        "ratios": [round(r, 4) for r in small_ratios], "detail": small_detail})


if __name__ == "__main__":
    main()
