"""Signals: which user reaction to trust, judged by how it relates to retention.

    from rluf.signals import signal_retention
    signal_retention("runs/demo/store", "runs/signals")   # signals.json + signals_vs_retention.png
"""

from .retention import SignalsConfig, SignalsError, analyse, render_signals, signal_retention

__all__ = ["SignalsConfig", "SignalsError", "analyse", "render_signals", "signal_retention"]
