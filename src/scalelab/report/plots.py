"""Figures for the report (matplotlib's object API: no global pyplot state, no display).

One style everywhere; each figure is saved as PNG and SVG.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from ..analysis.nuisance import value_order
from ..analysis.stats import Comparison
from ..analysis.study_analysis import FitEntry, held_out
from ..files import open_atomically

STYLE = {"figsize": (6.0, 4.0), "dpi": 120}
LABELS = {  # axis labels with units
    "n_params": "parameters N",
    "n_params_nonembed": "non-embedding parameters N",
    "num_train": "training examples D",
    "num_train_tokens": "training tokens D",
    "test_ppl": "test perplexity",
    "val_ppl": "validation perplexity",
    "test_bpb": "test bits per byte",
    "val_bpb": "validation bits per byte",
    "train_flops": "training compute (FLOPs)",
    "test_loss": "test loss (nats)",
    "val_loss": "validation loss (nats)",
    "train_loss": "training loss (nats)",
    "test_acc": "test accuracy",
    "step": "optimizer step",
}


def label(name: str) -> str:
    return LABELS.get(name, LABELS.get(name.rsplit(".", 1)[-1], name))


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=STYLE["figsize"], dpi=STYLE["dpi"], layout="constrained")
    ax = fig.subplots()
    ax.grid(True, which="both", alpha=0.25)
    return fig, ax


def _log_y(ax) -> None:
    """Log scale with plain numbers. A loss axis often spans well under a decade, where the
    default log ticks (1, 2, ..., 9 times a power of ten) can miss the data entirely: then
    six ticks are spread evenly in log space over the data's own range. Call after plotting."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 10:
        ax.yaxis.set_major_locator(ticker.FixedLocator(np.geomspace(lo, hi, 6)[1:-1]))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _finish(ax, x_name: str, y_name: str, legend: bool) -> None:
    ax.set_xlabel(label(x_name))
    ax.set_ylabel(label(y_name))
    if legend:
        ax.legend(fontsize=7)


def save(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.png and .svg, each written whole or not at all (the one atomic writer: a
    kill leaves no torn figure, a full disk no temporary behind). The layout is worked out
    once, for the PNG, and kept for the SVG (laying it out again cost a sixth of the time
    and moved the axes by about a point: text measured at the SVG's resolution)."""
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        with open_atomically(path, "wb") as f:
            fig.savefig(f, format=path.suffix[1:])
        fig.set_layout_engine("none")
    return paths


def law_figure(entry: FitEntry) -> Figure:
    """Points (held-out ones hollow), the fitted curve and its bootstrap band, log-log."""
    fig, ax = _figure()
    mask = held_out(entry)
    band = entry.boot.prediction_intervals
    if entry.x.shape[1] == 1:
        groups = [(None, np.ones(len(entry.x), bool), np.ones(len(entry.grid), bool))]
        grid_x = entry.grid
    else:
        grid_x = entry.grid[:, 0]
        groups = [(d, entry.x[:, 1] == d, entry.grid[:, 1] == d) for d in np.unique(entry.x[:, 1])]
    colors = [f"C{i}" for i in range(10)]
    for i, (d, point_sel, grid_sel) in enumerate(groups):
        color = colors[i % 10]
        tag = f"{label(entry.x_names[1])} = {d:g}" if d is not None else "fit"
        curve = entry.fit.predict(entry.grid[grid_sel])
        ax.plot(grid_x[grid_sel], curve, color=color, lw=1.5, label=tag)
        if band is not None:
            ax.fill_between(grid_x[grid_sel], band[grid_sel, 0], band[grid_sel, 1], color=color,
                            alpha=0.15, lw=0)
        fit_pts, out_pts = point_sel & ~mask, point_sel & mask
        ax.scatter(entry.x[fit_pts, 0], entry.y[fit_pts], color=color, s=18, zorder=3)
        ax.scatter(entry.x[out_pts, 0], entry.y[out_pts], facecolors="none", edgecolors=color,
                   s=40, zorder=3)
    ax.scatter([], [], color="gray", s=18, label="fitted points")
    ax.scatter([], [], facecolors="none", edgecolors="gray", s=40, label="held out in backtest")
    ax.set_xscale("log")
    _log_y(ax)
    ax.set_xlabel(label(entry.x_names[0]))
    ax.set_ylabel(label(entry.y_name))
    ax.set_title(f"{entry.fit.form}: {entry.fit.formula}  ({int(entry.boot.level * 100)}% band)",
                 fontsize=9)
    ax.legend(fontsize=7)
    return fig


def axis_figure(table: Sequence[dict[str, Any]], metric: str, x_axis: str,
                line_axis: str | None) -> Figure:
    """Mean ± std of ``metric`` against one grid axis, one line per value of another."""
    fig, ax = _figure()
    lines: dict[Any, list[tuple]] = defaultdict(list)
    for row in table:
        if row.get(metric) is None or row.get(x_axis) is None:
            continue
        lines[row.get(line_axis) if line_axis else None].append(
            (row[x_axis], row[metric], row.get(f"{metric}_std") or 0.0))
    for i, (value, pts) in enumerate(sorted(lines.items(), key=lambda kv: value_order(kv[0]))):
        pts.sort(key=lambda p: p[0])
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=2, color=f"C{i % 10}",
                    label=f"{line_axis} = {value}" if line_axis else None)
    if all(isinstance(r.get(x_axis), int | float) and r.get(x_axis) > 0 for r in table):
        ax.set_xscale("log")
        values = sorted({r[x_axis] for r in table})
        if len(values) <= 8:  # label the grid's own values, not crowded powers of ten
            ax.xaxis.set_major_locator(ticker.FixedLocator(values))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.4g}"))
            ax.xaxis.set_minor_locator(ticker.NullLocator())
    _finish(ax, x_axis, metric, bool(line_axis))
    return fig


def compute_figure(records: Sequence[dict[str, Any]], metric: str, color_axis: str | None) -> Figure:
    """Every completed run's ``metric`` against its counted training FLOPs, log-log."""
    fig, ax = _figure()
    groups: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "completed" and r.get(metric) and r.get("train_flops"):
            groups[r.get(color_axis) if color_axis else None].append((r["train_flops"], r[metric]))
    for i, (value, pts) in enumerate(sorted(groups.items(), key=lambda kv: value_order(kv[0]))):
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=14, color=f"C{i % 10}",
                   label=f"{color_axis} = {value}" if color_axis else None)
    ax.set_xscale("log")
    _log_y(ax)
    _finish(ax, "train_flops", metric, bool(color_axis))
    return fig


def forest_figure(comparisons: Sequence[Comparison]) -> Figure:
    """Difference to the baseline with its CI, one row per comparison."""
    fig = Figure(figsize=(6.0, 1.0 + 0.35 * len(comparisons)), dpi=STYLE["dpi"],
                 layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(comparisons))[::-1]
    for y, c in zip(ys, comparisons):
        color = "C3" if (c.p_holm or 1) < 0.05 else "C0"
        ax.errorbar(c.mean_diff, y, xerr=[[c.mean_diff - c.ci_low], [c.ci_high - c.mean_diff]],
                    fmt="o", color=color, capsize=3)
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(ys, [c.candidate for c in comparisons], fontsize=7)
    metric = comparisons[0].metric if comparisons else ""
    ax.set_xlabel(f"difference in {label(metric)} vs {comparisons[0].baseline if comparisons else ''}"
                  f" ({int(100 * (comparisons[0].level if comparisons else 0.95))}% CI; red: Holm p < 0.05)")
    ax.grid(True, axis="x", alpha=0.25)
    return fig


def curves_figure(curves: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
                  color_axis: str | None, name: str = "val_loss") -> Figure:
    """Learning curves of every run, coloured by one grid axis."""
    fig, ax = _figure()
    by_run: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in curves:
        if c["name"] == name and c["value"] is not None:
            by_run[c["run_id"]].append((c["step"], c["value"]))
    values = sorted({str(r.get(color_axis)) for r in records}, key=value_order) if color_axis else [""]
    color_of = {v: f"C{i % 10}" for i, v in enumerate(values)}
    shown = set()
    for r in records:
        pts = by_run.get(r["run_id"])
        if not pts:
            continue
        key = str(r.get(color_axis)) if color_axis else ""
        steps, vals = zip(*sorted(pts))
        ax.plot(steps, vals, color=color_of[key], lw=0.8, alpha=0.7,
                label=f"{color_axis} = {key}" if color_axis and key not in shown else None)
        shown.add(key)
    _log_y(ax)
    _finish(ax, "step", name, bool(color_axis))
    return fig


def pareto_figure(points: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]],
                  metric: str) -> Figure:
    """Mean metric of every selection cell and baseline against its realized training FLOPs,
    with the Pareto front (no point has both less compute and a better metric)."""
    fig, ax = _figure()
    methods = sorted({p["method"] for p in points})
    for i, method in enumerate(methods):
        pts = [p for p in points if p["method"] == method and p["flops"] and p["metric"]]
        ax.scatter([p["flops"] for p in pts], [p["metric"] for p in pts], s=22,
                   color=f"C{i % 10}", label=method, zorder=3)
    ax.plot([p["flops"] for p in front], [p["metric"] for p in front], color="gray", lw=1,
            ls="--", label="Pareto front")
    ax.set_xscale("log")
    _finish(ax, "train_flops", metric, True)
    return fig


def traces_figure(curves: Sequence[dict[str, Any]], labels: dict[str, str],
                  runs: dict[str, dict[str, Any]], traces: dict[str, list]) -> Figure:
    """A method's declared per-step traces, one panel each, one line per run; a trace's
    reference setting (e.g. the target rate) is drawn dotted in the run's colour."""
    fig = Figure(figsize=(6.0, 2.5 * len(traces)), dpi=STYLE["dpi"], layout="constrained")
    axes = fig.subplots(len(traces), 1, sharex=True, squeeze=False)[:, 0]
    for i, (run_id, run_label) in enumerate(labels.items()):
        color = f"C{i % 10}"
        for ax, (name, (axis_label, reference)) in zip(axes, traces.items()):
            pts = sorted((c["step"], c["value"]) for c in curves
                         if c["run_id"] == run_id and c["name"] == name)
            if pts:
                steps, vals = zip(*pts)
                ax.plot(steps, vals, color=color, lw=0.8, label=run_label)
            if reference and runs[run_id].get(f"method.{reference}") is not None:
                ax.axhline(runs[run_id][f"method.{reference}"], color=color, lw=0.8, ls=":")
            ax.set_ylabel(axis_label)
    axes[-1].set_xlabel(label("step"))
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, alpha=0.25)
    return fig


def class_figure(rows: Sequence[tuple[str, list[tuple]]]) -> Figure:
    """Per-class test-accuracy difference to the compute-matched baseline (rows: cells)."""
    fig = Figure(figsize=(6.0, 1.2 + 0.3 * len(rows)), dpi=STYLE["dpi"], layout="constrained")
    ax = fig.subplots()
    classes = max(len(diffs) for _, diffs in rows)
    grid = np.full((len(rows), classes), np.nan)
    for i, (_, diffs) in enumerate(rows):
        for c, (_, d, *_) in enumerate(diffs):
            grid[i, c] = d
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    names = [str(c) for c, *_ in max((diffs for _, diffs in rows), key=len)]
    if classes <= 30:
        ax.set_xticks(range(classes), names, fontsize=7, rotation=90 if
                      max(map(len, names)) > 3 else 0)
    ax.set_xlabel("class")
    fig.colorbar(image, ax=ax, label="accuracy difference vs compute-matched full")
    return fig


def settings_figure(gains: Sequence[dict[str, Any]], data_axis: str | None, gain: bool,
                    metric: str) -> Figure:
    """Each evaluation setting's metric (or gain over the first, with CIs) against model size;
    colour by setting, line style by data size."""
    fig, ax = _figure()
    settings = list(dict.fromkeys(g["setting"] for g in gains))
    sizes = sorted({g.get(data_axis) for g in gains}, key=value_order) if data_axis else [None]
    styles = ["-", "--", ":", "-."]
    for i, setting in enumerate(settings):
        if gain and i == 0:
            continue
        for j, d in enumerate(sizes):
            pts = sorted((g for g in gains if g["setting"] == setting
                          and (data_axis is None or g.get(data_axis) == d) and g["n_params"]),
                         key=lambda g: g["n_params"])
            if not pts:
                continue
            xs = [g["n_params"] for g in pts]
            if gain:
                ys = [g["gain"] for g in pts]
                err = [[g["gain"] - (g["gain_low"] if g["gain_low"] is not None else g["gain"])
                        for g in pts],
                       [(g["gain_high"] if g["gain_high"] is not None else g["gain"]) - g["gain"]
                        for g in pts]]
                ax.errorbar(xs, ys, yerr=err, color=f"C{i % 10}", ls=styles[j % 4], marker="o",
                            ms=3, capsize=2, label=f"{setting}" + (f", {data_axis}={d}" if d
                                                                   is not None else ""))
            else:
                ax.plot(xs, [1 - g["mean"] if metric.endswith("acc") else g["mean"] for g in pts],
                        color=f"C{i % 10}", ls=styles[j % 4], marker="o", ms=3,
                        label=f"{setting}" + (f", {data_axis}={d}" if d is not None else ""))
    if gain:
        ax.axhline(0, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(label("n_params"))
    name = metric.replace("_acc", " error") if metric.endswith("acc") and not gain else metric
    ax.set_ylabel(f"gain in {metric}" if gain else name)
    ax.legend(fontsize=6)
    return fig


def coordcheck_figure(check: dict[str, Any]) -> Figure:
    """How far every layer's activations moved from initialisation, against width, at the
    last step of a coordinate check; one panel per parametrization (flat: width-stable)."""
    fig = Figure(figsize=(9.0, 3.8), dpi=STYLE["dpi"], layout="constrained")
    axes = fig.subplots(1, len(check["sizes"]), sharey=True)
    for ax, (name, sizes) in zip(np.atleast_1d(axes), check["sizes"].items()):
        last = np.asarray(sizes)[:, :, -1]
        for i, layer in enumerate(check["layers"]):
            slope = check["slopes"][name][layer]
            ax.plot(check["widths"], last[:, i], marker="o", label=f"{layer} (slope {slope:+.2f})")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
        verdict = "flat" if all(abs(s) <= check["flat_tolerance"]
                                for s in check["slopes"][name].values()) else "grows with width"
        ax.set_title(f"{name}: {verdict}", fontsize=9)
        ax.set_xlabel(f"model.{check['width_setting']}")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel(f"mean |Δ activation| after {check['steps'] - 1} updates")
    return fig


def transfer_figure(transfers: Sequence[Any]) -> Figure:
    """Validation loss against a tuned setting per width, one panel per group (the μTransfer
    picture: under μP the minima line up, under standard they move)."""
    fig = Figure(figsize=(4.2 * len(transfers), 3.8), dpi=STYLE["dpi"], layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(transfers), sharey=True))
    for ax, t in zip(axes, transfers):
        for row in t.rows:
            ys = np.array([np.nan if v is None else v for v in row["losses"]])
            line, = ax.plot(t.values, ys, marker="o", ms=3, label=f"{t.width_axis}={row[t.width_axis]}")
            best = row["val_loss"]
            ax.plot([row["optimum"]], [best], marker="*", ms=11, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.25)
        ax.set_title(", ".join(f"{k}={v}" for k, v in t.group.items()) or "all runs", fontsize=9)
        ax.set_xlabel(t.axis)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(label("val_loss"))
    finite = [v for t in transfers for r in t.rows for v in r["losses"] if v is not None]
    if finite:  # diverged-looking plateaus (chance level) would squash the minima
        lo = min(finite)
        axes[0].set_ylim(lo - 0.05 * abs(lo), min(max(finite), lo + 3 * (np.median(finite) - lo) + 1e-9))
    return fig


def isoflop_figure(approach2: Any, metric: str) -> Figure:
    """Each budget's IsoFLOP profile: its runs, the parabola in ln N and the minimum with its
    interval (hollow: a minimum left out of the power laws, e.g. at the edge of its sizes)."""
    fig, ax = _figure()
    for i, p in enumerate(approach2.profiles):
        color = f"C{i % 10}"
        ax.scatter(p.sizes, p.losses, color=color, s=14, zorder=3, label=f"C = {p.budget:.3g}")
        if p.coeffs is not None:
            grid = np.geomspace(p.sizes.min(), p.sizes.max(), 100)
            ax.plot(grid, np.polyval(p.coeffs, np.log(grid)), color=color, lw=1.2)
        if np.isfinite(p.n_opt):
            lo, hi = p.n_opt_interval
            # a point estimate can fall outside its percentile interval: bars never negative
            ax.errorbar([p.n_opt], [p.loss_opt], xerr=[[max(p.n_opt - lo, 0)],
                                                       [max(hi - p.n_opt, 0)]]
                        if np.isfinite(lo) and np.isfinite(hi) else None, fmt="D", ms=6,
                        color=color, mfc=color if p.usable else "none", zorder=4)
    ax.set_xscale("log")
    _log_y(ax)
    _finish(ax, "n_params", metric, legend=True)
    ax.set_title("IsoFLOP profiles: loss against size at each budget; ◆ the parabola's minimum",
                 fontsize=9)
    return fig


def approaches_figure(estimates: Sequence[Any], lines: Sequence[tuple[str, Any]],
                      budgets: Sequence[float], target: float) -> Figure:
    """N* against compute from each approach (``lines``: name, N*(C) function), from the
    budgets to the target, with each approach's interval at the target."""
    fig, ax = _figure()
    lo = min(budgets) if budgets else target / 100
    grid = np.geomspace(lo, target, 50)
    for i, (name, n_opt_at) in enumerate(lines):
        ax.plot(grid, [n_opt_at(c) for c in grid], color=f"C{i}", lw=1.5, label=name)
    for i, e in enumerate(estimates):
        low, high = e.n_opt_target_interval
        if np.isfinite(low) and np.isfinite(high):
            ax.errorbar([target * (1 + 0.04 * i)], [e.n_opt_target],
                        yerr=[[max(e.n_opt_target - low, 0)], [max(high - e.n_opt_target, 0)]],
                        fmt="o",
                        color=f"C{i}", capsize=3)
    ax.axvline(target, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("compute-optimal size N*")
    ax.legend(fontsize=7)
    ax.set_title("N*(C) from each approach; interval at the target compute", fontsize=9)
    return fig
