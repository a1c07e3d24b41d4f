"""Does padding let a width axis share one batched group profitably?

4 widths {16, 32, 64, 128} x 4 seeds of the MNIST-1D MLP (depth 2, Adam, batch 100, 600
steps, no early stopping): (a) one batched group per width, as scalelab does by default;
(b) one group of all 16 runs, zero-padded to width 128 (`stack_pad: true`), each run still
training exactly as at its own width. Figure: time(a) / time(b); padding is worth using
where this is clearly above 1 (> 1.1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, median, report  # noqa: E402
from batched import configs  # noqa: E402

from scalelab.train import train_group  # noqa: E402

WIDTHS = (16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    per_width = [configs(args.seeds, args.steps, w) for w in WIDTHS]
    padded = [c for group in per_width for c in group]  # train_group pads to the widest
    train_group(configs(2, 10, 16))  # warm up

    def separate():
        for group in per_width:
            train_group(group)

    ratios = alternate(separate, lambda: train_group(padded), args.repeats)
    value = median(ratios)
    report("per_width_groups_time_over_padded_group_time", value, "> 1.1",
           decision="padding pays here" if value > 1.1 else "padding does not pay here",
           widths=list(WIDTHS), seeds=args.seeds, steps=args.steps,
           ratios=[round(r, 3) for r in ratios])


if __name__ == "__main__":
    main()
