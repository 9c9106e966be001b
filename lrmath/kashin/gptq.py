"""Calibration-aware Kashin coding: GPTQ error propagation with Kashin as the block quantizer.

With the layer's inputs ``X`` (t, in) and ``H = X^T X`` (in, in), the output error of a quantized
weight ``W_hat`` (torch layout (out, in)) is

.. math::  \\|(W - \\hat W) X^T\\|_F^2 = \\sum_r (w_r - \\hat w_r) H (w_r - \\hat w_r)^T,

one quadratic form per row (GPTQ, Frantar et al. 2023, eq. 1). GPTQ quantizes the input columns
in order and, after fixing a column ``j``, moves the remaining columns by the optimal-brain-surgeon
update (GPTQ eqs. 2-3), which with the upper Cholesky factor ``U`` of ``H^{-1}`` (``H^{-1} = U^T U``)
reads ``w_{j+1:} -= (w_j - q_j) / U_jj * U_{j, j+1:}``. Damping: ``H += damp * mean(diag H) * I``
(GPTQ's 1%), columns with ``H_jj = 0`` (dead inputs) are set to zero.

Kashin as the block quantizer (a decision of this package). A Kashin block ``w = alpha T_u[c_u] +
beta Q T_v[c_v]`` couples all columns of the block through ``Q``, so it cannot be coded one column
at a time; its ``u`` factor, however, is coded entrywise. For every row-aligned column block (all
rows at once):

1. the data-free recipe codes the block's *current* (already error-compensated) weights, giving
   the scales, tables, the ``v`` codes and the fixed part ``P = beta Q T_v[c_v]``;
2. the ``u`` codes are then re-chosen column by column, as GPTQ does with a scalar grid:
   ``c_j = nearest((w_j - P_j) / alpha)``, and each column's error is propagated to the columns
   after it, inside the block and (lazily, once per block) to the rest of the matrix.

With ``H = I`` nothing is propagated and step 2 is one more ``u`` sweep of the recipe at fixed
scales, which never increases the error: the calibrated coder is no worse than the data-free one.
Act-order (GPTQ's column permutation by ``diag H``) is not implemented: it would permute the columns
of the row-aligned blocks and need a stored permutation.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import OptionError, ShapeError
from ..backend import public

__all__ = ["prepare_hessian", "inverse_cholesky", "gptq_columns"]


@public
def prepare_hessian(H, inn: int, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrised, damped ``H`` (float64) and the mask of dead input columns (``H_jj = 0``).

    Parameters
    ----------
    H : array (in, in)
        ``X^T X`` of the layer's inputs (any positive multiple works: only ratios matter).
    damp : float
        Relative damping ``lambda = damp * mean(diag H)`` added to the diagonal (GPTQ: 0.01).
    """
    H = np.array(H, dtype=np.float64)
    if H.shape != (inn, inn):
        raise ShapeError(f"calibration H must have shape (in, in) = ({inn}, {inn}), got {H.shape}")
    if not np.all(np.isfinite(H)):
        from ..errors import NonFiniteError

        raise NonFiniteError("calibration H holds NaN/Inf entries")
    if not (isinstance(damp, (int, float)) and damp >= 0):
        raise OptionError(f"damp must be a non-negative number, got {damp!r}")
    H = (H + H.T) * 0.5
    dead = np.diag(H) <= 0
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1.0
    lam = damp * float(np.mean(np.diag(H)))
    H[np.diag_indices(inn)] += lam
    return H, dead


@public
def inverse_cholesky(H: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``H^{-1} = U^T U`` (GPTQ's ``Hinv``), float64.

    One Cholesky factorisation of the index-reversed ``J H J = L L^T`` gives ``H = R R^T`` with
    ``R = J L J`` upper triangular, so ``H^{-1} = R^{-T} R^{-1}`` and ``U = R^{-1}`` (one triangular
    inverse) -- a third of the work of GPTQ's factorise / invert / factorise again.
    """
    import scipy.linalg

    try:
        L = scipy.linalg.cholesky(H[::-1, ::-1], lower=True)
    except np.linalg.LinAlgError as exc:
        raise OptionError("calibration H is not positive definite even after damping; raise damp") from exc
    R = np.ascontiguousarray(L[::-1, ::-1])
    U, info = scipy.linalg.lapack.dtrtri(R, lower=0)
    if info != 0:
        raise OptionError("calibration H is singular even after damping; raise damp")
    return np.triu(U)


FitBlock = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray, object]]


@public
def gptq_columns(W: np.ndarray, U: np.ndarray, col_blocks, fit_block: FitBlock, *, dead=None):
    """Code ``W`` (out, in) block by block with GPTQ error propagation (module docstring).

    Parameters
    ----------
    W : ndarray (out, in)
        Weights (copied to float64; not modified).
    U : ndarray (in, in)
        Upper Cholesky factor of the damped ``H^{-1}`` (:func:`inverse_cholesky`).
    col_blocks : sequence of (c0, c1)
        Consecutive column blocks covering ``0..in``.
    fit_block : callable ``(w_block (out, nb) float64, j) -> (P, alpha, table, state)``
        Codes the current block jointly; ``P`` (out, nb) is the part kept fixed, ``alpha`` (out,)
        the per-row scale of the entrywise grid ``alpha * table`` (ascending ``table``) on which the
        columns are then re-coded one by one; ``state`` is returned untouched.
    dead : bool array (in,), optional
        Columns zeroed before coding (dead inputs).

    Returns
    -------
    codes : uint8 (out, in)
        Grid indices chosen column by column.
    states : list
        ``fit_block``'s states, one per block.
    W_hat : float64 (out, in)
        ``P + alpha * table[codes]``, the coded weights.
    """
    from .quantize import nearest_code

    W = np.array(W, dtype=np.float64)
    out, inn = W.shape
    if dead is not None and np.any(dead):
        W[:, dead] = 0
    codes = np.zeros((out, inn), np.uint8)
    W_hat = np.zeros((out, inn))
    states = []
    for j, (c0, c1) in enumerate(col_blocks):
        P, alpha, table, state = fit_block(W[:, c0:c1].copy(), j)
        states.append(state)
        alpha = np.asarray(alpha, np.float64).reshape(out)
        asafe = np.where(alpha != 0, alpha, 1.0)
        tab = np.asarray(table, np.float64)
        Err = np.empty((out, c1 - c0))
        for i in range(c1 - c0):
            col = c0 + i
            w = W[:, col]
            c = nearest_code((w - P[:, i]) / asafe, tab)
            q = P[:, i] + alpha * tab[c]
            codes[:, col] = c
            W_hat[:, col] = q
            e = (w - q) / U[col, col]
            Err[:, i] = e
            if col + 1 < c1:
                W[:, col + 1:c1] -= np.outer(e, U[col, col + 1:c1])
        if c1 < inn:
            W[:, c1:] -= Err @ U[c0:c1, c1:]
    return codes, states, W_hat
