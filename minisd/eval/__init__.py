"""Metrics: likelihood bounds (ELBO, importance-weighted), bits per dimension, FID on our own classifier's
features (FID-MNIST / FID-Fashion, not Inception FID), and the class balance of samples."""

from minisd.eval.class_histogram import class_balance, class_distribution
from minisd.eval.fid import feature_statistics, fid, frechet_distance
from minisd.eval.likelihood import evaluate_likelihood
from minisd.distributions import importance_weighted_log_likelihood

__all__ = ["class_balance", "class_distribution", "evaluate_likelihood", "feature_statistics", "fid",
           "frechet_distance", "importance_weighted_log_likelihood"]
