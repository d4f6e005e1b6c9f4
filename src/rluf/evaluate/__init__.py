"""Evaluation: offline scores of candidate policies, online A/B analysis, and the reward-hacking monitor."""
