"""Analysis of stored results: scaling laws, statistics, summaries. Never trains anything."""

from .allocation import compute_optimal
from .fitting import Backtest, LawFit, backtest, choose_form, fit_law
from .forms import LawForm
from .isoflop import Agreement, Approach2, ApproachEstimate, Profile, agreement, fit_approach2
from .resampling import Bootstrap, bootstrap
from .summary import Summary, summarize
from .varpro import bootstrap_varpro, fit_varpro

__all__ = [
    "Agreement", "Approach2", "ApproachEstimate", "Backtest", "Bootstrap", "LawFit", "LawForm",
    "Profile", "Summary", "agreement", "backtest", "bootstrap", "bootstrap_varpro",
    "choose_form", "compute_optimal", "fit_approach2", "fit_law", "fit_varpro", "summarize",
]
