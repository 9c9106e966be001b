"""The transformed gradient at a fixed index set, without the dense gradient.

For ``A = dY U (t, n)`` and ``B = X V (t, m)`` the transformed gradient is
``G~ = A^T B`` (paper eq. 2). At a fixed flat index set ``idx`` (rows ``r``, cols ``c``)
only

    G~[r_k, c_k] = sum_t A[t, r_k] B[t, c_k]                  (a sampled dense-dense product)

is needed: ``2 t nnz`` flops instead of ``2 t n m``. Two routes, chosen by cost:

* ``"sparse"`` -- gather the columns and reduce, in chunks of ``nnz`` so the temporary
  stays ``t * chunk`` elements;
* ``"dense"`` -- one GEMM on the block of touched rows and columns ``I x J``
  (``2 t |I| |J|`` flops at GEMM speed, an ``|I| x |J|`` temporary), then gather. It wins
  when the index set covers much of its block (the learned basis concentrates the
  energy in the leading rows and columns). It is only taken while ``|I| |J|`` stays
  below ``dense_cap * nnz`` so the route never builds an ``(n, m)`` dense gradient for a
  sparse set.

Transforms are restricted the same way: only the columns ``U[:, I]`` and ``V[:, J]``
are needed, ``2 t n |I|`` flops, or the full fast transform (``t * flops``) when that is
cheaper (:func:`sparse_gradient`).

Results convert to COO/CSR (:func:`to_sparse`): SciPy sparse arrays on NumPy, cupyx on
CuPy, torch sparse tensors for torch.
"""

from __future__ import annotations

import numpy as np

from ..backend import (
    array_namespace,
    backend_name,
    check_array,
    check_positive_int,
    device_of,
    is_numpy,
    like,
    public,
    to_numpy,
)
from ..errors import OptionError, ShapeError
from .bases import basis, columns
from .select import check_indices, topk_of_values

__all__ = ["sampled_product", "sparse_gradient", "topk_product", "to_sparse", "route_cost", "GEMM_SPEEDUP"]

#: Ratio of GEMM throughput to gather-multiply-reduce throughput (flops/s), used by the
#: route choice. Measured on this project's 2-core CPU (benchmarks/results/sparsegrad_cpu.md,
#: "route" row: a fully filled 256x256 block, t = 256-512): the gather route took 2.5-3.2x
#: the GEMM route's time for the same flops; 4 leans to GEMM when in doubt.
GEMM_SPEEDUP = 4.0


def _dev(x):
    return {} if backend_name(x) == "numpy" else {"device": device_of(x)}


def _split(idx: np.ndarray, m: int):
    return idx // m, idx % m


@public
def route_cost(t: int, idx, shape, *, gemm_speedup: float = GEMM_SPEEDUP, dense_cap: float = 8.0) -> dict:
    """Flop counts of both routes for ``t`` rows and flat ``idx`` into ``shape``, and the choice.

    Returns ``{"sparse": 2 t nnz, "dense": 2 t |I| |J|, "block": |I| |J|, "route": ...}``.
    """
    idx = check_indices(idx, shape)
    r, c = _split(idx, shape[1])
    ni, nj = np.unique(r).size, np.unique(c).size
    sparse = 2 * t * idx.size
    dense = 2 * t * ni * nj
    ok = ni * nj <= dense_cap * max(idx.size, 1)
    route = "dense" if ok and dense <= gemm_speedup * sparse else "sparse"
    return {"sparse": sparse, "dense": dense, "block": ni * nj, "rows": ni, "cols": nj, "route": route}



def _check_sampled_args(A, B, idx, shape, method: str):
    """Validate :func:`sampled_product`'s arguments (shared with the GPU mirror).

    Returns ``(t, n, m, idx)`` with ``idx`` checked against ``(n, m)``.
    """
    check_array(A, "A", ndim=2)
    check_array(B, "B", ndim=2)
    array_namespace(A, B)  # raises DeviceError when A and B mix libraries or devices
    t, n = int(A.shape[0]), int(A.shape[1])
    if int(B.shape[0]) != t:
        raise ShapeError(f"A has {t} rows but B has {B.shape[0]}; both must be (t, .)")
    m = int(B.shape[1])
    if shape is not None and tuple(shape) != (n, m):
        raise ShapeError(f"shape {tuple(shape)} does not match A^T B of shape {(n, m)}")
    if A.dtype != B.dtype:
        from ..errors import DTypeError

        raise DTypeError(f"A and B must share a dtype, got {A.dtype} and {B.dtype}")
    idx = check_indices(idx, (n, m))
    if method not in ("auto", "sparse", "dense"):
        raise OptionError(f"method must be 'auto', 'sparse' or 'dense', got {method!r}")
    return t, n, m, idx

@public
def sampled_product(A, B, idx, shape=None, *, method: str = "auto", chunk_elems: int = 1 << 22,
                    gemm_speedup: float = GEMM_SPEEDUP, dense_cap: float = 8.0):
    """Entries of ``A^T B`` at flat indices ``idx``: ``out[k] = sum_t A[t, r_k] B[t, c_k]``.

    Parameters
    ----------
    A : array (t, n)
    B : array (t, m)
    idx : int array (nnz,)
        Sorted flat row-major indices into ``(n, m)``.
    method : {'auto', 'sparse', 'dense'}
        Route; ``'auto'`` picks by :func:`route_cost`.
    chunk_elems : int
        Bound on the ``t * chunk`` temporary of the sparse route.

    Returns
    -------
    array (nnz,), same kind and dtype as ``A``.
    """
    xp = check_array(A, "A", ndim=2)
    t, n, m, idx = _check_sampled_args(A, B, idx, shape, method)
    if idx.size == 0:
        return xp.zeros((0,), dtype=A.dtype, **_dev(A))
    r, c = _split(idx, m)
    if method == "auto":
        method = route_cost(t, idx, (n, m), gemm_speedup=gemm_speedup, dense_cap=dense_cap)["route"]
    if method == "dense":
        I, ri = np.unique(r, return_inverse=True)
        J, ci = np.unique(c, return_inverse=True)
        AI = A[:, I] if is_numpy(A) else xp.take(A, like(I, A), axis=1)
        BJ = B[:, J] if is_numpy(B) else xp.take(B, like(J, B), axis=1)
        C = xp.reshape(xp.permute_dims(AI, (1, 0)) @ BJ, (-1,))
        flat = (ri * J.size + ci).astype(np.int64)
        return C[flat] if is_numpy(C) else xp.take(C, like(flat, C), axis=0)
    chunk = max(1, int(chunk_elems) // max(t, 1))
    parts = []
    for s in range(0, idx.size, chunk):
        rs, cs = r[s : s + chunk], c[s : s + chunk]
        if is_numpy(A):
            parts.append(np.einsum("tk,tk->k", A[:, rs], B[:, cs]))
        else:
            a = xp.take(A, like(rs, A), axis=1)
            b = xp.take(B, like(cs, B), axis=1)
            parts.append(xp.sum(a * b, axis=0))
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def _restricted(Q, Y, cols_needed: np.ndarray):
    """``Y Q[:, I]`` (t, |I|): the transformed rows at the needed basis vectors, by whichever of
    the column slice (``2 t n |I|``) or the full transform (``t * Q.flops``) is cheaper."""
    n = Q.n
    if 2 * n * cols_needed.size < Q.flops:
        QI = columns(Q, cols_needed, ref=Y)
        return Y @ QI
    full = Q.apply_t(Y, axis=1)  # rows y -> Q^T y = (Y Q)[t, :]
    xp = array_namespace(full)
    return full[:, cols_needed] if is_numpy(full) else xp.take(full, like(cols_needed, full), axis=1)



def _check_gradient_args(dY, X, U, V, idx):
    """Validate :func:`sparse_gradient`'s arguments (shared with the GPU mirror).

    Returns ``(n, m, U, V, idx)`` with the bases resolved and ``idx`` checked against ``(n, m)``.
    """
    check_array(dY, "dY", ndim=2)
    check_array(X, "X", ndim=2)
    if dY.shape[0] != X.shape[0]:
        raise ShapeError(f"dY {tuple(dY.shape)} and X {tuple(X.shape)} must have the same number of rows")
    n, m = int(dY.shape[1]), int(X.shape[1])
    U, V = basis(U, n), basis(V, m)
    return n, m, U, V, check_indices(idx, (n, m))

@public
def sparse_gradient(dY, X, U, V, idx, *, method: str = "auto"):
    """Transformed weight gradient ``G~ = U^T (dY^T X) V`` at flat indices ``idx``, never forming
    the dense ``(n, m)`` gradient (paper eq. 2 evaluated at the index set).

    Parameters
    ----------
    dY : array (t, n)
        Gradient of the layer output (``t`` = tokens, any leading axes flattened first).
    X : array (t, m)
        Layer input.
    U, V : basis objects or names
        Orthogonal ``(n, n)`` and ``(m, m)`` bases (see :mod:`lrmath.sparsegrad.bases`).
    idx : int array (nnz,)
        Sorted flat indices into ``(n, m)``.

    Returns
    -------
    array (nnz,)
    """
    n, m, U, V, idx = _check_gradient_args(dY, X, U, V, idx)
    r, c = _split(idx, m)
    I, ri = np.unique(r, return_inverse=True)
    J, ci = np.unique(c, return_inverse=True)
    A = _restricted(U, dY, I)
    B = _restricted(V, X, J)
    local = (ri * J.size + ci).astype(np.int64)
    return sampled_product(A, B, local, (I.size, J.size), method=method)


@public
def topk_product(A, B, k: int, *, block_rows: int | None = None):
    """Global top-``k`` entries of ``|A^T B|`` (``A (t, n)``, ``B (t, m)``) computed in blocks of
    rows, so only ``block_rows x m`` of the product exists at a time.

    Returns ``(idx, values)`` with ``idx`` sorted flat indices into ``(n, m)`` (NumPy int64)
    and ``values`` the entries there (float64 NumPy). Tie rule as :func:`topk_global`.
    """
    check_array(A, "A", ndim=2)
    check_array(B, "B", ndim=2)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"A {tuple(A.shape)} and B {tuple(B.shape)} must have the same number of rows")
    n, m = int(A.shape[1]), int(B.shape[1])
    k = check_positive_int(k, "k", maximum=n * m)
    xp = array_namespace(A, B)
    if block_rows is None:
        block_rows = max(1, min(n, (1 << 22) // max(m, 1)))
    block_rows = check_positive_int(block_rows, "block_rows")
    best_idx = np.zeros(0, dtype=np.int64)
    best_val = np.zeros(0, dtype=np.float64)
    At = xp.permute_dims(A, (1, 0))
    for s in range(0, n, block_rows):
        blk = np.asarray(to_numpy(At[s : s + block_rows, :] @ B), dtype=np.float64).ravel()
        kk = min(k, blk.size)
        a = np.abs(blk)
        thr = np.partition(a, a.size - kk)[a.size - kk]
        loc = np.flatnonzero(a >= thr)
        cand_idx = np.concatenate([best_idx, loc.astype(np.int64) + s * m])
        cand_val = np.concatenate([best_val, blk[loc]])
        keep = topk_of_values(cand_idx, np.abs(cand_val), k)
        best_idx, best_val = cand_idx[keep], cand_val[keep]
    return best_idx, best_val


@public
def to_sparse(values, idx, shape, format: str = "coo"):  # noqa: A002 - scipy's word
    """A sparse ``(n, m)`` matrix with ``values`` at flat ``idx``, in the library of ``values``.

    NumPy -> ``scipy.sparse.coo_array`` / ``csr_array``; CuPy -> ``cupyx.scipy.sparse``
    ``coo_matrix`` / ``csr_matrix``; torch -> ``torch.sparse_coo_tensor`` (coalesced) or a
    CSR tensor.
    """
    if format not in ("coo", "csr"):
        raise OptionError(f"format must be 'coo' or 'csr', got {format!r}")
    n, m = int(shape[0]), int(shape[1])
    idx = check_indices(idx, (n, m))
    if int(values.shape[0]) != idx.size or len(values.shape) != 1:
        raise ShapeError(f"values must be ({idx.size},), got {tuple(values.shape)}")
    r, c = _split(idx, m)
    kind = backend_name(values)
    if kind == "numpy":
        import scipy.sparse as sp

        coo = sp.coo_array((values, (r, c)), shape=(n, m))
        return coo if format == "coo" else coo.tocsr()
    if kind == "cupy":
        import cupy as cp
        import cupyx.scipy.sparse as csp

        coo = csp.coo_matrix((values, (cp.asarray(r), cp.asarray(c))), shape=(n, m))
        return coo if format == "coo" else coo.tocsr()
    if kind == "torch":
        import torch

        ind = torch.from_numpy(np.stack([r, c])).to(values.device)
        import warnings

        coo = torch.sparse_coo_tensor(ind, values, (n, m), is_coalesced=True, check_invariants=True)
        if format == "coo":
            return coo
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return coo.to_sparse_csr()
    raise OptionError(f"no sparse format for arrays of {kind}; convert to NumPy, CuPy or torch")
