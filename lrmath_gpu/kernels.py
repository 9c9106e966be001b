"""GPU primitives: each function runs one or a few registered kernels (CuPy or Numba).

Every function takes arrays of any kind (CuPy, CUDA torch tensors, NumPy), runs on the
backend picked by :func:`lrmath_gpu.set_backend` (or ``backend=``) and returns the
caller's kind. The kernels compute in float32: float16/bfloat16 inputs are widened (the
``lrmath.backend.as_compute`` policy) and results cast back to the input dtype; float64
inputs are computed in float32 too (these are throughput kernels), then cast back.

=====================  ============================================================
:func:`random_bits`    counter RNG (``lrmath.rng``): bits, :func:`uniform`,
                       :func:`signs`, :func:`integers`, :func:`normal`
:func:`hadamard`       batched randomized Walsh-Hadamard, = ``orthogonal('hadamard',
                       n, seed).apply`` / ``apply_t`` (any n = p q; the q x q Haar
                       factor by cuBLAS)
:func:`pack_bits`      b-bit codes -> LSB-first byte stream (kashin/FORMAT.md);
                       :func:`unpack_bits` back
:func:`sddmm`          ``(A @ B)[rows, cols]`` without the dense product
:func:`topk`           top-k by magnitude, per row or global, deterministic ties
:func:`sketch`         ``S^T X`` / ``X S`` with S generated in the kernel from the seed
:func:`crs_gather`     scaled column/row gather for column-row sampling;
                       :func:`sample_indices` inverse-CDF importance sampling
:func:`lotr_core`      ``Z[l] @ G[l]`` batched over layers
:func:`centroid_code`  nearest-centroid codes; :func:`decode_codes`;
                       :func:`kashin_matmul` (dequantize-and-multiply);
                       :func:`kashin_step` (fused truncation iteration)
=====================  ============================================================
"""

from __future__ import annotations

import math

import numpy as np

from lrmath import rng as _rng
from lrmath.backend import backend_name, check_array, check_positive_int
from lrmath.errors import DTypeError, ShapeError

from ._device import grid_for, launch, resolve, threads, to_caller, to_work, work_xp

__all__ = [
    "random_bits",
    "uniform",
    "signs",
    "integers",
    "normal",
    "hadamard",
    "pack_bits",
    "unpack_bits",
    "sddmm",
    "topk",
    "sketch",
    "crs_gather",
    "sample_indices",
    "lotr_core",
    "centroid_code",
    "decode_codes",
    "kashin_matmul",
    "kashin_step",
]

_STREAM_SIGNS = 1  # lrmath.ops.STREAM_SIGNS
_STREAM_QFACTOR = 4  # lrmath.ops.STREAM_QFACTOR
FWHT_SHARED = 4096



def _chain_dims(A, B) -> tuple[int, int, int]:
    """``(m, k, n)`` of 2-D ``A (m, k)`` and ``B (k, n)``; :class:`ShapeError` if they do not chain."""
    check_array(A, "A", ndim=2, nonempty=False)
    check_array(B, "B", ndim=2, nonempty=False)
    m, k = (int(v) for v in A.shape)
    if int(B.shape[0]) != k:
        raise ShapeError(f"A {tuple(A.shape)} and B {tuple(B.shape)} do not chain")
    return m, k, int(B.shape[1])

def _u64(v) -> np.uint64:
    return np.uint64(int(v))


def _i64(v) -> np.int64:
    return np.int64(int(v))


def _i32(v) -> np.int32:
    return np.int32(int(v))


def _f32(v) -> np.float32:
    return np.float32(float(v))


def _dtype_name(x) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def _restore(y, ref_dtype_name: str, ref):
    """Cast float32 result ``y`` (work array) to the caller's dtype and kind."""
    out = to_caller(y, ref)
    if ref_dtype_name in ("float32",):
        return out
    kind = backend_name(out)
    if kind == "numpy":
        if ref_dtype_name == "bfloat16":
            import ml_dtypes

            return out.astype(ml_dtypes.bfloat16)
        return out.astype(ref_dtype_name)
    if kind == "torch":
        import torch

        return out.to(getattr(torch, ref_dtype_name))
    return out.astype(ref_dtype_name)


# ----------------------------------------------------------------------------- RNG
def _rng_call(mode, seed, stream, shape, offset, high, backend):
    be = resolve(backend)
    xp = work_xp(be)
    shp = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    n = int(np.prod(shp, dtype=np.int64)) if shp else 1
    key = _rng.stream_key(seed, stream)
    dummy_f = xp.empty(1, dtype=xp.float64)
    dummy_u = xp.empty(1, dtype=xp.uint64)
    dummy_i = xp.empty(1, dtype=xp.int64)
    if mode == 0:
        out = xp.empty(n, dtype=xp.uint64)
        args = (dummy_f, out, dummy_i)
    elif mode == 3:
        out = xp.empty(n, dtype=xp.int64)
        args = (dummy_f, dummy_u, out)
    else:
        out = xp.empty(n, dtype=xp.float64)
        args = (out, dummy_u, dummy_i)
    if n:
        tpb = threads()
        launch(be, "rng_fill", grid_for(n, tpb), tpb,
               (_u64(key), _i64(offset), _i64(n), _i32(mode), _u64(high)) + args)
    return out.reshape(shp)


def random_bits(seed: int, stream: int, shape, *, offset: int = 0, backend: str | None = None):
    """uint64 bits identical to :func:`lrmath.rng.random_bits` (work array: CuPy, or NumPy in the simulator)."""
    return _rng_call(0, seed, stream, shape, offset, 0, backend)


def uniform(seed: int, stream: int, shape, *, offset: int = 0, backend: str | None = None):
    """Uniforms in [0, 1), bit-identical to :func:`lrmath.rng.uniform` (float64)."""
    return _rng_call(1, seed, stream, shape, offset, 0, backend)


def signs(seed: int, stream: int, shape, *, offset: int = 0, backend: str | None = None):
    """``+1/-1`` identical to :func:`lrmath.rng.signs` (float64)."""
    return _rng_call(2, seed, stream, shape, offset, 0, backend)


def integers(seed: int, stream: int, shape, high: int, *, offset: int = 0, backend: str | None = None):
    """Integers in ``[0, high)`` identical to :func:`lrmath.rng.integers` (int64)."""
    if isinstance(high, bool) or not isinstance(high, (int, np.integer)) or not 1 <= int(high) <= 2**32:
        raise ValueError(f"high must be an integer in [1, 2**32], got {high!r}")
    return _rng_call(3, seed, stream, shape, offset, high, backend)


def normal(seed: int, stream: int, shape, *, offset: int = 0, backend: str | None = None):
    """Standard normals as :func:`lrmath.rng.normal` (equal to a few ulp: CUDA vs libm log/cos)."""
    return _rng_call(4, seed, stream, shape, offset, 0, backend)


# ----------------------------------------------------------------------------- Hadamard
def _fwht_rows(xp, be, x2, p, q, key, transpose, use_signs=True, chunk_max=FWHT_SHARED):
    """Randomized FWHT of the rows of contiguous float32 ``x2`` (rows, p*q) along the p axis."""
    rows = int(x2.shape[0])
    y = xp.empty_like(x2)
    if rows == 0:
        return y
    chunk = min(p, int(chunk_max))
    nchunks = p // chunk
    scale = 1.0 / math.sqrt(p)
    tpb = max(1, min(chunk // 2, threads()))
    nblk = rows * q * nchunks
    big = chunk < p
    stage_tpb = threads()
    pairs = rows * q * (p // 2)

    def global_stages(buf):
        h = chunk
        while h < p:
            launch(be, "fwht_global_stage", grid_for(pairs, stage_tpb), stage_tpb,
                   (buf.reshape(-1), _i64(rows), _i32(p), _i32(q), _i32(h)))
            h *= 2

    if not transpose:
        # forward: signs at load (D first); stages commute so the global ones may follow
        launch(be, "fwht_shared", nblk, tpb,
               (y.reshape(-1), x2.reshape(-1), _i64(rows), _i32(p), _i32(q), _i32(chunk), _u64(key), _i32(use_signs),
                _i32(1), _f32(scale)))
        if big:
            global_stages(y)
    else:
        src = x2
        if big:
            src = x2.copy()
            global_stages(src)
        launch(be, "fwht_shared", nblk, tpb,
               (y.reshape(-1), src.reshape(-1), _i64(rows), _i32(p), _i32(q), _i32(chunk), _u64(key), _i32(use_signs),
                _i32(0), _f32(scale)))
    return y


def hadamard(x, seed: int = 0, *, axis: int = -1, transpose: bool = False, backend: str | None = None,
             _chunk: int = FWHT_SHARED):
    """Randomized Walsh-Hadamard transform along ``axis``: ``orthogonal('hadamard', n, seed)``.

    ``Q = (H_p / sqrt(p) kron R_q) D`` with ``n = p q`` (``p`` the largest power of two
    dividing ``n``); ``transpose=False`` gives ``Q x`` (``apply``), ``True`` gives ``Q^T x``
    (``apply_t``). Signs ``D`` are regenerated inside the kernel from ``seed``
    (``lrmath.ops.STREAM_SIGNS``); the ``q x q`` Haar factor ``R_q`` (rebuilt from the seed
    by :mod:`lrmath.ops`) is one batched cuBLAS GEMM.

    Parameters
    ----------
    x : array, shape (..., n, ...)
    seed : int
    axis : int
    transpose : bool

    Returns
    -------
    array of ``x``'s kind, dtype and shape.
    """
    check_array(x, "x", finite=False, nonempty=False)
    be = resolve(backend)
    xp = work_xp(be)
    dt = _dtype_name(x)
    nd = len(x.shape)
    if nd == 0:
        raise ShapeError("x must have at least one dimension")
    ax = axis % nd
    n = int(x.shape[ax])
    if n < 1:
        raise ShapeError(f"transform length must be >= 1, got shape {tuple(x.shape)}")
    xw = to_work(x, xp, dtype=xp.float32, contiguous=False)
    moved = xp.moveaxis(xw, ax, -1)
    lead = tuple(moved.shape[:-1])
    rows = xp.ascontiguousarray(moved.reshape(-1, n))
    p = n & -n
    q = n // p
    key = _rng.stream_key(seed, _STREAM_SIGNS)
    R = None
    if q > 1:
        from lrmath.ops import _haar_np

        R = xp.asarray(_haar_np(q, int(seed), _STREAM_QFACTOR).astype(np.float32))
    b = int(rows.shape[0])
    if not transpose:
        y = _fwht_rows(xp, be, rows, p, q, key, False, chunk_max=_chunk)
        if R is not None:
            y = (y.reshape(b, p, q) @ R.T).reshape(b, n)
    else:
        if R is not None:
            rows = xp.ascontiguousarray((rows.reshape(b, p, q) @ R).reshape(b, n))
        y = _fwht_rows(xp, be, rows, p, q, key, True, chunk_max=_chunk)
    y = xp.moveaxis(y.reshape(lead + (n,)), -1, ax)
    return _restore(xp.ascontiguousarray(y), dt, x)


# ----------------------------------------------------------------------------- bit packing
def _check_bits(bits):
    return check_positive_int(bits, "bits", minimum=1, maximum=8)


def pack_bits(codes, bits: int, *, backend: str | None = None):
    """Pack integer codes ``0 <= c < 2**bits`` into an LSB-first byte stream (kashin/FORMAT.md).

    Code ``k`` (C order over ``codes``) occupies stream bits ``k*bits .. k*bits+bits-1``, least
    significant bit first; stream bit ``t`` is bit ``t % 8`` of byte ``t // 8``; the last byte
    is zero-padded.

    Returns
    -------
    uint8 array of shape ``(ceil(codes.size * bits / 8),)`` of the caller's kind.
    """
    bits = _check_bits(bits)
    if not hasattr(codes, "dtype"):
        raise DTypeError(f"codes must be an integer array, got {type(codes).__name__}")
    name = _dtype_name(codes)
    if not (name.startswith("uint") or name.startswith("int")):
        raise DTypeError(f"codes must have an integer dtype, got {name}")
    be = resolve(backend)
    xp = work_xp(be)
    c = to_work(codes, xp).reshape(-1)
    n = int(c.size)
    if n:
        lo, hi = int(c.min()), int(c.max())
        if lo < 0 or hi >= (1 << bits):
            raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, got range [{lo}, {hi}]")
    c8 = xp.ascontiguousarray(c.astype(xp.uint8))
    nbytes = -(-n * bits // 8)
    out = xp.empty(nbytes, dtype=xp.uint8)
    if nbytes:
        tpb = threads()
        launch(be, "pack_bits", grid_for(nbytes, tpb), tpb, (c8, out, _i64(n), _i64(nbytes), _i32(bits)))
    return to_caller(out, codes)


def unpack_bits(packed, bits: int, n: int, *, backend: str | None = None):
    """Inverse of :func:`pack_bits`: the first ``n`` codes of the stream, as uint8 of shape ``(n,)``."""
    bits = _check_bits(bits)
    n = check_positive_int(n, "n", minimum=0)
    be = resolve(backend)
    xp = work_xp(be)
    pk = to_work(packed, xp).reshape(-1)
    if pk.dtype != xp.uint8:
        raise DTypeError(f"packed must be uint8, got {pk.dtype}")
    need = -(-n * bits // 8)
    if int(pk.size) < need:
        raise ShapeError(f"{n} codes of {bits} bits need {need} bytes, the stream has {int(pk.size)}")
    out = xp.empty(n, dtype=xp.uint8)
    if n:
        tpb = threads()
        launch(be, "unpack_bits", grid_for(n, tpb), tpb, (pk, out, _i64(n), _i32(bits)))
    return to_caller(out, packed)


# ----------------------------------------------------------------------------- SDDMM
def _index_array(xp, idx, name, bound):
    a = to_work(idx, xp).reshape(-1)
    kind = str(a.dtype)
    if not (kind.startswith("int") or kind.startswith("uint")):
        raise DTypeError(f"{name} must be integer indices, got {kind}")
    a = xp.ascontiguousarray(a.astype(xp.int64))
    if a.size and (int(a.min()) < 0 or int(a.max()) >= bound):
        raise ShapeError(f"{name} out of range [0, {bound}): min {int(a.min())}, max {int(a.max())}")
    return a


_L2_BUDGET = 24 << 20  # bytes of operand slab meant to stay in L2 (H100: 50 MB L2)


def _sddmm_slab(rows_total: int, k: int, slab: int | None) -> int:
    """Inner-dimension slab: the operand rows' slab (``rows_total * slab * 4`` bytes) fits the
    L2 budget; at least 256 (one pass under the simulator)."""
    from ._device import simulator

    if slab is not None:
        return max(1, int(slab))
    if simulator():
        return max(k, 1)
    s = _L2_BUDGET // max(4 * rows_total, 1)
    return max(256, min(k, int(s) // 32 * 32 or 256))


def sddmm(A, B, rows, cols, *, backend: str | None = None, slab: int | None = None):
    """Sampled dense-dense product ``out[e] = sum_j A[rows[e], j] B[j, cols[e]]``.

    Equals ``(A @ B)[rows, cols]`` without forming ``A @ B``: ``2 k nnz`` FLOPs instead of
    ``2 m k n``. ``B`` is transposed once to ``(n, k)`` so both operands are read along
    contiguous rows. The inner dimension is swept in slabs (``slab``; default: the touched
    operand rows' slab fits in ~24 MB of L2), each launch adding its partial sums.

    Parameters
    ----------
    A : array, shape (m, k)
    B : array, shape (k, n)
    rows, cols : integer arrays, shape (nnz,)

    Returns
    -------
    array, shape (nnz,), ``A``'s kind and dtype.
    """
    m, k, n = _chain_dims(A, B)
    be = resolve(backend)
    xp = work_xp(be)
    r = _index_array(xp, rows, "rows", m)
    c = _index_array(xp, cols, "cols", n)
    if r.shape != c.shape:
        raise ShapeError(f"rows {tuple(r.shape)} and cols {tuple(c.shape)} differ in length")
    nnz = int(r.size)
    Aw = to_work(A, xp, dtype=xp.float32)
    Bt = xp.ascontiguousarray(to_work(B, xp, dtype=xp.float32, contiguous=False).T)
    out = xp.zeros(nnz, dtype=xp.float32)
    if nnz and k:
        tpb = threads()
        lanes = 8 if tpb <= 32 else 32  # a warp per entry on a GPU; 8 lanes keep the simulator quick
        groups = tpb // lanes
        slab = _sddmm_slab(m + n, k, slab)
        for j0 in range(0, k, slab):
            launch(be, "sddmm", grid_for(-(-nnz // groups), 1, cap=65535 * 4), tpb,
                   (Aw.reshape(-1), Bt.reshape(-1), r, c, out, _i64(nnz), _i32(k), _i32(lanes),
                    _i32(j0), _i32(min(k, j0 + slab)), _i32(j0 > 0)))
    return _restore(out, _dtype_name(A), A)


# ----------------------------------------------------------------------------- top-k
def _keys(xp, xw):
    return xp.ascontiguousarray(xw.view(xp.uint32) & xp.uint32(0x7FFFFFFF))


def _topk_rows(xp, be, keys, k):
    """Indices (rows, k) of the k largest keys of each row, in ascending index order."""
    rows, n = (int(s) for s in keys.shape)
    flat = keys.reshape(-1)
    tpb = threads()
    prefix = xp.zeros(rows, dtype=xp.uint32)
    krem = xp.full(rows, k, dtype=xp.int64)
    gx = grid_for(n, tpb)
    for shift in (24, 16, 8, 0):
        hist = xp.zeros(rows * 256, dtype=xp.uint32)
        launch(be, "radix_hist", (gx, rows), tpb, (flat, _i64(rows), _i64(n), prefix, _i32(shift), hist))
        h = hist.reshape(rows, 256).astype(xp.int64)
        rc = xp.cumsum(h[:, ::-1], axis=1)  # rc[:, j] = count of digits >= 255 - j
        j = xp.argmax(rc >= krem[:, None], axis=1)
        d = 255 - j
        above = xp.take_along_axis(rc, j[:, None], axis=1)[:, 0] - xp.take_along_axis(h, d[:, None], axis=1)[:, 0]
        krem = krem - above
        prefix = prefix | (d.astype(xp.uint32) << xp.uint32(shift))
    need = xp.ascontiguousarray(krem)
    chunk = 8 if n <= 4096 else 64
    nchunks = -(-n // chunk)
    cnt_gt = xp.zeros(rows * nchunks, dtype=xp.int64)
    cnt_eq = xp.zeros(rows * nchunks, dtype=xp.int64)
    gc = max(1, -(-nchunks // tpb))
    launch(be, "select_count", (gc, rows), tpb,
           (flat, _i64(rows), _i64(n), prefix, _i32(chunk), _i64(nchunks), cnt_gt, cnt_eq))
    g2 = cnt_gt.reshape(rows, nchunks)
    e2 = cnt_eq.reshape(rows, nchunks)
    off_gt = xp.ascontiguousarray((xp.cumsum(g2, axis=1) - g2).reshape(-1))
    off_eq = xp.ascontiguousarray((xp.cumsum(e2, axis=1) - e2).reshape(-1))
    out = xp.empty(rows * k, dtype=xp.int64)
    launch(be, "select_write", (gc, rows), tpb,
           (flat, _i64(rows), _i64(n), prefix, need, _i32(chunk), _i64(nchunks), off_gt, off_eq, _i64(k), out))
    return out.reshape(rows, k)


def topk(x, k: int, *, axis: int | None = None, backend: str | None = None):
    """The ``k`` entries of largest magnitude, deterministically ordered.

    Order: larger ``|x|`` first; equal magnitudes by the smaller index (flat C-order index
    for ``axis=None``, position in the row otherwise). Radix select on the bits of ``|x|``
    (four histogram passes), then a deterministic compaction; no full sort.

    Parameters
    ----------
    x : array
        Finite values (NaN/Inf raise :class:`~lrmath.errors.NonFiniteError`).
    k : int
        ``0 <= k <= size`` (global) or ``<= x.shape[-1]`` (per row).
    axis : None or -1
        ``None``: over all entries (flat indices); ``-1`` (or the last axis): per row of the
        last axis, batched over the leading axes.

    Returns
    -------
    (indices, values)
        int64 indices and the values at them; shape ``(k,)`` or ``x.shape[:-1] + (k,)``.
    """
    check_array(x, "x", dtype="float", nonempty=False)
    k = check_positive_int(k, "k", minimum=0)
    nd = len(x.shape)
    if axis is not None and (nd == 0 or axis % nd != nd - 1):
        raise ValueError(f"axis must be None or the last axis, got {axis} for a {nd}-D array")
    be = resolve(backend)
    xp = work_xp(be)
    xw = to_work(x, xp, dtype=xp.float32)
    if axis is None:
        X2 = xw.reshape(1, -1)
        lead = ()
    else:
        lead = tuple(int(s) for s in x.shape[:-1])
        X2 = xw.reshape(int(np.prod(lead, dtype=np.int64)), int(x.shape[-1]))
    rows, n = (int(s) for s in X2.shape)
    if k > n:
        raise ValueError(f"k = {k} exceeds the {n} entries available")
    if k == 0 or rows == 0:
        idx = xp.zeros((rows, k), dtype=xp.int64)
    else:
        keys = _keys(xp, X2)
        # gridDim.y <= 65535: rows go in slices
        parts = [_topk_rows(xp, be, xp.ascontiguousarray(keys[r0:r0 + 65535]), k) for r0 in range(0, rows, 65535)]
        idx = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)  # ascending index order per row
        sel = xp.take_along_axis(keys, idx, axis=1).astype(xp.uint64)
        pos = xp.arange(k, dtype=xp.uint64)[None, :]
        # unique composite key: magnitude descending, then position (= index order) ascending
        order = xp.argsort(((xp.uint64(0x7FFFFFFF) - sel) << xp.uint64(32)) | pos, axis=1)
        idx = xp.take_along_axis(idx, order, axis=1)
    vals_src = to_work(x, xp, contiguous=True).reshape(rows, n) if _dtype_name(x) != "bfloat16" else X2
    vals = xp.take_along_axis(vals_src, idx, axis=1)
    idx = idx.reshape(lead + (k,)) if axis is not None else idx.reshape(k)
    vals = vals.reshape(idx.shape)
    if _dtype_name(x) == "bfloat16":
        return to_caller(idx, x), _restore(vals, "bfloat16", x)
    return to_caller(idx, x), to_caller(vals, x)


# ----------------------------------------------------------------------------- sketches
_SKETCH_KINDS = {"rademacher": 0, "gaussian": 1}


def sketch(X, s: int, seed: int, stream: int = 0, *, kind: str = "rademacher", scale: float | None = None,
           side: str = "left", backend: str | None = None):
    """Sketch with a random matrix generated inside the kernel (never stored).

    ``S`` has shape ``(n, s)`` and entries ``lrmath.rng.signs(seed, stream, (n, s))``
    (Rademacher) or ``lrmath.rng.normal(seed, stream, (n, s))`` (Gaussian).

    * ``side='left'``: ``X`` is ``(n, c)``, returns ``scale * S^T X`` of shape ``(s, c)``.
    * ``side='right'``: ``X`` is ``(c, n)``, returns ``scale * X S`` of shape ``(c, s)``.

    ``scale`` defaults to ``1/sqrt(s)`` so that ``E[S S^T] scale^2 = I``. Strided inputs are
    read in place.
    """
    check_array(X, "X", ndim=2, nonempty=False)
    s = check_positive_int(s, "s")
    if kind not in _SKETCH_KINDS:
        raise ValueError(f"kind must be one of {tuple(_SKETCH_KINDS)}, got {kind!r}")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    be = resolve(backend)
    xp = work_xp(be)
    xw = to_work(X, xp, dtype=xp.float32, contiguous=False)
    if any(st < 0 for st in xw.strides):
        xw = xp.ascontiguousarray(xw)
    src = xw if side == "left" else xw.T
    n, c = (int(v) for v in src.shape)
    item = xw.itemsize
    sx0, sx1 = src.strides[0] // item, src.strides[1] // item
    base = xw if xw.flags.c_contiguous or xw.flags.f_contiguous else None
    if base is None:  # a general strided view: hand the kernel a flat buffer with the same strides
        xw = xp.ascontiguousarray(xw)
        src = xw if side == "left" else xw.T
        sx0, sx1 = src.strides[0] // item, src.strides[1] // item
    flat = _flat_view(xp, xw)
    Y = xp.zeros((s, c), dtype=xp.float32)
    sc = (1.0 / math.sqrt(s)) if scale is None else float(scale)
    if n and c:
        from ._numba_kernels import SKETCH_TILE

        T = SKETCH_TILE
        launch(be, "sketch", (-(-c // T), -(-s // T)), (T, T),
               (flat, _i64(n), _i64(c), _i64(sx0), _i64(sx1), Y.reshape(-1), _i64(s),
                _u64(_rng.stream_key(seed, stream)), _i32(_SKETCH_KINDS[kind]), _f32(sc)))
    out = Y if side == "left" else xp.ascontiguousarray(Y.T)
    return _restore(out, _dtype_name(X), X)


def _flat_view(xp, a):
    """1-D view of the memory of a C- or F-contiguous 2-D array (strides index into it)."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    return a.T.reshape(-1)  # F-contiguous: its transpose is C-contiguous over the same memory


def crs_gather(A, B, idx, weights, *, backend: str | None = None):
    """Column-row sampling gather: ``As = A[:, idx] * w``, ``Bs = w[:, None] * B[idx, :]``.

    ``A B ~= As @ Bs`` (paper estimators put ``w_t = 1 / sqrt(c p_{i_t})`` on both sides).

    Parameters
    ----------
    A : array, shape (m, n)
    B : array, shape (n, p)
    idx : integer array, shape (c,)
    weights : array, shape (c,)

    Returns
    -------
    (As, Bs) of shapes (m, c) and (c, p), the caller's kind.
    """
    m, n, p = _chain_dims(A, B)
    be = resolve(backend)
    xp = work_xp(be)
    I = _index_array(xp, idx, "idx", n)
    c = int(I.size)
    w = to_work(weights, xp, dtype=xp.float32).reshape(-1)
    if int(w.size) != c:
        raise ShapeError(f"weights has {int(w.size)} entries, idx has {c}")
    Aw = to_work(A, xp, dtype=xp.float32)
    Bw = to_work(B, xp, dtype=xp.float32)
    As = xp.empty((m, c), dtype=xp.float32)
    Bs = xp.empty((c, p), dtype=xp.float32)
    tpb = threads()
    if m * c:
        launch(be, "gather_cols", grid_for(m * c, tpb), tpb,
               (Aw.reshape(-1), _i64(m), _i64(n), _i64(1), I, w, _i64(c), As.reshape(-1)))
    if c * p:
        launch(be, "gather_rows", grid_for(c * p, tpb), tpb,
               (Bw.reshape(-1), _i64(p), _i64(p), _i64(1), I, w, _i64(c), Bs.reshape(-1)))
    return _restore(As, _dtype_name(A), A), _restore(Bs, _dtype_name(B), B)


def sample_indices(probs, c: int, seed: int, stream: int = 0, *, offset: int = 0, backend: str | None = None):
    """``c`` indices drawn i.i.d. with probabilities ``probs`` (inverse CDF of counter uniforms).

    Sample ``t`` is the first ``i`` with ``cdf[i] > u_t cdf[-1]`` where ``cdf`` is the float64
    cumulative sum of ``probs`` and ``u_t = lrmath.rng.uniform(seed, stream, c)[t]``.
    """
    be = resolve(backend)
    xp = work_xp(be)
    c = check_positive_int(c, "c", minimum=0)
    p = to_work(probs, xp, dtype=xp.float64).reshape(-1)
    n = int(p.size)
    if n == 0:
        raise ShapeError("probs is empty")
    if bool(xp.any(p < 0)) or not bool(xp.all(xp.isfinite(p))) or float(p.sum()) <= 0:
        raise ValueError("probs must be finite, non-negative and not all zero")
    cdf = xp.ascontiguousarray(xp.cumsum(p))
    out = xp.empty(c, dtype=xp.int64)
    if c:
        tpb = threads()
        launch(be, "sample_cdf", grid_for(c, tpb), tpb,
               (cdf, _i64(n), _i64(c), _u64(_rng.stream_key(seed, stream)), _i64(offset), out))
    return to_caller(out, probs) if hasattr(probs, "dtype") else out


# ----------------------------------------------------------------------------- LoTR
def lotr_core(Z, G, *, backend: str | None = None):
    """``Y[l] = Z[l] @ G[l]`` for every layer ``l`` (the LoTR core product, ``Z = X_l A``).

    Parameters
    ----------
    Z : array, shape (L, t, ra), or (t, ra) shared by all layers
    G : array, shape (L, ra, rb) with ``ra * rb <= 4096`` (the core sits in shared memory)

    Returns
    -------
    array, shape (L, t, rb), ``Z``'s kind and dtype.
    """
    check_array(Z, "Z", ndim=(2, 3), nonempty=False)
    check_array(G, "G", ndim=3)
    L, ra, rb = (int(v) for v in G.shape)
    shared = len(Z.shape) == 2
    t = int(Z.shape[-2])
    if int(Z.shape[-1]) != ra or (not shared and int(Z.shape[0]) != L):
        raise ShapeError(f"Z {tuple(Z.shape)} does not match G {tuple(G.shape)}: need (L, t, ra) or (t, ra)")
    if ra * rb > 4096:
        raise ShapeError(f"lotr_core keeps the core in shared memory: ra * rb <= 4096, got {ra} x {rb}")
    be = resolve(backend)
    xp = work_xp(be)
    Zw = to_work(Z, xp, dtype=xp.float32)
    Gw = to_work(G, xp, dtype=xp.float32)
    Y = xp.empty((L, t, rb), dtype=xp.float32)
    if L and t and rb:
        tpb = threads()
        launch(be, "lotr_core", (grid_for(t * rb, tpb), L), tpb,
               (Zw.reshape(-1), Gw.reshape(-1), Y.reshape(-1), _i64(L), _i64(t), _i32(ra), _i32(rb),
                _i64(0 if shared else t * ra)))
    return _restore(Y, _dtype_name(Z), Z)


# ----------------------------------------------------------------------------- Kashin
def centroid_code(x, scale, table, N: int, *, backend: str | None = None):
    """Nearest-centroid codes of ``x[k] / scale[k // N]`` in the ascending ``table`` (uint8).

    A value exactly halfway between two centroids takes the higher index (FORMAT.md);
    a zero scale divides by 1 (as ``lrmath.kashin.quantize`` does).
    """
    be = resolve(backend)
    xp = work_xp(be)
    xw = to_work(x, xp, dtype=xp.float32).reshape(-1)
    sw = to_work(scale, xp, dtype=xp.float32).reshape(-1)
    tw = to_work(table, xp, dtype=xp.float32).reshape(-1)
    n = int(xw.size)
    N = check_positive_int(N, "N")
    if n % N or int(sw.size) != n // N:
        raise ShapeError(f"{n} values in blocks of {N} need {n // N if n % N == 0 else '?'} scales, got {int(sw.size)}")
    nt = int(tw.size)
    if not 1 <= nt <= 256:
        raise ShapeError(f"table must have 1..256 entries, got {nt}")
    if nt > 1 and bool(xp.any(tw[1:] < tw[:-1])):
        raise ValueError("table must be ascending")
    out = xp.empty(n, dtype=xp.uint8)
    if n:
        tpb = threads()
        launch(be, "centroid_code", grid_for(n, tpb), tpb, (xw, sw, tw, _i32(nt), _i64(n), _i32(N), out))
    return to_caller(out.reshape(tuple(int(v) for v in x.shape)), x)


def decode_codes(packed, scale, table, bits: int, n: int, N: int, *, backend: str | None = None):
    """``out[k] = scale[k // N] * table[code_k]`` straight from a packed stream (float32, shape (n,))."""
    bits = _check_bits(bits)
    be = resolve(backend)
    xp = work_xp(be)
    pk = to_work(packed, xp).reshape(-1)
    sw = to_work(scale, xp, dtype=xp.float32).reshape(-1)
    tw = to_work(table, xp, dtype=xp.float32).reshape(-1)
    if int(tw.size) != 1 << bits:
        raise ShapeError(f"a {bits}-bit table has {1 << bits} entries, got {int(tw.size)}")
    if int(pk.size) * 8 < n * bits or int(sw.size) * N < n:
        raise ShapeError(f"stream of {int(pk.size)} bytes / {int(sw.size)} scales too short for {n} codes")
    out = xp.empty(n, dtype=xp.float32)
    if n:
        tpb = threads()
        launch(be, "decode_codes", grid_for(n, tpb), tpb, (pk, sw, tw, _i32(bits), _i64(n), _i32(N), out))
    return to_caller(out, packed)


def kashin_matmul(x, xt, codes_u, codes_v, scale_u, scale_v, table_u, table_v, bits_u: int, bits_v: int,
                  N: int, out_features: int, *, backend: str | None = None):
    """``y = x W^T`` for a Kashin-coded ``W`` (FORMAT.md) without building ``W``.

    ``W[r, jN:(j+1)N] = u_hat + Q v_hat`` per block, so
    ``y[t, r] = sum_col u_hat[r, col] x[t, col] + v_hat[r, col] xt[t, col]`` with ``xt = Q^T x``
    per block of ``N`` columns. Codes are decoded inside the kernel from the packed streams.

    Parameters
    ----------
    x, xt : arrays, shape (t, in_pad)
        Activations (zero-padded to ``in_pad = nb N``) and their per-block ``Q^T`` transform.
    codes_u, codes_v : uint8 packed streams; scale_u, scale_v : (out * nb,); table_u, table_v : (2**bits,)

    Returns
    -------
    array, shape (t, out_features), float32, ``x``'s kind.
    """
    be = resolve(backend)
    xp = work_xp(be)
    xw = to_work(x, xp, dtype=xp.float32)
    xtw = to_work(xt, xp, dtype=xp.float32)
    t, in_pad = (int(v) for v in xw.shape)
    if tuple(xtw.shape) != (t, in_pad) or in_pad % N:
        raise ShapeError(f"x {tuple(xw.shape)} and xt {tuple(xtw.shape)} must match and be padded to a multiple of N={N}")
    args = [to_work(a, xp).reshape(-1) for a in (codes_u, codes_v)]
    sc = [to_work(a, xp, dtype=xp.float32).reshape(-1) for a in (scale_u, scale_v, table_u, table_v)]
    y = xp.zeros((t, int(out_features)), dtype=xp.float32)
    if t and out_features:
        from ._numba_kernels import KT

        tpb = threads()
        step = KT * 65535  # gridDim.y <= 65535: tokens go in slices
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            ys = y[t0:t1]
            launch(be, "kashin_matmul", (int(out_features), -(-(t1 - t0) // KT)), tpb,
                   (xw[t0:t1].reshape(-1), xtw[t0:t1].reshape(-1), _i64(t1 - t0), _i64(in_pad), args[0], args[1], *sc,
                    _i32(bits_u), _i32(bits_v), _i32(N), _i64(out_features), ys.reshape(-1)))
    return to_caller(y, x)


def kashin_step(r, u, v, rn2, seed: int, clip: float = 1.0, *, backend: str | None = None):
    """One fused truncation iteration of :func:`lrmath.kashin.decompose` on work arrays, in place.

    ``r, u, v``: float32 work arrays (blocks, N) with ``N`` a power of two <= 4096 and
    ``Q = orthogonal('hadamard', N, seed)``; ``rn2`` (blocks,) holds ``||r||^2`` per block and
    is updated to the new residual's. See ``_cuda/kashin.cu`` for the algebra.
    """
    be = resolve(backend)
    B, N = (int(s) for s in r.shape)
    if N & (N - 1) or N > 4096:
        raise ShapeError(f"the fused Kashin step needs a power-of-two block <= 4096, got {N}")
    if B == 0:
        return
    tpb = max(1, min(N // 2, threads()))
    launch(be, "kashin_step", B, tpb,
           (r.reshape(-1), u.reshape(-1), v.reshape(-1), rn2, _i64(B), _i32(N),
            _u64(_rng.stream_key(seed, _STREAM_SIGNS)), _f32(clip)))
