"""Low-rank error compensation ``W ~ W_hat + B A`` for Kashin-quantized matrices.

``B`` (out, r) and ``A`` (r, in) are stored next to the codes (FORMAT.md, version 2) and counted in
``bits_per_weight``. Two ways to find them:

``"loftq"`` (Li et al. 2023, LoftQ, Alg. 1)
    Alternate ``W_hat = quantize(W - B A)`` and ``(B, A) = SVD_r(W - W_hat)`` for ``iters`` rounds
    (data-free: minimises ``||W - W_hat - B A||_F``).
``"lqer"`` (Zhang et al. 2024, LQER; here with the exact output-error weight)
    With the layer's ``H = X^T X``: ``||(W - W_hat - B A) X^T||_F = ||(E - B A) L||_F`` for the
    Cholesky factor ``H = L L^T`` (damped as in :mod:`.gptq`), so the best rank-r correction is the
    truncated SVD of ``E L`` mapped back, ``B A = [E L]_r L^{-1}`` (Eckart-Young in the H-norm). LQER
    itself scales by mean absolute activations (a diagonal ``L``); the Cholesky factor is the exact
    version of the same idea. ``iters > 1`` alternates as LoftQ does, in the H-norm.

Factors are balanced (``B = U_r S_r^{1/2}``, ``A = S_r^{1/2} V_r^T``) and stored as float16 or with
8/4-bit symmetric codes and one float16 scale per row of ``A`` and per column of ``B``
(``Bᵀ``'s rows): ``a = s * (c - 2^(b-1))``, ``|c - 2^(b-1)| <= 2^(b-1) - 1``. Quantizing the factors
keeps the total at low bits per weight: rank ``r`` costs ``b r (m + n) / (m n)`` bits per weight
(+ ``32 r / (m n)`` for the scales), e.g. on 576 x 576 with 8-bit factors rank 13 costs 0.36 bpw.
The rounds always see the *stored* (quantized) factors, so what is optimised is what is decoded.
"""

from __future__ import annotations

import numpy as np

from . import format as fmt
from ..backend import public

__all__ = ["rank_for_budget", "pack_factor", "unpack_factor", "weighted_svd", "LOWRANK_METHODS"]

LOWRANK_METHODS = ("loftq", "lqer")
FACTOR_BITS = (16, 8, 4)


@public
def rank_for_budget(out: int, inn: int, bpw: float, bits: int) -> int:
    """Largest rank whose stored factors cost at most ``bpw`` bits per weight of an (out, in) matrix."""
    per_rank = bits * (out + inn) + (0 if bits == 16 else 32)
    r = int(np.floor(bpw * out * inn / per_rank + 1e-9))
    while r > 0 and _factor_bits(out, inn, r, bits) > bpw * out * inn + 1e-6:
        r -= 1
    return max(0, min(r, out, inn))


def _factor_bits(out, inn, r, bits):
    if bits == 16:
        return 16 * r * (out + inn)
    return 8 * (-(-r * inn * bits // 8) + -(-r * out * bits // 8)) + 32 * r


@public
def weighted_svd(E: np.ndarray, r: int, L: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-``r`` ``B A`` of ``E`` (out, in) in ``||(E - B A) L||_F`` (``L`` lower (in, in); ``I`` if None).

    Returns ``B`` (out, r) and ``A`` (r, in), balanced (both carry ``S^{1/2}``), float64.
    """
    import scipy.linalg

    M = E if L is None else E @ L
    Uu, s, Vt = np.linalg.svd(M, full_matrices=False)
    rs = np.sqrt(s[:r])
    B = Uu[:, :r] * rs[None, :]
    A = rs[:, None] * Vt[:r]
    if L is not None:  # A L = A'  <=>  L^T A^T = A'^T
        A = scipy.linalg.solve_triangular(L.T, A.T, lower=False).T
        # re-balance after the map back (keeps both factors' dynamic ranges alike for coding)
        na = np.linalg.norm(A, axis=1)
        nb = np.linalg.norm(B, axis=0)
        g = np.sqrt(np.where((na > 0) & (nb > 0), nb / np.where(na > 0, na, 1), 1.0))
        A = A * g[:, None]
        B = B / g[None, :]
    return B, A


@public
def pack_factor(F: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Store rows of ``F`` (r, n): float16 values (``bits=16``) or packed codes + float16 row scales."""
    F = np.asarray(F, np.float64)
    if bits == 16:
        return F.astype(np.float16).reshape(-1), None
    half = (1 << (bits - 1)) - 1
    s = (np.max(np.abs(F), axis=1) / half).astype(np.float16)
    s32 = s.astype(np.float64)
    c = np.clip(np.rint(F / np.where(s32 > 0, s32, 1)[:, None]), -half, half) + (1 << (bits - 1))
    return fmt.pack_codes(c.astype(np.uint8), bits), s


@public
def unpack_factor(packed: np.ndarray, scale: np.ndarray | None, bits: int, shape) -> np.ndarray:
    """Inverse of :func:`pack_factor`: float32 (r, n)."""
    r, n = shape
    if bits == 16:
        return np.asarray(packed, np.float16).reshape(r, n).astype(np.float32)
    c = fmt.unpack_codes(packed, bits, r * n).reshape(r, n).astype(np.float32) - float(1 << (bits - 1))
    return c * np.asarray(scale, np.float32)[:, None]
