"""Metrics: likelihood bounds (ELBO, importance-weighted), bits per dimension."""

from minisd.eval.likelihood import evaluate_likelihood, importance_weighted_log_likelihood

__all__ = ["evaluate_likelihood", "importance_weighted_log_likelihood"]
