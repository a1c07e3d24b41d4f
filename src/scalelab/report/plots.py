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
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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


def si(value: float, _pos: Any = None) -> str:
    """A count as a paper writes it: 500, 10k, 2.5M, 1.2B, 3T."""
    if abs(value) >= 1e15:
        return power_of_ten(value)
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def plain(value: float, _pos: Any = None) -> str:
    """A metric's value: 0.75, 1, 1.5, 20 (thousands and up as counts: 2k)."""
    return si(value) if abs(value) >= 1e3 else f"{value:.3g}"


def power_of_ten(value: float, _pos: Any = None) -> str:
    """A compute as 10⁹ or 2×10⁹ (mathtext)."""
    if value <= 0:
        return ""
    exponent = int(np.floor(np.log10(value) + 1e-9))
    coefficient = value / 10.0**exponent
    if abs(coefficient - 1) < 1e-6:
        return f"$10^{{{exponent}}}$"
    return f"${coefficient:.3g}\\times10^{{{exponent}}}$"


#: Tick labels of each kind of log axis.
FORMATTERS = {"count": si, "metric": plain, "flops": power_of_ten}
METRIC_WORDS = ("loss", "ppl", "acc", "bpb", "error")


def axis_kind(name: str) -> str:
    """How a quantity's ticks read: a compute, a metric or (the rest) a count or size."""
    if "flops" in name or name in ("C", "compute"):
        return "flops"
    return "metric" if any(w in name for w in METRIC_WORDS) else "count"


def log_axis(ax, which: str, kind: str, values: Sequence[float] | None = None) -> None:
    """A log axis with readable ticks: at 1, 2 and 5 × 10^k (10^k alone over more than four
    decades; round values evenly spaced where the limits hold fewer than three of those),
    or at the grid's own ``values`` (at most eight), labelled by ``kind`` (FORMATTERS).
    Call after plotting: the choice reads the axis's limits."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    decades = np.log10(hi / lo)
    if values is not None and 0 < len(values) <= 8:
        major = ticker.FixedLocator(sorted(values))
    else:
        major = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 4 else (1.0,))
        if sum(lo <= t <= hi for t in major.tick_values(lo, hi)) < 3:
            round_values = ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3)
            major = ticker.FixedLocator([t for t in round_values.tick_values(lo, hi) if t > 0])
    axis.set_major_locator(major)
    axis.set_minor_locator(ticker.LogLocator(base=10, subs="auto") if decades >= 1
                           and values is None else ticker.NullLocator())
    axis.set_major_formatter(ticker.FuncFormatter(FORMATTERS[kind]))
    axis.set_minor_formatter(ticker.NullFormatter())


def _log_y(ax, kind: str = "metric") -> None:
    log_axis(ax, "y", kind)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def styles(keys: Sequence[tuple], names: Sequence[str]) -> tuple[dict[tuple, dict[str, Any]],
                                                                 list[Line2D]]:
    """How to draw each combination ``keys`` of the values of the axes ``names``: hue per
    value of the first, lightness (lighter: smaller) and marker per value of the second,
    line style (and hollow markers) per combination of the rest; and the legend, one entry
    per value of each axis."""
    if not names:  # nothing varies: one style
        return {key: {"color": "C0", "marker": "o", "ls": "-", "hollow": False}
                for key in keys}, []
    first = sorted({k[0] for k in keys}, key=value_order)
    second = sorted({k[1] for k in keys if len(k) > 1}, key=value_order)
    rest = sorted({k[2:] for k in keys}, key=lambda t: tuple(map(value_order, t)))
    out = {}
    for key in keys:
        j = second.index(key[1]) if len(key) > 1 else 0
        r = rest.index(key[2:])
        lighten = 0.6 * (1 - j / (len(second) - 1)) if len(second) > 1 else 0.0
        out[key] = {"color": _lighter(f"C{first.index(key[0]) % 10}", lighten),
                    "marker": MARKERS[j % len(MARKERS)], "ls": LINESTYLES[r % len(LINESTYLES)],
                    "hollow": r % 2 == 1}
    legend = [Line2D([], [], color=f"C{i % 10}", lw=2, label=_value_label(names[0], v))
              for i, v in enumerate(first)] if names else []
    shown = range(len(second)) if len(second) <= 6 else (0, None, len(second) - 1)
    legend += [Line2D([], [], ls="none", label="…") if j is None else
               Line2D([], [], color=_lighter("0.25", 0.6 * (1 - j / max(len(second) - 1, 1))),
                      marker=MARKERS[j % len(MARKERS)], ls="none",
                      label=_value_label(names[1], second[j]))
               for j in shown] if len(second) > 1 else []
    legend += [Line2D([], [], color="0.25", ls=LINESTYLES[r % len(LINESTYLES)],
                      marker="o", mfc="none" if r % 2 else "0.25",
                      label=", ".join(_value_label(n, v) for n, v in zip(names[2:], t)))
               for r, t in enumerate(rest)] if len(rest) > 1 else []
    return out, legend


def _clip(ax, which: str, values: Sequence[float], reach: float = 10.0) -> None:
    """Limit a log axis to the finite, positive ``values`` (and at most ``reach`` times beyond
    them): an interval that runs off by decades would otherwise squash the data into a corner
    (it is drawn to the edge, and its numbers are in the table)."""
    good = [float(v) for v in values if np.isfinite(v) and v > 0]
    if not good:
        return
    lo, hi = min(good), max(good)
    now_lo, now_hi = getattr(ax, f"get_{which}lim")()
    getattr(ax, f"set_{which}lim")(max(now_lo, lo / reach) if now_lo > 0 else lo / reach,
                                   min(now_hi, hi * reach))


def _legend(ax, handles: Sequence[Line2D]) -> None:
    """A legend in the axes when short, to their right when long (it would hide data)."""
    if not handles:
        return
    if len(handles) <= 5:
        ax.legend(handles=handles, fontsize=7)
    else:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)


def _lighter(color: str, amount: float) -> tuple[float, float, float]:
    """``color`` mixed with white (0: as it is, 1: white)."""
    return tuple(c + (1 - c) * amount for c in to_rgb(color))


def _value_label(name: str, value: Any) -> str:
    """'width = 64', 'num_train = 10,000', 'budget = 4×10⁸'."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} = {value}"
    if abs(value) >= 1e5:
        return f"{name} = {power_of_ten(value)}"
    return f"{name} = {value:,}" if isinstance(value, int) else f"{name} = {value:g}"


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
    """The full fit (on all points) with its bootstrap band, log-log; the points the backtest
    held out hollow, and the backtest fit's predictions for them as crosses."""
    fig, ax = _figure()
    bt = entry.fit.backtest
    mask = held_out(entry)
    predicted = np.full(len(entry.x), np.nan)
    if bt is not None and len(bt.predicted) == int(mask.sum()):
        predicted[mask] = bt.predicted
    band = entry.boot.prediction_intervals
    if entry.x.shape[1] == 1:
        groups = [(None, np.ones(len(entry.x), bool), np.ones(len(entry.grid), bool))]
        grid_x = entry.grid
    else:
        grid_x = entry.grid[:, 0]
        groups = [(d, entry.x[:, 1] == d, entry.grid[:, 1] == d) for d in np.unique(entry.x[:, 1])]
    for i, (d, point_sel, grid_sel) in enumerate(groups):
        color = f"C{i % 10}"
        tag = (f"{label(entry.x_names[1])} = {si(d)}" if d is not None
               else f"full fit, {int(entry.boot.level * 100)}% band")
        ax.plot(grid_x[grid_sel], entry.fit.predict(entry.grid[grid_sel]), color=color, lw=1.5,
                label=tag)
        if band is not None:
            ax.fill_between(grid_x[grid_sel], band[grid_sel, 0], band[grid_sel, 1], color=color,
                            alpha=0.15, lw=0)
        fit_pts, out_pts = point_sel & ~mask, point_sel & mask
        ax.scatter(entry.x[fit_pts, 0], entry.y[fit_pts], color=color, s=18, zorder=3)
        ax.scatter(entry.x[out_pts, 0], entry.y[out_pts], facecolors="none", edgecolors=color,
                   s=40, zorder=3)
        ax.scatter(entry.x[out_pts, 0], predicted[out_pts], marker="x", color=color, s=30,
                   zorder=4)
    ax.scatter([], [], color="gray", s=18, label="runs")
    if mask.any():
        ax.scatter([], [], facecolors="none", edgecolors="gray", s=40,
                   label="held out by the backtest")
        ax.scatter([], [], marker="x", color="gray", s=30, label="backtest fit's prediction")
    log_axis(ax, "x", axis_kind(entry.x_names[0]))
    _log_y(ax)
    ax.set_xlabel(label(entry.x_names[0]))
    ax.set_ylabel(label(entry.y_name))
    ax.set_title(f"full fit, {entry.fit.form}: {entry.fit.formula}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _keys(row: dict[str, Any], axes: Sequence[str]) -> tuple:
    return tuple(row.get(a) for a in axes)


def axis_figure(table: Sequence[dict[str, Any]], metric: str, x_axis: str,
                others: Sequence[str] | str | None) -> Figure:
    """Mean ± std of ``metric`` against one grid axis, one line per combination of the other
    axes (``styles``: hue per the first of them, lightness and marker per the second)."""
    others = [others] if isinstance(others, str) else list(others or [])
    fig, ax = _figure()
    lines: dict[tuple, list[tuple]] = defaultdict(list)
    for row in table:
        if row.get(metric) is None or row.get(x_axis) is None:
            continue
        lines[_keys(row, others)].append(
            (row[x_axis], row[metric], row.get(f"{metric}_std") or 0.0))
    look, legend = styles(list(lines), others)
    for key, pts in lines.items():
        pts.sort(key=lambda p: p[0])
        xs, ys, es = zip(*pts)
        st = look[key]
        ax.errorbar(xs, ys, yerr=es, marker=st["marker"], ms=4, capsize=2, color=st["color"],
                    ls=st["ls"], mfc="none" if st["hollow"] else st["color"])
    if all(isinstance(r.get(x_axis), int | float) and r.get(x_axis) > 0 for r in table):
        log_axis(ax, "x", axis_kind(x_axis), sorted({r[x_axis] for r in table}))
    _finish(ax, x_axis, metric, False)
    _legend(ax, legend)
    return fig


def compute_figure(records: Sequence[dict[str, Any]], metric: str,
                   axes: Sequence[str] | str | None) -> Figure:
    """Every completed run's ``metric`` against its counted training FLOPs, log-log, drawn
    by its grid point (``styles``: hue, lightness and marker, hollow)."""
    axes = [axes] if isinstance(axes, str) else list(axes or [])
    fig, ax = _figure()
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "completed" and r.get(metric) and r.get("train_flops"):
            groups[_keys(r, axes)].append((r["train_flops"], r[metric]))
    look, legend = styles(list(groups), axes)
    for key, pts in groups.items():
        xs, ys = zip(*pts)
        st = look[key]
        ax.scatter(xs, ys, s=16, marker=st["marker"], edgecolors=st["color"],
                   facecolors="none" if st["hollow"] else st["color"])
    log_axis(ax, "x", "flops")
    _log_y(ax)
    _finish(ax, "train_flops", metric, False)
    _legend(ax, legend)
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
    ax.set_xlabel(f"difference in {label(metric)} vs "
                  f"{comparisons[0].baseline if comparisons else ''}\n"
                  f"({int(100 * (comparisons[0].level if comparisons else 0.95))}% CI; "
                  "red: Holm p < 0.05)")
    ax.grid(True, axis="x", alpha=0.25)
    return fig


def curves_figure(curves: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
                  axes: Sequence[str] | str | None, name: str = "val_loss") -> Figure:
    """Learning curves of every run in ``records``, drawn by grid point (``styles``: hue per
    the first axis, lightness and an end marker per the second, line style per the rest)."""
    axes = [axes] if isinstance(axes, str) else list(axes or [])
    fig, ax = _figure()
    by_run: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in curves:
        if c["name"] == name and c["value"] is not None:
            by_run[c["run_id"]].append((c["step"], c["value"]))
    drawn = [r for r in records if by_run.get(r["run_id"])]
    look, legend = styles([_keys(r, axes) for r in drawn], axes)
    for r in drawn:
        steps, vals = zip(*sorted(by_run[r["run_id"]]))
        st = look[_keys(r, axes)]
        ax.plot(steps, vals, color=st["color"], ls=st["ls"], lw=0.9, alpha=0.85,
                marker=st["marker"], markevery=[len(steps) - 1], ms=4,
                mfc="none" if st["hollow"] else st["color"])
    if drawn:
        _log_y(ax)
    _finish(ax, "step", name, False)
    _legend(ax, legend)
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
    log_axis(ax, "x", "flops")
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
                ax.errorbar(xs, ys, yerr=err, color=f"C{i % 10}", ls=LINESTYLES[j % 4],
                            marker="o", ms=3, capsize=2, label=f"{setting}"
                            + (f", {data_axis} = {si(d)}" if d is not None else ""))
            else:
                ax.plot(xs, [1 - g["mean"] if metric.endswith("acc") else g["mean"] for g in pts],
                        color=f"C{i % 10}", ls=LINESTYLES[j % 4], marker="o", ms=3,
                        label=f"{setting}" + (f", {data_axis} = {si(d)}" if d is not None
                                              else ""))
    if gain:
        ax.axhline(0, color="gray", lw=1)
    log_axis(ax, "x", "count")
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
        ax.scatter(p.sizes, p.losses, color=color, s=14, zorder=3,
                   label=f"C = {power_of_ten(p.budget)} FLOPs")
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
    _clip(ax, "x", [v for p in approach2.profiles for v in (*p.sizes, p.n_opt)], reach=2.0)
    log_axis(ax, "x", "count")
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
    _clip(ax, "y", [n_opt_at(c) for _, n_opt_at in lines for c in (grid[0], grid[-1])]
          + [e.n_opt_target for e in estimates], reach=3.0)
    log_axis(ax, "x", "flops")
    log_axis(ax, "y", "count")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("compute-optimal size N*")
    ax.legend(fontsize=7)
    ax.set_title("N*(C) from each approach; interval at the target compute", fontsize=9)
    return fig
