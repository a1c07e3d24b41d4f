"""Compute-optimal N* far beyond the runs: naive Approach 2 against scalelab's recommended
estimate, on IsoFLOP grids whose centre drifts off the optimum (Czech et al. 2026's setting).

The setting is Czech et al.'s, taken from their code (github.com/Open-Athena/
scaling-law-analysis at commit 3e0656ee3dce1a2c89aa67691920f5eb9d30f0fc; paths under
src/scaling_law_analysis/, "file:line"):
- ground truth: Chinchilla's published law L = E + A/N^α + B/D^β, E = 1.69, A = 406.4,
  B = 410.7, α = 0.34, β = 0.28 (chinchilla.py:91-97 CHINCHILLA_PARAMS, also
  experiments/common.py:163), its optimum N*(C) = G·(C/6)^(β/(α+β)),
  G = (αA/(βB))^(1/(α+β)) (chinchilla.py:134-149, 173-187);
- budgets 1e17, 1e18, 1e19, 1e20, 1e21 FLOPs (experiments/common.py:27 COMPUTE_BUDGETS);
- 15 sizes per budget (experiments/common.py:42 N_POINTS), log-spaced over ±0.3 decades
  around the grid's centre, i.e. ±2× (experiments/common.py:34 and :39, LOG_RANGES[0] =
  0.3, the "narrow" width of experiments/common.py:192-194; chinchilla.py:340-343
  isoflop_sample), data D = C/(6N) (chinchilla.py:346);
- the drift, deterministic in the budget: the centre is log10 N*(C) − drift·f(C),
  f = (log10 C − log10 C_min)/(log10 C_max − log10 C_min), 0 at the smallest budget and 1 at
  the largest, so every other budget's grid sits below its optimum by a fixed amount
  (chinchilla.py:296-313 compute_center_offset, :340); drift = 0.2 and 0.4 decades, their
  two drift settings (experiments/common.py:180-188 BIAS_CONFIGS "drift_0.2", "drift_0.4",
  centre scale 1), both run here and the goal asked of both;
- the target, 1e23 = 100× the largest budget, lies in their extrapolation range 1e22-1e25
  (experiments/common.py:216 EXTRAPOLATION_BUDGETS);
- naive Approach 2 is their fit_approach2 (chinchilla.py:1054-1122): per budget a parabola
  of L in log10 N by np.polyfit (chinchilla.py:720), its vertex 10^(−b/2a) (:731-733), a
  curvature below 1e-10 an error, so that study gives no answer (:723-729); then
  log10 N* = a·log10 C + c by np.polyfit (:668-693, used at :525-526). Vectorised here:
  each budget's parabolas for all studies in one polyfit, then every study's line in one;
  checked against a per-study loop on the first studies.
Noise is the issue's, not theirs: each loss is multiplied by exp(ε), ε ~ Normal(0, 0.005)
(0.5%, independent per run and study). Czech et al.'s drift experiments are noise-free
(experiments/exp3_drift_sensitivity.py, exp4_extrapolation_error.py); their noisy one adds
Normal noise in loss units, σ = 0.05-0.2 (experiments/exp7_exponent_inference.py:134-135,
:1116) in another setting (α/β = 3, ±8×, drift log10 3; exp7:1098, :1111, :1113).

scalelab's recommended estimate: varpro.fit_varpro (Approach 3 by variable projection) on
all 75 points of a study, then allocation.compute_optimal at 1e23 (C = 6·N·D). That this is
what scalelab recommends is checked on the first --check studies per drift through the full
path, approaches.compute_optimal_answers(..., target=1e23, n_resamples=50).recommended: the
fraction recommending variable projection and the largest difference from the plain fit.

Measured per drift, over --seeds simulated studies (default 1,000; the same noise draws at
both drifts), each estimator's relative error of N* at 1e23:
- systematic error (the goal's quantity): median over studies of N*_est, relative to the
  true N*, with the median's distribution-free 95% interval (order statistics): the bias that does not average
  out however many studies one runs;
- typical error: median over studies of |N*_est/N* − 1|: what one study gets, mostly noise;
- noise-free error: the estimator on the exact losses (Approach 2's bias alone).
Goal (at each drift): |systematic error of the recommended estimate| <= 2% and <= 1/5 of
|naive Approach 2's systematic error|. value = the larger |systematic error| of the
recommended estimate over the two drifts; met = the goal holds at both. For context, naive
Approach 2's systematic error at 0.1% and 0.2% noise (cheap: vectorised) shows how the noise
itself moves its median away from its noise-free bias.

Result (10,000 studies per drift; naive also over 100,000; 2-core x86_64 VM shared with
other sessions: 339 s at a 1-minute load of 3.2, 484 s at 4.4 (BENCHMARKS.md's row); nearly
all of it the 2 x 10,000 variable projection fits, 13-19 ms each, and the 2 x 100 full-path
checks, ~0.3 s each; the vectorised naive Approach 2 takes < 0.4 s for 10,000 studies): the
goal is met at both drifts, also at the 95% intervals' unfavourable ends.
  drift 0.2: recommended systematic +0.23% (95% -0.07% to +0.48%), naive +4.70% (+4.42% to
    +4.99%; 6.8% of studies give no answer); typical single-study |error| 8.4% vs 20.7%;
    noise-free -1.5e-12 vs -0.83%.
  drift 0.4: recommended +0.23% (-0.03% to +0.53%), naive +4.65% (+4.06% to +5.18%; 5.7% no
    answer); typical 8.6% vs 34.7%; noise-free -6e-14 vs -5.71%.
Read with care:
- One study's error is not within 2%: the recommended estimate's typical |error| is 8.4-8.6%
  at 0.5% noise (the goal is about the systematic error; the typical one is ~2.4-4x smaller
  than naive's).
- Naive Approach 2's systematic error at 0.5% noise is mostly the noise's, not the drift's:
  its parabola vertices are ratios of noisy coefficients, and their skew moves the median to
  about +4.7% at both drifts, while its drift bias alone (noise-free) is -0.83% at drift 0.2
  and -5.71% at 0.4; at 0.1% and 0.2% noise it is -0.55%, +0.35% (drift 0.2) and -5.21%,
  -3.74% (drift 0.4). Against the noise-free bias alone the recommended estimate's +0.23%
  would be within 1/5 at drift 0.4 (1.14%) but not at drift 0.2 (0.17%).
- Naive's median leaves out the studies it gives no answer for (a parabola opening
  downward, Czech et al.'s FitError): ~6% of them.
- 1,000 studies are not enough to settle the ratio: the recommended estimate's median is
  then uncertain by about ±1% (the first 100 studies alone give -2.3% and -2.7%).
- The full path recommended variable projection in 99 of 100 studies at each drift; at drift
  0.2 one study got Approach 2 (16% away); at drift 0.4 one study raised OverflowError in
  scalelab.analysis.isoflop.fit_profile (math.exp of a bootstrap vertex percentile).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from scalelab.analysis.allocation import compute_optimal  # noqa: E402

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BUDGETS = np.array([1e17, 1e18, 1e19, 1e20, 1e21])
TARGET = 100 * BUDGETS[-1]
N_POINTS, LOG_RANGE, NOISE = 15, 0.3, 0.005
DRIFTS = (0.2, 0.4)
MIN_CURVATURE = 1e-10


def true_n_opt(C) -> np.ndarray:
    return compute_optimal(TRUE, C)[0]


def grid(drift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, C, exact L), each (budgets, N_POINTS): Czech et al.'s isoflop_sample with
    compute_center_offset's linear drift."""
    log_c = np.log10(BUDGETS)
    fraction = (log_c - log_c.min()) / (log_c.max() - log_c.min())
    centre = np.log10(true_n_opt(BUDGETS)) - drift * fraction
    N = 10.0 ** (centre[:, None] + np.linspace(-LOG_RANGE, LOG_RANGE, N_POINTS)[None, :])
    C = np.broadcast_to(BUDGETS[:, None], N.shape)
    D = C / (6 * N)
    L = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
    return N, D, C, L


def naive_approach2(N: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Czech et al.'s fit_approach2, every study at once: L (studies, budgets, points) on the
    sizes N (budgets, points); N* at TARGET per study, NaN where a parabola has curvature
    below 1e-10 (their FitError)."""
    log_n_opt = np.empty(L.shape[:2])
    ok = np.ones(len(L), dtype=bool)
    for b in range(len(BUDGETS)):
        a2, a1, _ = np.polyfit(np.log10(N[b]), L[:, b, :].T, 2)
        ok &= a2 >= MIN_CURVATURE
        log_n_opt[:, b] = -a1 / (2 * np.where(a2 >= MIN_CURVATURE, a2, 1.0))
    slope, intercept = np.polyfit(np.log10(BUDGETS), log_n_opt.T, 1)
    with np.errstate(over="ignore"):  # a noise-driven slope can send N* past float range
        return np.where(ok, 10.0 ** (slope * np.log10(TARGET) + intercept), np.nan)


def naive_loop(N: np.ndarray, L: np.ndarray) -> float:
    """The same, one study with a loop, as their code runs it (the vectorised check)."""
    n_opts = []
    for b in range(len(BUDGETS)):
        a2, a1, _ = np.polyfit(np.log10(N[b]), L[b], 2)
        if a2 < MIN_CURVATURE:
            return float("nan")
        n_opts.append(10 ** (-a1 / (2 * a2)))
    slope, intercept = np.polyfit(np.log10(BUDGETS), np.log10(n_opts), 1)
    return float(10 ** (slope * np.log10(TARGET) + intercept))


def recommended(N: np.ndarray, D: np.ndarray, L: np.ndarray) -> float:
    """scalelab's recommended estimate on one study: variable projection, then the law's
    optimum at TARGET."""
    from scalelab.analysis.varpro import fit_varpro

    fit = fit_varpro(np.stack([N.ravel(), D.ravel()], 1), L.ravel(), diagnostics=False)
    return float(compute_optimal(fit.params, TARGET)[0][0])


def full_path(N, D, C, L) -> tuple[str, float]:
    """(the approach scalelab recommends, its N* at TARGET) through compute_optimal_answers;
    ("raised <error>", NaN) where it raises."""
    from scalelab.analysis.approaches import compute_optimal_answers

    try:
        result = compute_optimal_answers(N.ravel(), D.ravel(), C.ravel(), L.ravel(),
                                         target=TARGET, n_resamples=50)
    except Exception as exc:  # noqa: BLE001 - counted and reported, not hidden
        return f"raised {type(exc).__name__}: {exc}", float("nan")
    rec = result.recommended
    return (result.agreement.recommended or "none",
            float(rec.n_opt_target) if rec is not None else float("nan"))


def summary(est: np.ndarray, truth: float) -> dict:
    """Systematic error (relative error of the median estimate, with the median's
    distribution-free 95% interval: the order statistics n/2 ± 1.96·√n/2), typical error
    (median |error|), studies without an answer."""
    err = est / truth - 1
    good = err[np.isfinite(err)]
    n, ordered = len(good), np.sort(good)
    half = 1.96 * np.sqrt(n) / 2  # the median's distribution-free 95% interval: order stats
    lo = ordered[max(int(np.floor(n / 2 - half)), 0)]
    hi = ordered[min(int(np.ceil(n / 2 + half)), n - 1)]
    return {"systematic": float(np.median(good)), "systematic_95": [float(lo), float(hi)],
            "typical": float(np.median(np.abs(good))), "no_answer": int(len(err) - len(good))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000,
                        help="simulated studies per drift (1,000 leaves the recommended "
                        "estimate's median uncertain by about ±1%%: wider than naive/5)")
    parser.add_argument("--naive-seeds", type=int, default=100_000,
                        help="studies per drift for naive Approach 2 alone (vectorised, cheap)")
    parser.add_argument("--check", type=int, default=100,
                        help="studies per drift also run through compute_optimal_answers")
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 2)
    truth = float(true_n_opt(TARGET)[0])
    many = max(args.naive_seeds, args.seeds)
    noise = np.random.default_rng(0).normal(0, NOISE, (many, len(BUDGETS), N_POINTS))
    print(f"true N* at {TARGET:.0e} FLOPs: {truth:.5g}; {args.seeds} studies per drift, "
          f"noise {NOISE:.1%}, grids ±{10 ** LOG_RANGE:.3g}x, {N_POINTS} sizes x "
          f"{len(BUDGETS)} budgets", flush=True)
    results, start = {}, time.perf_counter()
    for drift in DRIFTS:
        N, D, C, exact = grid(drift)
        L = exact[None] * np.exp(noise[:args.seeds])
        t0 = time.perf_counter()
        naive = naive_approach2(N, L)
        t_naive = time.perf_counter() - t0
        naive_many = naive_approach2(N, exact[None] * np.exp(noise))
        loop = np.array([naive_loop(N, L[s]) for s in range(20)])
        assert np.allclose(naive[:20], loop, rtol=1e-9, equal_nan=True), "vectorised != loop"
        t0 = time.perf_counter()
        rec = np.array([recommended(N, D, L[s]) for s in range(args.seeds)])
        t_rec = time.perf_counter() - t0
        checks = [full_path(N, D, C, L[s]) for s in range(min(args.check, args.seeds))]
        names = [name for name, _ in checks]
        via_varpro = (sum("variable projection" in n for n in names) / len(names)
                      if names else None)
        raised = sorted({n for n in names if n.startswith("raised")})
        n_raised = sum(n.startswith("raised") for n in names)
        full = np.array([v for _, v in checks])
        full_diff = float(np.nanmax(np.abs(full / rec[:len(full)] - 1))) if len(full) else 0.0
        check_sys = {"full_path": float(np.nanmedian(full)) / truth - 1 if len(full) else None,
                     "variable_projection": float(np.median(rec[:len(full)])) / truth - 1
                     if len(full) else None}
        clean = {"naive": float(naive_approach2(N, exact[None])[0]) / truth - 1,
                 "recommended": recommended(N, D, exact) / truth - 1}
        lower = {f"{s:.1%}": summary(naive_approach2(
            N, exact[None] * np.exp(noise * (s / NOISE))), truth)["systematic"]
            for s in (0.001, 0.002)}
        row = {"naive": summary(naive, truth), "recommended": summary(rec, truth),
               "naive_many": summary(naive_many, truth),
               "noise_free": clean, "naive_systematic_lower_noise": lower,
               "full_path_recommends_varpro": via_varpro, "full_path_checked": len(checks),
               "full_path_max_rel_diff": full_diff, "full_path_raised": n_raised,
               "full_path_errors": raised, "full_path_systematic": check_sys,
               "seconds": {"naive": round(t_naive, 3), "recommended": round(t_rec, 1)}}
        r_sys, n_sys = abs(row["recommended"]["systematic"]), abs(row["naive_many"]["systematic"])
        row["met"] = bool(r_sys <= 0.02 and r_sys <= n_sys / 5)
        r_lo, r_hi = row["recommended"]["systematic_95"]
        n_lo, n_hi = row["naive_many"]["systematic_95"]
        r_far = max(abs(r_lo), abs(r_hi))
        n_near = 0.0 if n_lo <= 0 <= n_hi else min(abs(n_lo), abs(n_hi))
        row["met_95"] = bool(r_far <= 0.02 and r_far <= n_near / 5)
        results[drift] = row
        print(f"drift {drift} decades (largest budget's grid centred {10 ** drift:.2f}x below "
              f"its N*):")
        for name in ("naive", "recommended"):
            s = row[name]
            print(f"  {name:11s} systematic error {s['systematic']:+.2%} (95% "
                  f"{s['systematic_95'][0]:+.2%} to {s['systematic_95'][1]:+.2%}); typical "
                  f"single-study |error| {s['typical']:.2%}; noise-free {clean[name]:+.3g}; "
                  f"no answer in {s['no_answer']}")
        m = row["naive_many"]
        print(f"  naive over {many} studies: systematic error {m['systematic']:+.2%} (95% "
              f"{m['systematic_95'][0]:+.2%} to {m['systematic_95'][1]:+.2%}); typical "
              f"{m['typical']:.2%}; no answer in {m['no_answer']}")
        print(f"  naive systematic error at lower noise ({many} studies): "
              + ", ".join(f"{k}: {v:+.2%}" for k, v in lower.items()))
        if checks:
            print(f"  full recommended path (compute_optimal_answers) on the first "
                  f"{len(checks)} studies: variable projection recommended in {via_varpro:.0%}, "
                  f"raised in {n_raised}{' (' + '; '.join(raised) + ')' if raised else ''}; "
                  f"largest difference from the plain fit {full_diff:.2g}; median error on "
                  f"these studies: full path {check_sys['full_path']:+.2%}, variable "
                  f"projection {check_sys['variable_projection']:+.2%}")
        print(f"  time: naive {t_naive:.3f} s for {args.seeds} studies (vectorised), "
              f"recommended {t_rec:.1f} s; goal {'met' if row['met'] else 'NOT met'} "
              f"(|{row['recommended']['systematic']:.2%}| <= 2% and <= "
              f"|{row['naive_many']['systematic']:.2%}|/5 = {n_sys / 5:.2%}); at the 95% "
              f"intervals' unfavourable ends ({r_far:.2%} vs {n_near:.2%}/5) "
              f"{'met' if row['met_95'] else 'NOT met'}", flush=True)
    elapsed = time.perf_counter() - start
    worst = max(DRIFTS, key=lambda d: abs(results[d]["recommended"]["systematic"]))
    value = abs(results[worst]["recommended"]["systematic"])
    met = all(results[d]["met"] for d in DRIFTS)
    met_95 = all(results[d]["met_95"] for d in DRIFTS)
    missed = ", ".join(str(d) for d in DRIFTS if not results[d]["met"])
    print(f"goal {'met at both drifts' if met else 'NOT met (missed at drift ' + missed + ')'}; "
          f"{elapsed:.0f} s; at the 95% intervals' unfavourable ends: "
          f"{'met' if met_95 else 'NOT met'}")

    def r4(x):
        return round(x, 5)

    report("isoflop_n_opt_systematic_error", value, "<= 0.02 and <= naive/5", met=met,
           worst_drift=worst,
           naive_systematic={str(d): r4(results[d]["naive_many"]["systematic"]) for d in DRIFTS},
           naive_systematic_same_seeds={str(d): r4(results[d]["naive"]["systematic"])
                                        for d in DRIFTS},
           recommended_systematic={str(d): r4(results[d]["recommended"]["systematic"])
                                   for d in DRIFTS},
           systematic_95={str(d): {k: [r4(v) for v in results[d][k]["systematic_95"]]
                                   for k in ("naive_many", "recommended")} for d in DRIFTS},
           typical={str(d): {k: r4(results[d][k]["typical"]) for k in ("naive", "recommended")}
                    for d in DRIFTS},
           noise_free={str(d): {k: float(f"{v:.3g}") for k, v in results[d]["noise_free"].items()}
                       for d in DRIFTS},
           naive_systematic_lower_noise={str(d): {k: r4(v) for k, v in
                                                   results[d]["naive_systematic_lower_noise"]
                                                   .items()} for d in DRIFTS},
           naive_no_answer={str(d): results[d]["naive_many"]["no_answer"] for d in DRIFTS},
           met_per_drift={str(d): results[d]["met"] for d in DRIFTS},
           met_at_95_ends=met_95,
           full_path_recommends_varpro={str(d): results[d]["full_path_recommends_varpro"]
                                        for d in DRIFTS},
           full_path_max_rel_diff={str(d): float(f"{results[d]['full_path_max_rel_diff']:.2g}")
                                   for d in DRIFTS},
           full_path_raised={str(d): results[d]["full_path_raised"] for d in DRIFTS},
           full_path_systematic={str(d): {k: None if v is None else r4(v) for k, v in
                                          results[d]["full_path_systematic"].items()}
                                 for d in DRIFTS},
           full_path_checked=min(args.check, args.seeds),
           seeds=args.seeds, naive_seeds=many, noise=NOISE, grid_width=round(10 ** LOG_RANGE, 3),
           points_per_budget=N_POINTS, budgets=[float(b) for b in BUDGETS], target=TARGET,
           seconds=round(elapsed, 1), load_before=load_before,
           seconds_per_drift={str(d): results[d]["seconds"] for d in DRIFTS})


if __name__ == "__main__":
    main()
