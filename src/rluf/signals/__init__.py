"""Signals: which user reaction to trust, judged by how it relates to retention."""
