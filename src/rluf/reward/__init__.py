"""Reward models: from (context, response) to the probability that the response gets a signal."""
