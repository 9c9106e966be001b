"""GPU mirrors of :mod:`lrmath.sparsegrad` hot paths (same names and signatures).

* :func:`sampled_product` -- the SDDMM kernel (``sddmm``) at a fixed index set; the
  ``'dense'`` route is one cuBLAS GEMM on the touched block, as in the reference.
* :func:`sparse_gradient` -- ``U^T (dY^T X) V`` at the index set: transforms of ``dY`` and
  ``X`` (randomized Hadamard by the ``fwht`` kernels, dense/learned bases by cuBLAS on the
  needed columns, other fast operators through :mod:`lrmath.ops` on the device array),
  then the SDDMM kernel.
* :func:`topk_global`, :func:`topk_per_row` -- radix-select kernels, same tie rule (larger
  magnitude, then lower flat index); sorted flat indices as the reference returns them.
* :func:`transform`, :func:`inverse_transform` -- ``U^T G V`` / ``U G~ V^T`` with the same
  basis dispatch.
"""

from __future__ import annotations

import numpy as np

from lrmath import ops
from lrmath.backend import check_array, check_positive_int
from lrmath.errors import ShapeError
from lrmath.sparsegrad import LearnedBasis, basis, columns, route_cost
from lrmath.sparsegrad.sddmm import _check_gradient_args, _check_sampled_args

from . import kernels as K
from ._device import resolve, to_caller, to_work, work_xp

__all__ = [
    "sampled_product", "sparse_gradient", "topk_global", "topk_per_row", "topk_product", "transform", "inverse_transform",
]


def _rows_t(Q, Y, xp, be):
    """``Y Q`` for work rows ``Y`` (t, n), i.e. ``Q^T y`` for every row."""
    if isinstance(Q, LearnedBasis):
        return Y @ xp.asarray(np.asarray(Q.matrix(), np.float32))
    if isinstance(Q, ops.OrthogonalOperator) and Q.kind == "identity":
        return Y
    if isinstance(Q, ops.OrthogonalOperator) and Q.kind == "hadamard":
        return K.hadamard(Y, Q.seed, axis=1, transpose=True, backend=be)
    return Q.apply_t(Y, axis=1)  # other fast operators: their array-API path on the device array


def _rows(Q, Y, xp, be):
    """``Y Q^T`` for work rows ``Y``, i.e. ``Q y`` for every row."""
    if isinstance(Q, LearnedBasis):
        return Y @ xp.asarray(np.asarray(Q.matrix(), np.float32)).T
    if isinstance(Q, ops.OrthogonalOperator) and Q.kind == "identity":
        return Y
    if isinstance(Q, ops.OrthogonalOperator) and Q.kind == "hadamard":
        return K.hadamard(Y, Q.seed, axis=1, transpose=False, backend=be)
    return Q.apply(Y, axis=1)


def _sddmm_t(Aw, Bw, r, c, be):
    """``out[k] = sum_t A[t, r_k] B[t, c_k]`` with the kernel (A (t, n), B (t, m) work arrays)."""
    return K.sddmm(Aw.T, Bw, r, c, backend=be)


def sampled_product(A, B, idx, shape=None, *, method: str = "auto", chunk_elems: int = 1 << 22,
                    gemm_speedup: float = 16.0, dense_cap: float = 8.0):
    """Entries of ``A^T B`` at sorted flat indices ``idx``; see :func:`lrmath.sparsegrad.sampled_product`.

    ``A (t, n)``, ``B (t, m)``; returns ``(nnz,)`` of ``A``'s kind and dtype. ``chunk_elems``
    is accepted for signature parity (the kernel needs no temporary).
    """
    t, n, m, idx = _check_sampled_args(A, B, idx, shape, method)
    be = resolve(None)
    xp = work_xp(be)
    r, c = idx // m, idx % m
    if idx.size == 0:
        return K._restore(xp.zeros((0,), xp.float32), K._dtype_name(A), A)
    if method == "auto":
        method = route_cost(t, idx, (n, m), gemm_speedup=gemm_speedup, dense_cap=dense_cap)["route"]
    Aw = to_work(A, xp, dtype=xp.float32)
    Bw = to_work(B, xp, dtype=xp.float32)
    if method == "dense":
        I, ri = np.unique(r, return_inverse=True)
        J, ci = np.unique(c, return_inverse=True)
        C = Aw[:, xp.asarray(I)].T @ Bw[:, xp.asarray(J)]
        out = C.reshape(-1)[xp.asarray((ri * J.size + ci).astype(np.int64))]
    else:
        out = _sddmm_t(Aw, Bw, r, c, be)
    return K._restore(out, K._dtype_name(A), A)


def sparse_gradient(dY, X, U, V, idx, *, method: str = "auto"):
    """``G~ = U^T (dY^T X) V`` at flat ``idx`` without the dense gradient (paper eq. 2).

    ``dY (t, n)``, ``X (t, m)``; ``U``, ``V`` bases or names; returns ``(nnz,)`` like ``dY``.
    """
    n, m, U, V, idx = _check_gradient_args(dY, X, U, V, idx)
    be = resolve(None)
    xp = work_xp(be)
    r, c = idx // m, idx % m
    I, ri = np.unique(r, return_inverse=True)
    J, ci = np.unique(c, return_inverse=True)
    dYw = to_work(dY, xp, dtype=xp.float32)
    Xw = to_work(X, xp, dtype=xp.float32)

    def restricted(Q, Yw, cols):
        # only the needed basis columns: a GEMM with Q[:, cols] when cheaper than the full transform
        fast = isinstance(Q, ops.OrthogonalOperator) and Q.kind in ("identity", "hadamard")
        if not fast and 2 * Q.n * cols.size < Q.flops:
            return Yw @ xp.asarray(columns(Q, cols).astype(np.float32))
        full = _rows_t(Q, Yw, xp, be)
        return full[:, xp.asarray(cols)]

    A = xp.ascontiguousarray(restricted(U, dYw, I))
    B = xp.ascontiguousarray(restricted(V, Xw, J))
    out = _sddmm_t(A, B, ri.astype(np.int64), ci.astype(np.int64), be)
    return K._restore(out, K._dtype_name(dY), dY)


def topk_global(Gt, k: int):
    """Sorted flat indices of the ``k`` largest ``|Gt|`` (ties: lower index); int64 of ``Gt``'s kind."""
    check_array(Gt, "Gt", ndim=2)
    k = check_positive_int(k, "k")
    k = min(k, int(Gt.shape[0]) * int(Gt.shape[1]))
    be = resolve(None)
    xp = work_xp(be)
    idx, _ = K.topk(to_work(Gt, xp, dtype=xp.float32), k, axis=None, backend=be)
    return to_caller(xp.sort(idx), Gt)


def topk_per_row(Gt, k: int):
    """Sorted flat indices of the ``k`` largest ``|Gt|`` in every row of ``Gt (n, m)``."""
    check_array(Gt, "Gt", ndim=2)
    n, m = int(Gt.shape[0]), int(Gt.shape[1])
    k = check_positive_int(k, "k", maximum=m)
    be = resolve(None)
    xp = work_xp(be)
    idx, _ = K.topk(to_work(Gt, xp, dtype=xp.float32), k, axis=-1, backend=be)
    flat = xp.sort(idx, axis=1) + (xp.arange(n, dtype=xp.int64) * m)[:, None]
    return to_caller(flat.reshape(-1), Gt)


def topk_product(A, B, k: int, *, block_rows: int | None = None):
    """Global top-``k`` of ``|A^T B|`` (``A (t, n)``, ``B (t, m)``) block by block; see
    :func:`lrmath.sparsegrad.topk_product`. Each ``block_rows x m`` block is one cuBLAS GEMM and a
    radix-select; candidates are merged in ascending flat-index order so the tie rule (larger
    magnitude, then lower index) carries over. Returns ``(idx, values)`` as NumPy int64 / float64."""
    check_array(A, "A", ndim=2)
    check_array(B, "B", ndim=2)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"A {tuple(A.shape)} and B {tuple(B.shape)} must have the same number of rows")
    n, m = int(A.shape[1]), int(B.shape[1])
    k = check_positive_int(k, "k", maximum=n * m)
    if block_rows is None:
        block_rows = max(1, min(n, (1 << 26) // max(m, 1)))
    block_rows = check_positive_int(block_rows, "block_rows")
    be = resolve(None)
    xp = work_xp(be)
    At = xp.ascontiguousarray(to_work(A, xp, dtype=xp.float32, contiguous=False).T)
    Bw = to_work(B, xp, dtype=xp.float32)
    best_idx = xp.zeros(0, dtype=xp.int64)
    best_val = xp.zeros(0, dtype=xp.float32)
    for s in range(0, n, block_rows):
        blk = (At[s: s + block_rows] @ Bw).reshape(-1)
        loc, _ = K.topk(blk, min(k, int(blk.size)), backend=be)
        loc = xp.sort(loc)
        cand_idx = xp.concatenate([best_idx, loc + s * m])  # ascending: earlier blocks hold lower indices
        cand_val = xp.concatenate([best_val, blk[loc]])
        pos, _ = K.topk(cand_val, min(k, int(cand_val.size)), backend=be)
        pos = xp.sort(pos)
        best_idx, best_val = cand_idx[pos], cand_val[pos]
    h = lambda a: np.asarray(a.get() if hasattr(a, "get") else a)  # noqa: E731
    return h(best_idx).astype(np.int64), h(best_val).astype(np.float64)


def transform(G, U, V):
    """``G~ = U^T G V`` for ``G (n, m)`` (paper eq. 2), on the device."""
    check_array(G, "G", ndim=2)
    n, m = int(G.shape[0]), int(G.shape[1])
    U, V = basis(U, n), basis(V, m)
    be = resolve(None)
    xp = work_xp(be)
    Gw = to_work(G, xp, dtype=xp.float32)
    H = _rows_t(V, Gw, xp, be)  # rows g_i -> V^T g_i : G V
    out = _rows_t(U, xp.ascontiguousarray(H.T), xp, be).T  # columns: U^T (G V)
    return K._restore(xp.ascontiguousarray(out), K._dtype_name(G), G)


def inverse_transform(Gt, U, V):
    """``G = U G~ V^T`` (inverse of :func:`transform`), on the device."""
    check_array(Gt, "Gt", ndim=2)
    n, m = int(Gt.shape[0]), int(Gt.shape[1])
    U, V = basis(U, n), basis(V, m)
    be = resolve(None)
    xp = work_xp(be)
    Gw = to_work(Gt, xp, dtype=xp.float32)
    H = _rows(V, Gw, xp, be)
    out = _rows(U, xp.ascontiguousarray(H.T), xp, be).T
    return K._restore(xp.ascontiguousarray(out), K._dtype_name(Gt), Gt)
