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

The bootstrap resamples grid points (each with its seeds; here every grid point has one
run) and refits them all in lockstep (resampling._refine_batch). It is timed three
times (the median is bootstrap_s) and once more while another process keeps one of the
cores busy (bootstrap_busy_s): a shared 2-core machine is the setting the goal is for.
What made the one-at-a-time scipy refits this replaced take 16.1 s in a review where 5.4 s
was recorded, measured on this 2-core VM: not BLAS threads (pinned, 1 per pool, checked
inside the bootstrap; unpinned they would cost 2x under contention), not wandering warm
starts (a median of 56-65 evaluations per refit over 4 data seeds, Powell polishes in at
most 5 of 1,000), but the machine: the same code took 6.0-8.0 s alone from run to run,
6.2-9.3 s with one busy neighbour process, 9.5-12.3 s with two and 13.2 s at a load of
5.5 (other sessions' tests). The lockstep refits take 1.3-2.7 s in all of those. Also
reported: CPU seconds, the 1-minute load average before timing, the BLAS/OpenMP thread
counts inside the bootstrap, the refits left to scipy, and the lockstep iterations.

Approach 3 by variable projection (analysis.varpro), on the same 240 points: fit_varpro
(an exact NNLS solve of E, A, B at every point of a 200 x 200 (alpha, beta) grid, then
Newton) and bootstrap_varpro with 1,000 resamples (the same grid-point resamples; all
resamples' grid searches as matrix products of counts and features, their Newton
refinements in lockstep), timed three times (median: varpro_bootstrap_s, goal <= 2 s on 2
cores) and once beside a busy core (varpro_bootstrap_busy_s). Its optimum is checked
against a brute-force one: scipy's NNLS at every point of a 0.02 grid over (0, 1]^2, then of
a 0.0005 grid around the best (varpro_same_optimum: objective no higher than the brute
force's and within 0.1% of it, exponents within 1e-3). Its objective is squared relative
error, not the Huber fit's, so its parameters differ from (a) slightly; the largest relative
difference is reported (varpro_vs_huber_max_rel_param_diff).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from scalelab.analysis import bootstrap, fit_law, resampling  # noqa: E402
from scalelab.analysis.varpro import bootstrap_varpro, fit_varpro  # noqa: E402

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
    boot, timing = timed_bootstrap(fast, X, y, args.resamples)
    t_boot = float(np.median(timing["wall"]))
    print(f"bootstrap: {args.resamples} resamples in {t_boot:.2f} s (median of "
          f"{timing['wall']}; {timing['cpu']} s CPU; {boot.failed} failed; "
          f"{timing['scipy_refits']} refits left to scipy; load before {timing['load']})")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        start = time.perf_counter()
        bootstrap(fast, X, y, n_resamples=args.resamples)
        t_busy = time.perf_counter() - start
    finally:
        hog.kill()
        hog.wait()
    print(f"bootstrap with one core kept busy by another process: {t_busy:.2f} s")
    varpro = varpro_section(X, y, fast, args.resamples)
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
           bootstrap_failed=boot.failed, bootstrap_runs_s=timing["wall"],
           bootstrap_cpu_s=timing["cpu"], bootstrap_busy_s=round(t_busy, 3),
           bootstrap_load_before=timing["load"], bootstrap_threads=timing["threads"],
           bootstrap_scipy_refits=timing["scipy_refits"],
           bootstrap_lockstep_iterations=timing["iterations"],
           quickstart_fit_s=t_quickstart, quickstart_fit_goal_s=20, **varpro)


def varpro_section(X, y, huber, resamples: int) -> dict:
    """Variable projection on the same points: fit and bootstrap times (median of three,
    and once beside a busy core), its optimum against brute force, and against the Huber fit."""
    start = time.perf_counter()
    fit = fit_varpro(X, y)
    t_fit = time.perf_counter() - start
    brute = brute_force(X, y)
    same = bool(fit.objective <= brute["objective"] * (1 + 1e-9)
                and fit.objective >= brute["objective"] * (1 - 1e-3)
                and all(abs(fit.params[k] - brute[k]) <= 1e-3 for k in ("alpha", "beta")))
    print(f"variable projection: {t_fit:.3f} s ({fit.message}); objective {fit.objective:.9g} "
          f"vs brute force {brute['objective']:.9g}; at bound: {fit.at_bound or 'none'}")
    for k in fit.params:
        print(f"  {k:6s} varpro {fit.params[k]:.6g} | brute force {brute[k]:.6g} | "
              f"Huber {huber.params[k]:.6g}")
    load = round(os.getloadavg()[0], 2)
    wall, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        boot = bootstrap_varpro(fit, X, y, resamples=resamples)
        wall.append(round(time.perf_counter() - start, 3))
        cpu.append(round(time.process_time() - start_cpu, 3))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        start = time.perf_counter()
        bootstrap_varpro(fit, X, y, resamples=resamples)
        busy = time.perf_counter() - start
    finally:
        hog.kill()
        hog.wait()
    t_boot = float(np.median(wall))
    print(f"varpro bootstrap: {resamples} resamples in {t_boot:.2f} s (median of {wall}; {cpu} "
          f"s CPU; {boot.failed} failed; load before {load}); beside a busy core {busy:.2f} s")
    return {"varpro_fit_s": round(t_fit, 4), "varpro_same_optimum": same,
            "varpro_objective": fit.objective, "varpro_brute_force_objective": brute["objective"],
            "varpro_at_bound": fit.at_bound,
            "varpro_vs_huber_max_rel_param_diff": max(
                abs(fit.params[k] - huber.params[k]) / abs(huber.params[k]) for k in fit.params),
            "varpro_bootstrap_s": t_boot, "varpro_bootstrap_goal_s": 2,
            "varpro_bootstrap_runs_s": wall, "varpro_bootstrap_cpu_s": cpu,
            "varpro_bootstrap_busy_s": round(busy, 3), "varpro_bootstrap_load_before": load,
            "varpro_bootstrap_failed": boot.failed}


def brute_force(X, y) -> dict:
    """The grid optimum of variable projection's objective (sum of squared relative errors)
    with scipy's NNLS at each point: a 0.02 grid over (0, 1]^2, then 0.0005 around its best."""
    from scipy import optimize

    def search(alphas, betas):
        best = None
        for a in alphas:
            for b in betas:
                design = np.stack([np.ones(len(y)), X[:, 0] ** -a, X[:, 1] ** -b], 1) / y[:, None]
                coef, norm = optimize.nnls(design, np.ones(len(y)))
                if best is None or norm ** 2 < best["objective"]:
                    best = {"objective": norm ** 2, "E": coef[0], "A": coef[1], "B": coef[2],
                            "alpha": a, "beta": b}
        return best

    coarse = search(np.arange(0.02, 1.0001, 0.02), np.arange(0.02, 1.0001, 0.02))
    zoom = np.arange(-0.02, 0.02001, 0.0005)
    return search(coarse["alpha"] + zoom, coarse["beta"] + zoom)


def timed_bootstrap(fit, X, y, resamples: int, repeats: int = 3):
    """The bootstrap timed ``repeats`` times, with what explains its time: CPU seconds, the
    load average before, the thread pools inside it, refits left to scipy, iterations."""
    from threadpoolctl import threadpool_info

    seen: dict = {"threads": None, "scipy_refits": 0, "iterations": []}
    lockstep, scipy_refit = resampling._refine_batch, resampling._refine

    def watched_lockstep(*a, **k):
        if seen["threads"] is None:  # the pools as the refits run (pinned by bootstrap)
            seen["threads"] = sorted({(p["internal_api"], p["num_threads"])
                                      for p in threadpool_info()})
        results = lockstep(*a, **k)
        seen["iterations"] += [r.nit for r in results]
        return results

    def counted_refit(*a, **k):
        seen["scipy_refits"] += 1
        return scipy_refit(*a, **k)

    resampling._refine_batch, resampling._refine = watched_lockstep, counted_refit
    try:
        load = round(os.getloadavg()[0], 2)
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            boot = bootstrap(fit, X, y, n_resamples=resamples)
            wall.append(round(time.perf_counter() - start, 3))
            cpu.append(round(time.process_time() - start_cpu, 3))
    finally:
        resampling._refine_batch, resampling._refine = lockstep, scipy_refit
    iterations = np.array(seen["iterations"])
    return boot, {"wall": wall, "cpu": cpu, "load": load,
                  "threads": [f"{api}={n}" for api, n in seen["threads"] or []],
                  "scipy_refits": seen["scipy_refits"] // repeats,
                  "iterations": {"median": float(np.median(iterations)),
                                 "max": int(iterations.max())} if len(iterations) else None}


if __name__ == "__main__":
    main()
