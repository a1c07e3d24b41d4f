"""How big a model for this compute? Every approach the runs allow, side by side.

Chinchilla trusted its answer because three approaches roughly agreed; this module asks the
same of a study's runs (or of a user's CSV): Approach 1 (the envelope of learning curves,
``envelope.py``) where the schedules make it meaningful, Approach 2 (IsoFLOP parabolas,
``isoflop.py``) where the runs have budgets, and Approach 3 (the joint law L(N, D) fitted two
ways: variable projection, ``varpro.py``, and the Huber fit of ``fitting.py``). Each becomes
one row (a of N* ∝ C^a, b of D* ∝ C^b, N* at the target compute, with intervals) and
:func:`isoflop.agreement` gives the verdict and the approach to use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .diagnostics import Diagnostic
from .envelope import Approach1, Curve, Omitted, fit_approach1
from .fitting import LawFit, fit_law
from .isoflop import Agreement, Approach2, ApproachEstimate, agreement, fit_approach2
from .resampling import Bootstrap, bootstrap, percentile_interval
from .varpro import bootstrap_varpro, fit_varpro

#: Without a stated target, N* is quoted at this multiple of the largest budget.
DEFAULT_TARGET_FACTOR = 10.0
#: Names of the rows, as the report, the CLI and ``scalelab next`` spell them.
APPROACH_1, APPROACH_2 = "Approach 1 (envelope)", "Approach 2 (IsoFLOP parabolas)"
APPROACH_3 = "Approach 3 (L(N, D), {})"


@dataclass
class JointFit:
    """One fit of L = E + A/N^α + B/D^β with its bootstrap, as an approach."""

    name: str          # "variable projection" or "Huber"
    fit: LawFit
    boot: Bootstrap
    x: np.ndarray = field(repr=False)  # the points it was fitted on: (N, D) rows ...
    y: np.ndarray = field(repr=False)  # ... and their losses

    def estimate(self, target: float, k: float) -> ApproachEstimate:
        """The law's closed-form optimum: N* = G·(C/k)^a with a = β/(α+β), b = α/(α+β)."""
        draws = np.array([_optimum(s, target, k) for s in self.boot.samples]).reshape(-1, 3)
        a, b, n = _optimum(self.fit.params, target, k)
        a_iv, b_iv, n_iv = (percentile_interval(draws[:, i], self.boot.level) for i in range(3))
        return ApproachEstimate(APPROACH_3.format(self.name), a, a_iv, b, b_iv, n, n_iv,
                                tuple(self.fit.diagnostics))

    def to_dict(self) -> dict[str, Any]:
        label, reason = self.fit.verdict
        return {"name": self.name, "params": self.fit.params,
                "intervals": {k: list(v) for k, v in self.fit.intervals.items()},
                "verdict": label, "verdict_reason": reason,
                "diagnostics": [d.to_dict() for d in self.fit.diagnostics]}


@dataclass
class ComputeOptimal:
    """Every approach's answer at ``target`` compute, their agreement and the choice."""

    target: float
    k: float                              # FLOPs per parameter per example (token), measured
    approach2: Approach2 | None
    joint: list[JointFit]                 # variable projection first, then Huber
    chosen_joint: str                     # which joint fit stands for Approach 3 ...
    chosen_joint_why: str                 # ... and why
    agreement: Agreement
    notes: list[str] = field(default_factory=list)  # approaches left out, and why
    approach1: Approach1 | None = None    # when the runs' schedules allow it
    x_names: tuple[str, str] = ("N", "D")  # the size and data columns it was fitted on

    @property
    def recommended(self) -> ApproachEstimate | None:
        return next((e for e in self.agreement.estimates
                     if e.name == self.agreement.recommended), None)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "flops_per_param_example": self.k,
                "approach1": self.approach1.to_dict() if self.approach1 else None,
                "approach2": self.approach2.to_dict() if self.approach2 else None,
                "approach3": [j.to_dict() for j in self.joint],
                "approach3_chosen": self.chosen_joint, "approach3_why": self.chosen_joint_why,
                "agreement": self.agreement.to_dict(), "notes": self.notes}


def _optimum(params, target: float, k: float) -> tuple[float, float, float]:
    alpha, beta = params["alpha"], params["beta"]
    if not (alpha > 0 and beta > 0 and params["A"] > 0 and params["B"] > 0):
        return math.nan, math.nan, math.nan
    g = (alpha * params["A"] / (beta * params["B"])) ** (1 / (alpha + beta))
    a = beta / (alpha + beta)
    return a, 1 - a, g * (target / k) ** a


def _joint_fits(X: np.ndarray, L: np.ndarray, n_resamples: int, seed: int) -> list[JointFit]:
    out = []
    varpro = fit_varpro(X, L)
    out.append(JointFit("variable projection", varpro,
                        bootstrap_varpro(varpro, X, L, resamples=n_resamples, seed=seed), X, L))
    huber = fit_law(X, L, form="chinchilla")
    out.append(JointFit("Huber", huber, bootstrap(huber, X, L, n_resamples=n_resamples,
                                                  seed=seed), X, L))
    return out


def _choose_joint(joint: list[JointFit]) -> tuple[JointFit, str]:
    """Variable projection unless it is not a law where the Huber fit is: its inner solve
    is exact, so it has no starting point to depend on (Czech et al. 2026)."""
    varpro, huber = joint
    if varpro.fit.verdict[0] == "not a law" and huber.fit.verdict[0] != "not a law":
        return huber, ("the Huber fit: variable projection is not a law here ("
                       f"{varpro.fit.verdict[1]})")
    return varpro, ("variable projection: for each (α, β) it solves E, A, B exactly, so the "
                    "answer depends on no starting point; the Huber fit is shown beside it")


def compute_optimal_answers(N, D, C, L, groups=None, *, target: float | None = None,
                            n_resamples: int = 1000, seed: int = 0,
                            curves: Sequence[Curve] | None = None,
                            k: float | None = None) -> ComputeOptimal:
    """Approaches 2 and 3 (and 1, from the runs' learning ``curves`` when their schedules
    allow it) on runs of size N, data D, budget C (None or NaN: runs without a budget, e.g.
    a plain grid; Approach 2 then is left out with a note) and loss L; N* quoted at
    ``target`` (default: 10x the largest budget, or of the largest N·D·k). ``k``, FLOPs per
    parameter per example (token): measured from the budgets, else given (e.g. from the
    runs' counted FLOPs), else 6 (a dense transformer's forward and backward)."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    C = np.full(len(N), np.nan) if C is None else np.asarray(C, dtype=float)
    budgeted = np.isfinite(C)
    if budgeted.any():
        k = float(np.median(C[budgeted] / (N[budgeted] * D[budgeted])))
    k = 6.0 if k is None else float(k)
    largest = float(np.max(C[budgeted])) if budgeted.any() else float(np.max(k * N * D))
    target = DEFAULT_TARGET_FACTOR * largest if target is None else float(target)
    joint = _joint_fits(np.stack([N, D], 1), L, n_resamples, seed)
    chosen, why = _choose_joint(joint)
    notes: list[str] = []
    envelope = fit_approach1(curves, target=target, flops_per_param=k,
                             n_resamples=n_resamples, seed=seed) if curves else \
        Omitted("Approach 1 is left out: no learning curves were given.")
    if isinstance(envelope, Omitted):
        notes.append(envelope.reason)
        envelope = None
    approach2 = None
    if budgeted.sum() >= 3:
        alpha, beta = chosen.fit.params["alpha"], chosen.fit.params["beta"]
        approach2 = fit_approach2(N[budgeted], D[budgeted], C[budgeted], L[budgeted],
                                  None if groups is None else np.asarray(groups)[budgeted],
                                  target=target, alpha=alpha, beta=beta,
                                  n_resamples=n_resamples, seed=seed)
    else:
        notes.append("Approach 2 is left out: the runs have no IsoFLOP budgets (declare "
                     "`design: {isoflop: ...}` in the study, or give a budget column).")
    estimates = [envelope.estimate(target, APPROACH_1)] if envelope is not None else []
    if approach2 is not None:
        estimates.append(approach2.estimate(target, APPROACH_2))
    estimates.append(chosen.estimate(target, k))
    return ComputeOptimal(target, k, approach2, joint, chosen.name, why, agreement(estimates),
                          notes, envelope)


def estimate_rows(result: ComputeOptimal) -> list[list[Any]]:
    """The agreement table's rows: approach, a [CI], b [CI], N* at the target [CI], verdict."""
    def ci(pair: Sequence[float]) -> str:
        return "—" if not all(map(math.isfinite, pair)) else f"[{pair[0]:.3g}, {pair[1]:.3g}]"

    rows = []
    for e in result.agreement.estimates:
        worst = _worst(e.diagnostics)
        rows.append([e.name, f"{e.a:.3g} {ci(e.a_interval)}", f"{e.b:.3g} {ci(e.b_interval)}",
                     f"{e.n_opt_target:.3g} {ci(e.n_opt_target_interval)}", worst])
    return rows


def compute_optimal_lines(result: ComputeOptimal) -> list[tuple[str, Any]]:
    """(name, N*(C)) of every approach with an answer, for the figure of N* against C."""
    lines = []
    if result.approach1 is not None:
        lines.append((APPROACH_1, result.approach1.n_opt_at))
    if result.approach2 is not None:
        lines.append((APPROACH_2, result.approach2.n_opt_at))
    chosen = next(j for j in result.joint if j.name == result.chosen_joint)
    lines.append((APPROACH_3.format(chosen.name),
                  lambda c: _optimum(chosen.fit.params, c, result.k)[2]))
    return lines


def _worst(diagnostics: Sequence[Diagnostic]) -> str:
    severities = {d.severity for d in diagnostics}
    return "not a law" if "error" in severities else \
        "use with care" if "warning" in severities else "trustworthy"


#: Columns of the data a run consumed, in order of preference (tokens for language models).
CONSUMED = ("tokens_seen", "samples_seen")


def study_answers(selected: Sequence[dict[str, Any]], size: str, metric: str,
                  design: dict[str, Any] | None, data_setting: str,
                  curves: Sequence[dict[str, Any]] = (), n_resamples: int = 1000,
                  target: float | None = None) -> ComputeOptimal | str:
    """The approaches on a stored study's per-shape optimum runs, or why they do not apply
    (a sentence). An IsoFLOP design gives budgets; otherwise the study's ``analysis.data``
    must be a consumed amount (samples_seen or tokens_seen) for C = k·N·D to mean compute."""
    done = [r for r in selected if r.get("status") == "completed"
            and all(r.get(c) is not None for c in (size, metric, "train_flops"))]
    consumed = next((c for c in CONSUMED if done and all(r.get(c) for r in done)), None)
    if not design and data_setting not in CONSUMED:
        return ("Compute-optimal approaches are left out: the runs' data axis is not the data "
                "they consumed (set `analysis.data: samples_seen` or `tokens_seen`), or use an "
                "IsoFLOP design (`design: {isoflop: ...}`).")
    if consumed is None or len(done) < 5:
        return (f"Compute-optimal approaches are left out: {len(done)} completed run(s) with "
                "their size, data consumed and FLOPs (at least 5 needed).")
    N = np.array([r[size] for r in done], dtype=float)
    D = np.array([r[consumed] for r in done], dtype=float)
    C = np.array([r["budget"] if design else np.nan for r in done], dtype=float)
    L = np.array([r[metric] for r in done], dtype=float)
    groups = [f"{r.get('budget')}|{r[size]}" for r in done]
    k = float(np.median([r["train_flops"] / (r[size] * r[consumed]) for r in done]))
    result = compute_optimal_answers(N, D, C, L, groups, target=target,
                                     n_resamples=n_resamples,
                                     curves=_curves(done, size, consumed, curves), k=k)
    result.x_names = (size, consumed)
    return result


def _curves(done: Sequence[dict[str, Any]], size: str, consumed: str,
            rows: Sequence[dict[str, Any]]) -> list[Curve]:
    """Each run's validation-loss curve with the compute and data spent at each point (a
    run's FLOPs and data grow linearly with its steps); runs that stopped early are left
    out, since they stopped before their schedule's end."""
    by_run: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row["name"] == "val_loss":
            by_run.setdefault(row["run_id"], []).append((row["step"], row["value"]))
    out = []
    for r in done:
        points = sorted(by_run.get(r["run_id"], []))
        if not points or r.get("stopped_early") or not r.get("steps"):
            continue
        steps = np.array([s for s, _ in points], dtype=float) / r["steps"]
        out.append(Curve(float(r[size]), steps * r["train_flops"], [v for _, v in points],
                         r.get("train.schedule", "cosine"), steps * r[consumed], r.get("seed")))
    return out
