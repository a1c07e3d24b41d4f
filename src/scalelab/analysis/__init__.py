"""Analysis of stored results: scaling laws, statistics, summaries. Never trains anything."""

from .laws import (
    Backtest,
    Bootstrap,
    LawFit,
    LawForm,
    backtest,
    bootstrap,
    compute_optimal,
    fit_law,
    select_form,
)
from .summary import LogLogFit, Summary, fit_loglog, summarize

__all__ = [
    "Backtest", "Bootstrap", "LawFit", "LawForm", "LogLogFit", "Summary", "backtest",
    "bootstrap", "compute_optimal", "fit_law", "fit_loglog", "select_form", "summarize",
]
