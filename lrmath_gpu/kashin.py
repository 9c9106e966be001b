"""GPU mirrors of :mod:`lrmath.kashin` hot paths (same names and signatures).

* :func:`decompose` -- the truncation split runs one fused kernel per iteration
  (``kashin_step``: transform, clip, residual update and the residual norm in one pass over
  ``r, u, v``) when ``Q`` is the randomized Hadamard operator on a power-of-two block
  <= 4096; other operators and the greedy method run the same algebra with the ``fwht``
  kernels (or the operator's device path) for the transforms.
* :func:`quantize` -- the encoder of :func:`lrmath.kashin.quantize` (all three methods) on
  the device: split, centroid coding (``centroid_code`` kernel), least-squares and joint
  scales, error feedback, alternating sweeps, table refits, bit packing (``pack_bits``).
  Lloyd-Max tables are fitted by :func:`lrmath.kashin.lloyd_max` on the host from the same
  deterministic strided subsample (<= 2**18 values) the reference uses. Returns the
  reference's :class:`~lrmath.kashin.KashinQuantized` (host arrays; save/load unchanged).
* :func:`dequantize` -- decode kernels + one transform: the dense ``W_hat`` on the device.
* :func:`linear` -- ``X W_hat^T`` by the dequantize-and-multiply kernel (``kashin_matmul``)
  that never builds ``W_hat`` (row-aligned blocks; otherwise ``W_hat`` is decoded on the
  device and multiplied by cuBLAS).

Results agree with the reference to float32 rounding; codes can differ where a value
sits within rounding of a centroid midpoint, so tests compare reconstruction errors.
"""

from __future__ import annotations

import math

import numpy as np

from lrmath import ops
from lrmath.backend import check_array
from lrmath.errors import ShapeError
from lrmath.kashin import Decomposition, DecompositionReport, KashinQuantized, lloyd_max, split_bits
from lrmath.kashin.decompose import _check_args as _check_decompose_args
from lrmath.kashin.decompose import as_operator
from lrmath.kashin.quantize import METHODS as _Q_METHODS

from . import kernels as K
from ._device import resolve, to_caller, to_work, work_xp

__all__ = ["decompose", "quantize", "dequantize", "linear"]

_SPLIT_CLIP = 0.25  # lrmath.kashin.quantize's split settings for the default method
_SPLIT_ITERS = 6
_F16_MAX = 65504.0


def _frame(op, xp, be):
    """``(fwd, bwd)``: rows ``x`` (b, N) -> ``Q x`` and ``Q^T x`` on work arrays."""
    if op.kind == "hadamard":
        return (lambda r: K.hadamard(r, op.seed, axis=1, backend=be),
                lambda r: K.hadamard(r, op.seed, axis=1, transpose=True, backend=be))
    if op.kind == "identity":
        return (lambda r: r), (lambda r: r)
    return (lambda r: op.apply(r, axis=1)), (lambda r: op.apply_t(r, axis=1))


def _fused_ok(op) -> bool:
    N = op.n
    return op.kind == "hadamard" and N & (N - 1) == 0 and N <= 4096


def _norm(xp, r):
    return xp.sqrt(xp.sum(r * r, axis=-1, keepdims=True))


def decompose(x, Q="hadamard", *, method: str = "truncation", iters: int | None = None, tol: float = 1e-6,
              clip: float = 1.0, seed: int = 0) -> Decomposition:
    """Kashin representation ``x = u + Q v`` of every block ``x[..., :]``; see
    :func:`lrmath.kashin.decompose` (same parameters, same stop rule and report)."""
    check_array(x, "x")
    iters = _check_decompose_args(x, method, iters, tol, clip)
    N = int(x.shape[-1])
    op = as_operator(Q, N, seed)
    be = resolve(None)
    xp = work_xp(be)
    lead = tuple(int(s) for s in x.shape[:-1])
    X = to_work(x, xp, dtype=xp.float32).reshape(-1, N)
    nx = _norm(xp, X)
    safe = xp.where(nx > 0, nx, xp.ones_like(nx))
    u = xp.zeros_like(X)
    v = xp.zeros_like(X)
    res = [1.0 if int(X.shape[0]) else 0.0]
    sq = math.sqrt(N)
    k = 0
    extra: dict = {}
    if method == "truncation" and _fused_ok(op):
        r = X.copy()
        rn2 = xp.ascontiguousarray(xp.sum(X * X, axis=1))
        for k in range(1, iters + 1):
            K.kashin_step(r, u, v, rn2, op.seed, float(clip), backend=be)
            rel = float(xp.max(xp.sqrt(rn2) / safe[:, 0])) if X.shape[0] else 0.0
            res.append(rel)
            if rel <= tol:
                break
        extra["fused"] = True
    else:
        fwd, bwd = _frame(op, xp, be)
        r = X
        steps_u = 0
        for k in range(1, iters + 1):
            if method == "truncation":
                lam = clip * _norm(xp, r) / sq
                a = xp.clip(r, -lam, lam)
                u = u + a
                w = bwd(r - a)
                b = xp.clip(w, -lam, lam)
                v = v + b
                r = fwd(w - b)
            else:
                w = bwd(r)
                l1r = xp.sum(xp.abs(r), axis=-1, keepdims=True)
                l1w = xp.sum(xp.abs(w), axis=-1, keepdims=True)
                take_u = l1r > l1w
                du = xp.where(take_u, xp.sign(r) * (l1r / N), 0.0).astype(xp.float32)
                dv = xp.where(take_u, 0.0, xp.sign(w) * (l1w / N)).astype(xp.float32)
                u = u + du
                v = v + dv
                r = r - du - fwd(dv)
                steps_u += int(xp.sum(take_u))
            rel = float(xp.max(_norm(xp, r) / safe)) if X.shape[0] else 0.0
            res.append(rel)
            if rel <= tol:
                break
        if method == "greedy":
            extra["u_step_fraction"] = steps_u / max(k * int(X.shape[0]), 1)
    if iters == 0:
        k = 0
    u = u + r
    inf = xp.maximum(xp.max(xp.abs(u), axis=-1), xp.max(xp.abs(v), axis=-1)) if X.shape[0] else xp.zeros(0, xp.float32)
    Kc = xp.where(nx[:, 0] > 0, inf * sq / safe[:, 0], xp.zeros_like(inf))
    Kc = np.asarray(Kc.get() if hasattr(Kc, "get") else Kc, dtype=np.float64).reshape(lead)
    report = DecompositionReport(method, int(k), np.asarray(res, np.float64), Kc, bool(res[-1] <= tol), float(tol), N, extra)
    dt = K._dtype_name(x)
    return Decomposition(K._restore(u.reshape(lead + (N,)), dt, x), K._restore(v.reshape(lead + (N,)), dt, x), op, report)


# ----------------------------------------------------------------------------- the encoder
def _dot(xp, a, b):
    return xp.sum(a * b, axis=1, keepdims=True)


def _rms(xp, a):
    return xp.sqrt(_dot(xp, a, a) / a.shape[-1])


def _ls_scale(xp, target, c):
    num, den = _dot(xp, target, c), _dot(xp, c, c)
    return xp.where(den > 0, num / xp.where(den > 0, den, 1), 0).astype(xp.float32)


def _joint_scales(xp, x, a, Qb, b):
    g11, g22, g12 = _dot(xp, a, a), _dot(xp, b, b), _dot(xp, a, Qb)
    r1, r2 = _dot(xp, a, x), _dot(xp, Qb, x)
    det = g11 * g22 - g12 * g12
    ok = det > 1e-12 * xp.maximum(g11 * g22, 1e-30)
    ds = xp.where(ok, det, 1)
    alpha = xp.where(ok, (r1 * g22 - r2 * g12) / ds, _ls_scale(xp, x, a))
    beta = xp.where(ok, (r2 * g11 - r1 * g12) / ds, 0)
    return alpha.astype(xp.float32), beta.astype(xp.float32)


def _table(xp, bits, z):
    if bits == 1:
        return xp.asarray(np.array([-1.0, 1.0], np.float32))
    flat = z.reshape(-1)
    step = -(-int(flat.size) // (1 << 18))
    sub = flat[::step] if step > 1 else flat  # the reference's deterministic strided subsample
    sub = np.asarray(sub.get() if hasattr(sub, "get") else sub)
    return xp.asarray(lloyd_max(sub, 1 << bits))


def _code(xp, be, target, scale, table):
    N = int(target.shape[1])
    return K.centroid_code(xp.ascontiguousarray(target), xp.ascontiguousarray(scale.reshape(-1)), table, N, backend=be)


def _refit(xp, target, scale, codes, table):
    k = int(table.size)
    s = xp.broadcast_to(scale, target.shape).reshape(-1).astype(xp.float64)
    idx = codes.reshape(-1).astype(xp.int64)
    num = xp.bincount(idx, weights=s * target.reshape(-1).astype(xp.float64), minlength=k)
    den = xp.bincount(idx, weights=s * s, minlength=k)
    new = xp.where(den > 0, num / xp.where(den > 0, den, 1), table)
    if bool(xp.any(xp.diff(new) <= 0)):
        return table
    return new.astype(xp.float32)


def _safe(xp, s):
    return xp.where(s > 0, s, 1)


def quantize(W, bits: int = 2, *, block: int = 256, basis="hadamard", method: str = "default",
             iters: int | None = None, seed: int = 0) -> KashinQuantized:
    """Kashin-quantize ``W (out, in)`` on the device; see :func:`lrmath.kashin.quantize`."""
    bu, bv = split_bits(bits)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 8 or block % 8:
        raise ValueError(f"block must be a positive multiple of 8, got {block!r}")
    if method not in _Q_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {_Q_METHODS}")
    iters = 10 if iters is None else iters
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
    check_array(W, "W", ndim=2)
    if isinstance(basis, str) and basis not in ops.KINDS[:-1]:
        raise ValueError(f"unknown basis {basis!r}; choose one of {ops.KINDS[:-1]} or pass an operator")
    op = as_operator(basis, int(block), int(seed))
    N = op.n
    be = resolve(None)
    xp = work_xp(be)
    out, inn = (int(s) for s in W.shape)
    B = -(-(out * inn) // N)
    flat = xp.zeros(B * N, dtype=xp.float32)  # flat row-major blocks, zero padding at the end
    flat[: out * inn] = to_work(W, xp, dtype=xp.float32).reshape(-1)
    x = flat.reshape(B, N)
    fwd, bwd = _frame(op, xp, be)
    info: dict = {}
    if method == "default":
        dec = decompose(x, op, method="truncation", iters=_SPLIT_ITERS, tol=1e-4, clip=_SPLIT_CLIP)
        u = dec.u
        info["split_K_max"] = dec.report.K_max
        ru = _rms(xp, u)
        Tu = _table(xp, bu, u / _safe(xp, ru))
        cu = _code(xp, be, u, ru, Tu)
        a = Tu[cu.astype(xp.int64)]
        alpha = _ls_scale(xp, u, a)
        y = bwd(x - alpha * a)
        ry = _rms(xp, y)
        Tv = _table(xp, bv, y / _safe(xp, ry))
        cv = _code(xp, be, y, ry, Tv)
        b = Tv[cv.astype(xp.int64)]
        Qb = fwd(b)
        alpha, beta = _joint_scales(xp, x, a, Qb, b)
        hist = [_rel_err(xp, x, alpha * a + beta * Qb)]
        for _ in range(int(iters)):
            tgt = x - beta * Qb
            cu = _code(xp, be, tgt, alpha, Tu)
            if bu > 1:
                Tu = _refit(xp, tgt, alpha, cu, Tu)
            a = Tu[cu.astype(xp.int64)]
            alpha, beta = _joint_scales(xp, x, a, Qb, b)
            t = bwd(x - alpha * a)
            cv = _code(xp, be, t, beta, Tv)
            if bv > 1:
                Tv = _refit(xp, t, beta, cv, Tv)
            b = Tv[cv.astype(xp.int64)]
            Qb = fwd(b)
            alpha, beta = _joint_scales(xp, x, a, Qb, b)
            hist.append(_rel_err(xp, x, alpha * a + beta * Qb))
        info["sweep_error"] = hist
    else:
        dec = decompose(x, op, method="greedy" if method == "greedy" else "truncation", tol=1e-4)
        u, v = dec.u, dec.v
        info["split_K_max"] = dec.report.K_max
        info["split_iterations"] = dec.report.iterations
        ru, rv = _rms(xp, u), _rms(xp, v)
        Tu = _table(xp, bu, u / _safe(xp, ru))
        Tv = _table(xp, bv, v / _safe(xp, rv))
        cu = _code(xp, be, u, ru, Tu)
        cv = _code(xp, be, v, rv, Tv)
        alpha = _ls_scale(xp, u, Tu[cu.astype(xp.int64)])
        beta = _ls_scale(xp, v, Tv[cv.astype(xp.int64)])
    for nm, s in (("alpha", alpha), ("beta", beta)):
        if float(xp.max(xp.abs(s))) > _F16_MAX:
            raise ValueError(f"a block scale {nm} = {float(xp.max(xp.abs(s))):.3g} exceeds the float16 range; rescale W first")
    host = lambda a: np.asarray(a.get() if hasattr(a, "get") else a)  # noqa: E731
    return KashinQuantized(
        shape=(out, inn), dtype=K._dtype_name(W), block=N, bits_u=bu, bits_v=bv, basis=op.spec, method=method,
        codes_u=host(K.pack_bits(cu, bu, backend=be)), codes_v=host(K.pack_bits(cv, bv, backend=be)),
        scale_u=host(alpha[:, 0]).astype(np.float16), scale_v=host(beta[:, 0]).astype(np.float16),
        table_u=host(Tu).astype(np.float32), table_v=host(Tv).astype(np.float32), info=info,
    )


def _rel_err(xp, x, xh):
    n = float(xp.sqrt(xp.sum(x * x)))
    return float(xp.sqrt(xp.sum((x - xh) ** 2))) / n if n > 0 else 0.0


# ----------------------------------------------------------------------------- decoding and products
def _device_tensors(q: KashinQuantized, xp):
    key = ("_gpu_tensors", id(xp))
    cache = q.__dict__.setdefault("_gpu_cache", {})
    if key not in cache:
        cache[key] = {
            "codes_u": xp.asarray(q.codes_u), "codes_v": xp.asarray(q.codes_v),
            "scale_u": xp.asarray(np.asarray(q.scale_u, np.float32)), "scale_v": xp.asarray(np.asarray(q.scale_v, np.float32)),
            "table_u": xp.asarray(q.table_u), "table_v": xp.asarray(q.table_v),
        }
    return cache[key]


def dequantize(q: KashinQuantized, dtype=np.float32, *, like=None):
    """The dense ``W_hat (out, in)`` decoded on the device (FORMAT.md "Decoding").

    Returned as a work array (CuPy; NumPy under the simulator) or as the kind of ``like``.
    """
    be = resolve(None)
    xp = work_xp(be)
    t = _device_tensors(q, xp)
    B, N = q.n_blocks, q.block
    u = K.decode_codes(t["codes_u"], t["scale_u"], t["table_u"], q.bits_u, B * N, N, backend=be)
    v = K.decode_codes(t["codes_v"], t["scale_v"], t["table_v"], q.bits_v, B * N, N, backend=be)
    fwd, _ = _frame(q.Q, xp, be)
    w = (u.reshape(B, N) + fwd(v.reshape(B, N))).reshape(-1)[: q.shape[0] * q.shape[1]].reshape(q.shape)
    w = w.astype(dtype)
    return to_caller(w, like) if like is not None else w


def linear(q: KashinQuantized, X):
    """``X @ W_hat^T`` for ``X (..., in)`` -> ``(..., out)`` without the dense ``W_hat`` (row-aligned blocks).

    ``w . x = u . x + v . (Q^T x)`` blockwise: the input is transformed once (``fwht``
    kernels) and the ``kashin_matmul`` kernel decodes both factors from the packed codes
    while it multiplies. Returns float32 of ``X``'s kind.
    """
    check_array(X, "X")
    out, inn = q.shape
    if int(X.shape[-1]) != inn:
        raise ShapeError(f"X must have last dimension {inn}, got shape {tuple(X.shape)}")
    be = resolve(None)
    xp = work_xp(be)
    lead = tuple(int(s) for s in X.shape[:-1])
    X2 = to_work(X, xp, dtype=xp.float32).reshape(-1, inn)
    t = int(X2.shape[0])
    N = q.block
    if not q.row_aligned:
        W = dequantize(q)
        return to_caller((X2 @ W.T).reshape(lead + (out,)), X)
    _, bwd = _frame(q.Q, xp, be)
    Xt = xp.ascontiguousarray(bwd(X2.reshape(-1, N)).reshape(t, inn))
    d = _device_tensors(q, xp)
    Y = K.kashin_matmul(X2, Xt, d["codes_u"], d["codes_v"], d["scale_u"], d["scale_v"], d["table_u"], d["table_v"],
                        q.bits_u, q.bits_v, N, out, backend=be)
    return to_caller(Y.reshape(lead + (out,)), X)
