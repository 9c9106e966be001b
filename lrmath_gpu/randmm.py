"""GPU mirrors of :mod:`lrmath.randmm` hot paths (same names and signatures).

* :func:`make_sketch` -- column-row sampling with replacement draws its indices with the
  ``sample_cdf`` kernel (inverse CDF of the counter uniforms: the same indices as the
  reference); probabilities come from row norms computed on the device. The other kinds
  carry no data-sized state and are built by :func:`lrmath.randmm.make_sketch`.
* :func:`apply_x`, :func:`apply_y` -- ``L X`` / ``R Y``: Gaussian and Rademacher sketches are
  generated inside the ``sketch`` kernel from ``(seed, stream)`` (never stored); SRHT uses
  the ``fwht`` kernels; sampling kinds use the ``gather_rows`` kernel.
* :func:`estimate` -- ``(L X)^T (R Y)`` with one cuBLAS GEMM.
"""

from __future__ import annotations

import math

import numpy as np

from lrmath import randmm as _ref
from lrmath.backend import check_array
from lrmath.errors import ShapeError
from lrmath.randmm.estimators import STREAM_INDEX, STREAM_SKETCH, Sketch, _operator, check_k

from . import kernels as K
from ._device import grid_for, launch, resolve, threads, to_work, work_xp

__all__ = ["make_sketch", "apply_x", "apply_y", "estimate"]


def _row_sq_norms(xp, A):
    return xp.sum(A * A, axis=1, dtype=xp.float64)


def make_sketch(kind: str, t: int, k: int, *, seed: int = 0, stream: int = 0, X=None, Y=None, probs="xy",
                replace: bool = True, deterministic="optimal") -> Sketch:
    """A :class:`lrmath.randmm.Sketch`; see :func:`lrmath.randmm.make_sketch`."""
    if kind != "crs" or not replace:
        return _ref.make_sketch(kind, t, k, seed=seed, stream=stream, X=X, Y=Y, probs=probs, replace=replace,
                                deterministic=deterministic)
    t = int(t)
    k = check_k(k, t)
    be = resolve(None)
    xp = work_xp(be)
    if isinstance(probs, str):
        if probs == "uniform":
            p = xp.full(t, 1.0 / t)
        elif probs in ("x", "xy"):
            if X is None or (probs == "xy" and Y is None):
                raise ValueError(f"probs={probs!r} needs X (and Y for 'xy')")
            w = _row_sq_norms(xp, to_work(X, xp, dtype=xp.float32))
            if probs == "xy":
                w = xp.sqrt(w * _row_sq_norms(xp, to_work(Y, xp, dtype=xp.float32)))
            else:
                w = xp.sqrt(w)
            tot = float(w.sum())
            p = w / tot if tot > 0 else xp.full(t, 1.0 / t)
        else:
            raise ValueError(f"unknown probabilities {probs!r}; choose one of ('xy', 'x', 'uniform') or pass an array")
    else:
        p = to_work(probs, xp, dtype=xp.float64)
        if tuple(p.shape) != (t,):
            raise ShapeError(f"probs must have shape ({t},), got {tuple(p.shape)}")
    idx = K.sample_indices(p, k, seed, int(stream) * 64 + STREAM_INDEX, backend=be)
    ph = np.asarray(p.get() if hasattr(p, "get") else p, np.float64)
    ih = np.asarray(idx.get() if hasattr(idx, "get") else idx, np.int64)
    sk = Sketch("crs", t, k, int(seed), int(stream), True)
    sk.indices, sk.weights = ih, 1.0 / (k * ph[ih])
    return sk


def _gather_rows(xp, be, A, idx, w):
    """``w[:, None] * A[idx]`` by the gather kernel."""
    t, p = (int(s) for s in A.shape)
    c = int(idx.size)
    out = xp.empty((c, p), dtype=xp.float32)
    if c * p:
        tpb = threads()
        launch(be, "gather_rows", grid_for(c * p, tpb), tpb,
               (A.reshape(-1), K._i64(p), K._i64(p), K._i64(1), idx, w, K._i64(c), out.reshape(-1)))
    return out


def _apply(sk: Sketch, A, name: str, side: str, keep: bool = False):
    check_array(A, name, ndim=2)
    if int(A.shape[0]) != sk.t:
        raise ShapeError(f"{name} has {A.shape[0]} rows but the sketch was built for t={sk.t} (shape {tuple(A.shape)})")
    be = resolve(None)
    xp = work_xp(be)
    Aw = to_work(A, xp, dtype=xp.float32)
    s = int(sk.stream) * 64 + STREAM_SKETCH
    if sk.kind in ("gaussian", "rademacher"):
        out = K.sketch(Aw, sk.k, sk.seed, s, kind=sk.kind, scale=1.0 / math.sqrt(sk.k), backend=be)
    elif sk.kind in ("srht", "srdct"):
        D = K.signs(sk.seed, s, sk.t, backend=be).astype(xp.float32)
        op = _operator("hadamard" if sk.kind == "srht" else "dct", sk.t)
        Z = Aw * D[:, None]
        Z = K.hadamard(Z, op.seed, axis=0, backend=be) if sk.kind == "srht" else op.apply(Z, axis=0)
        out = Z[xp.asarray(sk._transform_rows())] * math.sqrt(sk.t / sk.k)
    else:
        idx = xp.asarray(sk.indices)
        w = xp.asarray(sk.weights.astype(np.float32)) if side == "x" else xp.ones(int(idx.size), xp.float32)
        out = _gather_rows(xp, be, Aw, idx, w)
    if keep:
        return out
    return K._restore(out, K._dtype_name(A), A)


def apply_x(sketch: Sketch, X):
    """``L X`` (rows, m) on the device: the part a layer stores for backward."""
    return _apply(sketch, X, "X", "x")


def apply_y(sketch: Sketch, Y):
    """``R Y`` (rows, n) on the device."""
    return _apply(sketch, Y, "Y", "y")


def estimate(X, Y, k: int, kind: str = "gaussian", *, seed: int = 0, stream: int = 0, **options):
    """Unbiased estimate of ``X^T Y`` (m, n) from a sketch of size ``k``; see :func:`lrmath.randmm.estimate`."""
    check_array(X, "X", ndim=2)
    check_array(Y, "Y", ndim=2)
    if int(X.shape[0]) != int(Y.shape[0]):
        raise ShapeError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must have the same number of rows")
    t = int(X.shape[0])
    sk = make_sketch(kind, t, k, seed=seed, stream=stream, X=X, Y=Y, **options)
    LX = _apply(sk, X, "X", "x", keep=True)
    RY = _apply(sk, Y, "Y", "y", keep=True)
    return K._restore(LX.T @ RY, K._dtype_name(X), X)
