"""Compute-optimal allocation: the model and data sizes a fitted joint law L(N, D) says
minimise loss at a given compute budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from scipy import optimize


def compute_optimal(params: Mapping[str, float], budgets,
                    flops: Callable[[float, float], float] | None = None,
                    flops_per_param_sample: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """N_opt(C), D_opt(C) minimising E + A/N^alpha + B/D^beta subject to flops(N, D) = C.

    With C = k·N·D (k = ``flops_per_param_sample``: 6 for a transformer's forward and
    backward per token, or the ratio the runs' counted FLOPs show) the optimum is closed-form:
    N_opt = G·(C/k)^(beta/(alpha+beta)), G = (alpha·A / (beta·B))^(1/(alpha+beta)).
    A user FLOPs model (increasing in N and D) is solved numerically.
    """
    A, B, alpha, beta = params["A"], params["B"], params["alpha"], params["beta"]
    C = np.atleast_1d(np.asarray(budgets, dtype=float))
    if alpha <= 0 or beta <= 0:  # loss does not fall with N or D: no finite optimum
        return np.full(len(C), np.nan), np.full(len(C), np.nan)
    if flops is None:
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        k = flops_per_param_sample
        n_opt = G * (C / k) ** (beta / (alpha + beta))
        return n_opt, C / k / n_opt
    n_out, d_out = [], []
    for c in C:
        def d_for(log_n: float, c: float = c) -> float:
            return math.exp(optimize.brentq(
                lambda log_d: math.log(flops(math.exp(log_n), math.exp(log_d))) - math.log(c),
                -50, 100))

        def loss_at(log_n: float, d_for=d_for) -> float:
            return A * math.exp(-alpha * log_n) + B * d_for(log_n) ** -beta

        best = optimize.minimize_scalar(loss_at, bounds=(0.0, math.log(c)), method="bounded",
                                        options={"xatol": 1e-10})
        n_out.append(math.exp(best.x))
        d_out.append(d_for(best.x))
    return np.array(n_out), np.array(d_out)
