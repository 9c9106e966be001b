"""Randomized matmul for memory-efficient backprop through linear layers.

Reference: Bershatsky, Mikhalev, Katrutsa, Gusak, Merkulov, Oseledets, "Memory-Efficient
Backpropagation through Large Linear Layers", arXiv 2201.13195. The weight gradient
``dW = dY^T X`` is estimated from a sketch ``S^T X`` (k, m) stored instead of ``X``
(t, m); the sketch is regenerated from its seed in backward.

* :mod:`.estimators` -- unbiased estimators of ``X^T Y`` (Gaussian, Rademacher, SRHT/SRDCT,
  column-row sampling with/without replacement, Bernoulli, winner-take-all CRS).
* :mod:`.variance` -- their exact variances ``E||C_hat - C||_F^2`` and optimal probabilities.
* :mod:`.sgd` -- the comparison with mini-batch SGD noise and the largest safe compression.
* ``lrmath.torch.RandomizedLinear`` / ``lrmath.torch.randomize`` -- the PyTorch layer.
"""

from .estimators import KINDS, Sketch, bernoulli_probabilities, estimate, make_sketch, sampling_probabilities
from .sgd import Comparison, Compression, compare, max_compression, per_example_gradients, sgd_variance
from .variance import (
    Stats,
    optimal_bernoulli_variance,
    optimal_probabilities,
    stats,
    transform_row_moment,
    variance,
    wta_deterministic_size,
    wta_variances,
)

__all__ = [
    "KINDS",
    "Sketch",
    "make_sketch",
    "estimate",
    "sampling_probabilities",
    "bernoulli_probabilities",
    "optimal_probabilities",
    "Stats",
    "stats",
    "variance",
    "optimal_bernoulli_variance",
    "transform_row_moment",
    "wta_variances",
    "wta_deterministic_size",
    "per_example_gradients",
    "sgd_variance",
    "compare",
    "Comparison",
    "max_compression",
    "Compression",
]
