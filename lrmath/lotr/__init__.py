"""LoTR: low tensor rank adaptation -- Tucker-2 updates shared across layers.

Reference: Bershatsky, Cherniuk, Daulbaev, Mikhalev, Oseledets, "LoTR: Low Tensor Rank Weight
Adaptation", arXiv 2402.01376. The updates of ``L`` layers of equal shape form a 3-way tensor;
LoTR writes ``Delta W_l = A G_l B^T`` with ``A`` (m, r), ``B`` (n, r) shared by all layers and a
small core ``G_l`` (r, r) per layer, so parameters grow as ``r (m + n) + L r^2`` instead of
LoRA's ``L r (m + n)``.

=============================  ===============================================================
``tucker2``, ``hosvd2``        Tucker-2 of a stack (L, m, n): HOSVD init, monotone HOOI sweeps
``Tucker2``                    the result: factors, cores, error history, sweeps, stop reason
``reconstruct``,               ``A G_l B^T`` for every layer; relative Frobenius error
``relative_error``
``lora_params``,               parameter accounting; ranks that fit a parameter budget
``lotr_params``,
``lora_rank_for_budget``,
``lotr_rank_for_budget``
``compare``, ``Comparison``    LoTR vs LoRA (per-layer SVD) error at equal parameter count
``plan``, ``LoTRPlan``         association order of forward + gradients by FLOPs (RunLoRA's
                               chain cost model, composed across chains and layers)
``forward``, ``backward``      ``Y_l = X_l W_l + s X_l A G_l B^T`` and its gradients
=============================  ===============================================================

Layouts: the NumPy reference uses ``W_l`` (m, n) with ``Y = X W``; torch layers
(``lrmath.torch.LoTR``) follow nn.Linear's (out, in), so there ``Delta W_l = B G_l^T A^T``
with ``A`` (in, r), ``B`` (out, r).

Decision (facts.md): on raw pretrained weights sharing buys nothing (Tucker-2 and per-layer
SVD are within 0.02 at equal parameters); the parameter-efficiency claim concerns fine-tuning
updates and is measured, not assumed, in ``proofs_notebooks/lotr.py``.
"""

from __future__ import annotations

from .adapter import LoTRGrads, LoTRPlan, backward, forward, plan
from .params import (
    Comparison,
    compare,
    lora_params,
    lora_rank_for_budget,
    lotr_params,
    lotr_rank_for_budget,
    matched_lora_rank,
    pooled_svd_error,
    svd_errors,
)
from .tucker import Tucker2, check_ranks, hosvd2, reconstruct, relative_error, tucker2

__all__ = [
    "tucker2",
    "hosvd2",
    "Tucker2",
    "reconstruct",
    "relative_error",
    "check_ranks",
    "lora_params",
    "lotr_params",
    "lora_rank_for_budget",
    "lotr_rank_for_budget",
    "matched_lora_rank",
    "svd_errors",
    "pooled_svd_error",
    "compare",
    "Comparison",
    "plan",
    "LoTRPlan",
    "forward",
    "backward",
    "LoTRGrads",
]
