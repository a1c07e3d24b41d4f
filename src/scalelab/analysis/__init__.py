"""Analysis of stored results. Never trains anything."""

from .summary import LogLogFit, Summary, fit_loglog, summarize

__all__ = ["LogLogFit", "Summary", "fit_loglog", "summarize"]
