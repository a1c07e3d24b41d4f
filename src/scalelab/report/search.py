"""The report's section on a halving search (analysis.tuning): per shape, what each setting
became, the compute spent against the full grid's, and every run's validation curve up to
where it stopped."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from ..analysis.tuning import SearchAnalysis, ShapeSearch
from . import plots

#: Shapes drawn in one figure of small multiples (the rest go to further figures).
PANELS = 12


def search_blocks(search: SearchAnalysis, curves: Sequence[dict[str, Any]], blocks: list,
                  figure: Callable[[Figure, str, str], None]) -> None:
    """The section: totals, a table of shapes, and the curves of every shape's settings."""
    saving = search.grid_flops / search.spent_flops if search.spent_flops else math.nan
    blocks.append(("h2", "Nuisance search (successive halving)"))
    blocks.append(("p", f"Every setting of a shape started; at each rung only the best 1/η of "
                        "the settings that had reached it (η: the study's "
                        "`nuisance_search.eta`), and those within its `margin` of standard "
                        "errors over seeds, trained on; the rest were stopped (pruned), and a "
                        f"pruned setting never wins. Compute spent: "
                        f"{search.spent_flops:.3g} training FLOPs against "
                        f"{search.grid_flops:.3g} for every setting to the end ({saving:.2f}× "
                        "less). The full grid's figure counts each pruned run to the end of "
                        "its budget, an upper bound where early stopping would have ended it "
                        "sooner."))
    blocks.append(("table", ["point", "winner", "trained to the end", "pruned (rung: settings)",
                             "not started", "FLOPs spent", "full grid", "saving",
                             "winner at searched edge"],
                   [_row(s) for s in search.shapes],
                   "One row per shape; settings counted over their seeds together (a "
                   "setting's seeds share each decision). A winner at the edge of the values "
                   "searched is a bound, not an optimum: search beyond it."))
    edge = [s for s in search.shapes if s.at_edge]
    if edge:
        blocks.append(("warn", f"{len(edge)} shape{'s' * (len(edge) != 1)}' winner sits at the "
                               "edge of the values searched: its true optimum may lie beyond "
                               "(widen the grid there)."))
    for i in range(0, len(search.shapes), PANELS):
        shapes = search.shapes[i:i + PANELS]
        figure(search_figure(shapes, curves), f"search_{i // PANELS + 1}",
               "Validation loss of every run of every setting, up to where it stopped (× : "
               "pruned at a rung); one panel per shape; colour: the setting, in order; the "
               "winner's runs drawn thick.")


def _row(s: ShapeSearch) -> list[Any]:
    won = next((f for f in s.settings if f.fate == "won"), None)
    pruned: dict[str, int] = defaultdict(int)
    for f in s.settings:
        if f.fate.startswith("pruned at rung "):
            pruned[f.fate.removeprefix("pruned at rung ")] += 1
    return [_words(s.point),
            _words(won.nuisance) if won else "none (every setting pruned or diverged)",
            sum(f.fate in ("won", "completed") for f in s.settings),
            ", ".join(f"{k}: {v}" for k, v in sorted(pruned.items())) or "—",
            sum(f.fate == "not started" for f in s.settings),
            f"{s.spent_flops:.3g}", f"{s.grid_flops:.3g}",
            f"{s.saving:.2f}×" if s.saving else "—", ", ".join(s.at_edge) or "—"]


def _words(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "all runs"


def search_figure(shapes: Sequence[ShapeSearch], curves: Sequence[dict[str, Any]]) -> Figure:
    """Small multiples: each shape's runs' validation curves, coloured by setting."""
    by_run: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in curves:
        if c["name"] == "val_loss" and c["value"] is not None:
            by_run[c["run_id"]].append((c["step"], c["value"]))
    columns = min(4, len(shapes))
    rows = math.ceil(len(shapes) / columns)
    fig = Figure(figsize=(3.2 * columns, 2.6 * rows), dpi=plots.STYLE["dpi"],
                 layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, shape in zip(axes.flat, shapes):
        n = max(1, len(shape.settings) - 1)
        for i, setting in enumerate(shape.settings):
            colour = colormaps["viridis"](i / n)
            drawn = False
            for run_id in setting.run_ids:
                points = sorted(by_run.get(run_id, []))
                if not points:
                    continue
                steps, values = zip(*points)
                ax.plot(steps, values, color=colour, lw=1.8 if setting.fate == "won" else 0.8,
                        alpha=0.9, label=None if drawn else _words(setting.nuisance))
                drawn = True
                if setting.fate.startswith("pruned"):
                    ax.plot(steps[-1:], values[-1:], "x", color=colour, ms=4)
        plots.log_axis(ax, "y", "metric")
        ax.set_title(_words(shape.point), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
    axes.flat[0].legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(shapes):]:
        ax.set_visible(False)
    fig.supxlabel("step", fontsize=8)
    fig.supylabel("val_loss", fontsize=8)
    return fig

