"""scalelab's joint-law fit against the plain full-grid L-BFGS-B fit, and bootstrap time.

Data: the published Chinchilla law (E = 1.69, A = 406.4, B = 410.7, alpha = 0.34,
beta = 0.28) on a 16 x 15 grid of N in [1e7, 1e10] and D in [1e8, 1e11] (240 points) with
multiplicative log-normal noise (sigma = 0.01). (a) scalelab: conditionally-linear starts on
a coarse exponent grid, the best 8 refined with L-BFGS-B. (b) the plain fit: L-BFGS-B from
all 4,500 starts of the literature's initialisation grid. Same objective (summed Huber,
delta = 1e-3, on log loss) and gradient in both. Both must reach the same optimum (every
parameter within 1e-3 relative). Figure: time(b) / time(a); goal >= 20. Also timed: a
1,000-resample bootstrap of the fit (goal <= 10 s on 2 cores; BLAS pinned to one thread),
and, when the quickstart has been run (runs/quickstart), `scalelab fit runs/quickstart --x
params,data` through the API: the joint law with its bootstrap, backtest and diagnostics
(goal <= 20 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from scalelab.analysis.laws import bootstrap, fit_law  # noqa: E402

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, 16), np.geomspace(1e8, 1e11, 15))
    N, D = N.ravel(), D.ravel()
    law = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
    return np.stack([N, D], 1), law * np.exp(np.random.default_rng(seed).normal(0, 0.01, len(N)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--quickstart", default="runs/quickstart",
                        help="a stored quickstart to time the joint fit on (skipped if absent)")
    args = parser.parse_args()
    X, y = data()
    start = time.perf_counter()
    fast = fit_law(X, y, "chinchilla")
    t_fast = time.perf_counter() - start
    print(f"scalelab fit: {t_fast:.3f} s from {fast.n_starts} refined starts", flush=True)
    start = time.perf_counter()
    grid = fit_law(X, y, "chinchilla", starts="grid")
    t_grid = time.perf_counter() - start
    print(f"full-grid fit: {t_grid:.1f} s from {grid.n_starts} starts", flush=True)
    rel = {k: abs(fast.params[k] - grid.params[k]) / abs(grid.params[k]) for k in fast.params}
    same = all(r <= 1e-3 for r in rel.values())
    print("parameters (scalelab | grid | rel. diff):")
    for k in fast.params:
        print(f"  {k:6s} {fast.params[k]:.6g} | {grid.params[k]:.6g} | {rel[k]:.1e}")
    start = time.perf_counter()
    boot = bootstrap(fast, X, y, n_resamples=args.resamples)
    t_boot = time.perf_counter() - start
    print(f"bootstrap: {args.resamples} resamples in {t_boot:.1f} s ({boot.failed} failed)")
    t_quickstart = None
    if (Path(args.quickstart) / "results.sqlite").exists():
        from scalelab.api import fit

        start = time.perf_counter()
        fit(args.quickstart, x="params,data")
        t_quickstart = time.perf_counter() - start
        print(f"scalelab fit {args.quickstart} --x params,data: {t_quickstart:.1f} s")
    else:
        print(f"{args.quickstart}: no stored quickstart; run it first to time its joint fit")
    report("full_grid_time_over_scalelab_fit_time", t_grid / t_fast, ">= 20",
           same_optimum=same, max_rel_param_diff=max(rel.values()),
           objective_scalelab=fast.objective, objective_grid=grid.objective,
           fit_s=t_fast, grid_s=t_grid, points=len(y),
           bootstrap_s=t_boot, bootstrap_resamples=args.resamples, bootstrap_goal_s=10,
           bootstrap_failed=boot.failed,
           quickstart_fit_s=t_quickstart, quickstart_fit_goal_s=20)


if __name__ == "__main__":
    main()
