"""Former home of the scaling-law code, kept importable for scripts that still name it:
forms are in :mod:`.forms`, fits and backtests in :mod:`.fitting`, bootstrap intervals in
:mod:`.resampling`, compute-optimal allocation in :mod:`.allocation`. Import from those."""

from .allocation import compute_optimal
from .fitting import (
    DEFAULT_HOLDOUT,
    Backtest,
    LawFit,
    Loss,
    _converged,
    _refine,
    backtest,
    distinct_points,
    fit_law,
    holdout_mask,
    objective,
    parse_holdout,
    select_form,
)
from .forms import (
    EXPONENTS,
    BrokenPower,
    Chinchilla,
    Kaplan,
    LawForm,
    Power,
    PowerOffset,
    form_settings,
    get_form,
)
from .resampling import (
    LOCKSTEP_CELLS,
    Bootstrap,
    _refine_batch,
    bootstrap,
    grid_points,
    resample_grid_points,
)

__all__ = [
    "DEFAULT_HOLDOUT", "EXPONENTS", "LOCKSTEP_CELLS", "Backtest", "Bootstrap", "BrokenPower",
    "Chinchilla", "Kaplan", "LawFit", "LawForm", "Loss", "Power", "PowerOffset", "_converged",
    "_refine", "_refine_batch", "backtest", "bootstrap", "compute_optimal", "distinct_points",
    "fit_law", "form_settings", "get_form", "grid_points", "holdout_mask", "objective",
    "parse_holdout", "resample_grid_points", "select_form",
]
