"""Analysis of stored results: scaling laws, statistics, summaries. Never trains anything."""

from .allocation import compute_optimal
from .fitting import Backtest, LawFit, backtest, choose_form, fit_law
from .forms import LawForm
from .resampling import Bootstrap, bootstrap
from .summary import LogLogFit, Summary, fit_loglog, summarize

__all__ = [
    "Backtest", "Bootstrap", "LawFit", "LawForm", "LogLogFit", "Summary", "backtest",
    "bootstrap", "compute_optimal", "fit_law", "fit_loglog", "choose_form", "summarize",
]
