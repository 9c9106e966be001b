"""SparseGrad: bases where MLP weight gradients are sparse, selection, sampled products.

Chekalina et al., "SparseGrad: A Selective Method for Efficient Fine-tuning of MLP
Layers", EMNLP 2024. For a linear layer ``Y = X W^T`` (``W (n, m)``, torch layout) and
orthogonal ``U``, ``V``, the gradient of ``W~ = U^T W V`` is ``G~ = (dY U)^T (X V)``
(eq. 2). In a basis fitted to the layer's own gradients ~1% of the entries of ``G~``
hold most of its energy, so training only those entries costs tiny optimizer state.

=================================  ==========================================================
:mod:`~lrmath.sparsegrad.bases`     ``basis`` (original/dct/hadamard/random), the learned basis
                                    (``GramAccumulator`` -> ``LearnedBasis``), ``transform``
:mod:`~lrmath.sparsegrad.analysis`  ``energy_at_density``, ``density_for_energy``,
                                    ``compare_bases`` -> ``SparsityReport``
:mod:`~lrmath.sparsegrad.select`    ``topk_global``, ``topk_per_row``, ``threshold_select``,
                                    ``IndexSelector`` (fixed set, refreshed every K steps)
:mod:`~lrmath.sparsegrad.online`    ``OnlineBasis``: streaming Gram estimate, U, V and index set
                                    refitted every K steps (the default learned basis of the study)
:mod:`~lrmath.sparsegrad.sddmm`     ``sparse_gradient`` / ``sampled_product`` (O(t nnz)),
                                    ``topk_product`` (blockwise), ``to_sparse`` (COO/CSR),
                                    ``route_model`` (per-machine calibrated route choice)
=================================  ==========================================================

The torch layer is :class:`lrmath.torch.SparseGradLinear` (``lrmath/torch/sparsegrad.py``).

Decisions (decisions.md, facts.md): the learned basis comes from accumulated Gram
matrices with per-step normalisation and exponential decay (measured better than the
paper's plain stack); DCT/Hadamard/random are comparison bases.
"""

from .analysis import SparsityReport, compare_bases, density_for_energy, energy_at_density, energy_curve, magnitude_quantiles
from .bases import BASIS_KINDS, GramAccumulator, LearnedBasis, basis, columns, inverse_transform, learned_bases, transform
from .online import OnlineBasis
from .sddmm import RouteModel, calibrate_routes, fit_route_model, route_cost, route_model, sampled_product, sparse_gradient, to_sparse, topk_product
from .select import IndexSelector, carry_over, k_for_density, threshold_select, topk_global, topk_per_row

__all__ = [
    "BASIS_KINDS",
    "basis",
    "LearnedBasis",
    "GramAccumulator",
    "learned_bases",
    "columns",
    "transform",
    "inverse_transform",
    "energy_curve",
    "energy_at_density",
    "density_for_energy",
    "magnitude_quantiles",
    "compare_bases",
    "SparsityReport",
    "k_for_density",
    "topk_global",
    "topk_per_row",
    "threshold_select",
    "IndexSelector",
    "carry_over",
    "sampled_product",
    "sparse_gradient",
    "topk_product",
    "to_sparse",
    "route_cost",
    "route_model",
    "RouteModel",
    "fit_route_model",
    "calibrate_routes",
    "OnlineBasis",
]
