"""Reports: figures and the study report, rendered from the analysis."""

from .report import Report, write_report

__all__ = ["Report", "write_report"]
