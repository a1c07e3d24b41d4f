"""Would padding-and-masking let a width axis share one batched group profitably?

A padded group computes every run at the largest width, so its cost is at least that of
training all runs at the largest width. This measures exactly that floor against what
scalelab does: one batched group per width. 4 widths {16, 32, 64, 128} x 4 seeds of the
MNIST-1D MLP (depth 2, Adam, batch 100). Figure: time(one group per width) / time(all runs
padded to width 128). Masking only adds to the padded side, so padding is worth building
only with a clear margin (> 1.1). scalelab does not pad widths yet; this figure decides
whether it should.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, report  # noqa: E402
from batched import configs  # noqa: E402

from scalelab.train.batched import train_group  # noqa: E402

WIDTHS = (16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    per_width = [configs(args.seeds, args.steps, w) for w in WIDTHS]
    padded = configs(args.seeds * len(WIDTHS), args.steps, max(WIDTHS))
    train_group(configs(2, 10, 16))  # warm up

    def separate():
        for group in per_width:
            train_group(group)

    ratios = alternate(separate, lambda: train_group(padded), args.repeats)
    value = median(ratios)
    report("per_width_groups_time_over_padded_group_time", value, "> 1.1 to build padding",
           decision="padding may pay: worth building" if value > 1.1 else "padding cannot pay",
           widths=list(WIDTHS), seeds=args.seeds, steps=args.steps,
           ratios=[round(r, 3) for r in ratios])


if __name__ == "__main__":
    main()
