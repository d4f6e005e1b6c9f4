"""The HTML report of a run directory: aggregates only, small cells suppressed (rluf.report.html)."""
