"""Kashin quantization of a weight matrix: ``W`` in blocks ``w = u + Q v``, both factors coded.

Every row of ``W`` (torch layout ``(out, in)``) is cut into blocks of ``N`` weights (zero-padded on
the right, see FORMAT.md). Each block is stored as

.. math::  \\hat w = \\alpha\\, T_u[c_u] + \\beta\\, Q\\, T_v[c_v]

with per-block float16 scales ``alpha, beta``, a per-tensor centroid table ``T`` per factor
(``2**bits_u`` and ``2**bits_v`` entries; ``[-1, +1]`` at one bit, i.e. sign codes) and integer
codes ``c``. ``bits = bits_u + bits_v`` code bits per weight (odd: ``u`` gets the extra bit).

Methods (``method=``)
---------------------
``"default"`` -- the measured best recipe (facts.md, "Kashin quantization"):
    1. truncation split ``x = u + Q v`` (Kashin constant ~1.0, see :mod:`.decompose`);
    2. code ``u`` (nearest centroid of ``u / rms(u)``; Lloyd-Max table at >= 2 bits);
    3. error feedback: code ``v`` from ``Q^T (x - u_hat)`` rather than from the split's ``v``;
    4. joint least-squares scales ``(alpha, beta)`` per block (a 2x2 normal equation);
    5. ``iters`` alternating sweeps (default 10): re-code ``u`` against ``x - beta Q v_hat``, refit,
       re-code ``v`` against ``Q^T (x - alpha u_hat)``, refit (and refit the tables at >= 2 bits).
       Each step minimises the block error over one group of variables with the rest fixed, so
       the error never increases.
``"greedy"`` -- the paper's variant, kept for comparison: greedy l1 pursuit split (paper's public
    code), then each factor coded on its own (signs / Lloyd-Max centroids, least-squares scale per
    factor; mean-abs for signs), no feedback, no sweeps.
``"truncation"`` -- the truncation split with the same independent coding as ``"greedy"`` (an
    ablation: isolates the effect of the split).

Decisions (where the paper is silent): scales are float16 and tables float32 (both counted in
``bits_per_weight``); blocks of zeros get zero scales; if a scale exceeds the float16 range the
quantizer refuses the matrix (``ValueError``) instead of storing ``inf``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..backend import check_array, check_choice, check_int, check_path, public, to_numpy
from ..errors import (
    ArgumentTypeError,
    DTypeError,
    EmptyInputError,
    FormatError,
    NonFiniteError,
    OptionError,
    ShapeError,
)
from . import format as fmt
from .decompose import _frame_rows, as_operator, decompose
from ..errors import OptionError

__all__ = ["quantize", "KashinQuantized", "lloyd_max", "nearest_code", "split_bits", "METHODS"]

METHODS = ("default", "greedy", "truncation")
_F16_MAX = 65504.0
_F32_MAX = float(np.finfo(np.float32).max)
# Split used by the default method. A low truncation level (0.25 x RMS) and a few iterations gave
# the lowest final error on the MiniLM matrices (0.302 vs 0.317 at the 1.0 x RMS level; measured
# with ``benchmarks/bench_kashin.py``); only u's codes come from the split (v is re-derived by
# error feedback), so it need not converge fully.
_SPLIT_CLIP = 0.25
_SPLIT_ITERS = 6
# Alternations of u's and v's GPTQ loops per block (lrmath.kashin.gptq.alternate_uv); each round
# costs two column loops over the block, and a round is kept only where it lowers the cost.
_GPTQ_ROUNDS = 2
GPTQ_MODES = ("uv", "u")


def _cal_split(bits: int) -> tuple[int, int]:
    """Default ``(bits_u, bits_v)`` of calibrated ``gptq='uv'`` coding: sign codes for ``u``, the rest
    for ``v``. On the 21 linears of SmolLM2-135M blocks 0, 14 and 29 the mean per-layer output error,
    relative to the ``u``-only coder at the even split, is 0.68 with 1+2 against 0.79 with 2+1 at
    3 bits, and 0.46 with 1+3 against 0.70 with 2+2 at 4 bits
    (``python -m benchmarks kashin_cal_layers``, ``benchmarks/results/kashin_cal_layers_cpu.md``).
    From 5 bits on the same rule applies without a measurement of its own."""
    return 1, bits - 1


_TRACK = False  # record the error after every sweep in ``info['sweep_error']`` (costs a pass each)


@public
def split_bits(bits) -> tuple[int, int]:
    """``bits`` (2..8, both factors together) -> ``(bits_u, bits_v)``; odd totals give ``u`` the extra bit."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ArgumentTypeError(f"bits must be an integer 2..8, got {bits!r} ({type(bits).__name__})")
    bits = int(bits)
    if not 2 <= bits <= 8:
        raise OptionError(f"bits must be in 2..8 (code bits per weight for u and v together), got {bits}")
    return (bits + 1) // 2, bits // 2


@public
def nearest_code(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the ascending ``table`` for every value of ``z``.

    Ties (a value exactly halfway) go to the higher index, as FORMAT.md specifies.
    """
    mids = ((table[1:] + table[:-1]) * 0.5).astype(z.dtype)
    if mids.size <= 15:  # a few comparisons beat a binary search on CPU
        c = np.zeros(z.shape, np.uint8)
        for m in mids:
            c += z >= m
        return c
    return np.searchsorted(mids, z, side="right").astype(np.uint8)


@public
def lloyd_max(z: np.ndarray, k: int, *, iters: int = 40, max_samples: int = 1 << 18) -> np.ndarray:
    """1-D k-means (Lloyd-Max quantizer) of the values ``z``: ``k`` ascending centroids.

    Starts from the ``(i + 1/2) / k`` quantiles; a deterministic strided subsample of at most
    ``max_samples`` values is used. ``k = 2`` with symmetric data gives ``+-E|z|``.
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if z.size > max_samples:
        z = z[:: -(-z.size // max_samples)]
    c = np.quantile(z, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, z, side="right")
        cnt = np.bincount(idx, minlength=k)
        s = np.bincount(idx, weights=z, minlength=k)
        new = np.where(cnt > 0, s / np.maximum(cnt, 1), c)
        new.sort()
        if np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    return _strictly_ascending(c)


def _strictly_ascending(c: np.ndarray) -> np.ndarray:
    c = np.sort(np.asarray(c, dtype=np.float64))
    span = max(float(c[-1] - c[0]), 1.0)
    for i in range(1, c.size):  # duplicates (degenerate data) are pulled apart by a hair
        if c[i] <= c[i - 1]:
            c[i] = c[i - 1] + 1e-6 * span
    out = c.astype(np.float32)
    for i in range(1, out.size):  # the hair may vanish in float32 (what is stored): one ulp at least
        if out[i] <= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(np.inf))
    return out


def _table(bits: int, z: np.ndarray) -> np.ndarray:
    if bits == 1:
        return np.array([-1.0, 1.0], dtype=np.float32)
    return lloyd_max(z, 1 << bits)


def _dot(a, b):
    """Per-block inner products ``sum_i a[b, i] b[b, i]`` as (B, 1) (einsum: no temporary)."""
    return np.einsum("ij,ij->i", a, b)[:, None]


def _rms(a):
    return np.sqrt(_dot(a, a) / a.shape[-1])


def _ls_scale(target, code_vals):
    """Per-block least-squares scale ``<t, c> / <c, c>`` (0 where ``c = 0``)."""
    num = _dot(target, code_vals)
    den = _dot(code_vals, code_vals)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0).astype(target.dtype)


def _joint_scales(x, xt, a, Qb, b, aa=None, bb=None):
    """Least-squares ``(alpha, beta)`` per block for ``x ~ alpha a + beta Q b``.

    The 2x2 normal equations use ``||Qb|| = ||b||`` and ``<Qb, x> = <b, Q^T x>`` (``xt = Q^T x``);
    ``aa``/``bb`` may pass ``||a||^2``/``||b||^2`` when known (``N`` for sign codes).
    """
    g11 = _dot(a, a) if aa is None else aa
    g22 = _dot(b, b) if bb is None else bb
    g12 = _dot(a, Qb)
    r1 = _dot(a, x)
    r2 = _dot(b, xt)
    det = g11 * g22 - g12 * g12
    ok = det > 1e-6 * g11 * g22
    dsafe = np.where(ok, det, 1)
    g11s = np.where(g11 > 0, g11, 1)
    alpha = np.where(ok, (r1 * g22 - r2 * g12) / dsafe, np.where(g11 > 0, r1 / g11s, 0))
    beta = np.where(ok, (r2 * g11 - r1 * g12) / dsafe, 0)
    return alpha.astype(x.dtype), beta.astype(x.dtype)


def _code_against(target, scale, table):
    """Optimal codes of ``target ~ scale * table[c]`` for a fixed scale (nearest of target/scale).

    For any ``scale != 0``, ``||t - s T[c]||^2 = s^2 ||t/s - T[c]||^2`` is minimised entrywise by
    the nearest centroid of ``t / s``.
    """
    if table.size == 2 and table[0] == -1 and table[1] == 1:
        # sign code: z = t / s >= 0  <=>  t * s >= 0 (s != 0); ties (t = 0) go to +1
        return (target * np.where(scale != 0, scale, 1) >= 0).view(np.uint8)
    z = target / np.where(scale != 0, scale, 1)
    return nearest_code(z, table)


def _values(table, codes):
    if table.size == 2 and table[0] == -1 and table[1] == 1:
        v = codes.astype(np.float32)
        v *= 2
        v -= 1
        return v
    return table[codes]


def _refit_table(target, scale, codes, table):
    """LS table given codes and scales: ``T[k] = sum scale*t / sum scale^2`` over entries coded k."""
    k = table.size
    s = np.broadcast_to(scale, target.shape).reshape(-1).astype(np.float64)
    idx = codes.reshape(-1).astype(np.intp)
    num = np.bincount(idx, weights=s * target.reshape(-1), minlength=k)
    den = np.bincount(idx, weights=s * s, minlength=k)
    new = np.where(den > 0, num / np.where(den > 0, den, 1), table).astype(np.float32)
    if np.any(np.diff(new) <= 0):  # keep the stored float32 table ascending (the codes refer to positions)
        return table
    return new


def _encode_blocks(x, op, bu, bv, method, iters):
    """The quantizer proper on blocks ``x`` (B, N) float32; returns codes, scales, tables, info."""
    fwd, bwd = _frame_rows(op, np, x.dtype)
    N = x.shape[1]
    info: dict[str, Any] = {}
    if method == "default":
        dec = decompose(x, op, method="truncation", iters=_SPLIT_ITERS, tol=1e-4, clip=_SPLIT_CLIP)
        u = dec.u
        info["split_K_max"] = dec.report.K_max
        del dec
        ru = _rms(u)
        Tu = _table(bu, u / np.where(ru > 0, ru, 1))
        cu = _code_against(u, ru, Tu)
        a = _values(Tu, cu)
        alpha = _ls_scale(u, a)
        del u
        y = bwd(x - alpha * a)  # error feedback: v codes what u's codes left over
        ry = _rms(y)
        Tv = _table(bv, y / np.where(ry > 0, ry, 1))
        cv = _code_against(y, ry, Tv)
        del y
        b = _values(Tv, cv)
        Qb = fwd(b)
        xt = bwd(x)
        aa = np.float32(N) if bu == 1 else None
        bb = np.float32(N) if bv == 1 else None
        alpha, beta = _joint_scales(x, xt, a, Qb, b, aa, bb)
        hist = [_rel_err(x, alpha * a + beta * Qb)] if _TRACK else []
        for _ in range(iters):
            t = x - beta * Qb
            cu = _code_against(t, alpha, Tu)
            if bu > 1:
                Tu = _refit_table(t, alpha, cu, Tu)
            a = _values(Tu, cu)
            alpha, beta = _joint_scales(x, xt, a, Qb, b, aa, bb)
            t = alpha * a
            np.subtract(x, t, out=t)
            t = bwd(t)
            cv = _code_against(t, beta, Tv)
            if bv > 1:
                Tv = _refit_table(t, beta, cv, Tv)
            del t
            b = _values(Tv, cv)
            Qb = fwd(b)
            alpha, beta = _joint_scales(x, xt, a, Qb, b, aa, bb)
            if _TRACK:
                hist.append(_rel_err(x, alpha * a + beta * Qb))
        if hist:
            info["sweep_error"] = hist
    else:
        dec = decompose(x, op, method="greedy" if method == "greedy" else "truncation", tol=1e-4)
        u, v = dec.u, dec.v
        info["split_K_max"] = dec.report.K_max
        info["split_iterations"] = dec.report.iterations
        Tu = _table(bu, u / np.where(_rms(u) > 0, _rms(u), 1))
        Tv = _table(bv, v / np.where(_rms(v) > 0, _rms(v), 1))
        cu = _code_against(u, _rms(u), Tu)
        cv = _code_against(v, _rms(v), Tv)
        alpha = _ls_scale(u, _values(Tu, cu))
        beta = _ls_scale(v, _values(Tv, cv))
    return cu, cv, alpha[:, 0], beta[:, 0], Tu, Tv, info


def _rel_err(x, xh):
    n = float(np.linalg.norm(x))
    return float(np.linalg.norm(x - xh)) / n if n > 0 else 0.0


def _check_weight(W, name="W"):
    check_array(W, name, ndim=2, finite=False, nonempty=False)
    shp = tuple(int(s) for s in W.shape)
    if 0 in shp:
        raise EmptyInputError(f"{name} is empty (shape {shp})")
    A = np.asarray(to_numpy(W))
    if A.dtype.kind not in "f" and "bfloat16" not in str(A.dtype):
        raise DTypeError(f"{name} must have a real floating dtype, got {A.dtype}")
    A32 = np.asarray(A, dtype=np.float32) if A.dtype != np.float64 else A
    if not np.all(np.isfinite(A32)):
        bad = int(np.size(A32) - np.count_nonzero(np.isfinite(A32)))
        raise NonFiniteError(f"{name} holds {bad} NaN/Inf entries (shape {shp}); quantization needs finite weights")
    big = float(np.max(np.abs(A32)))
    if big > _F32_MAX / 4:  # the codec computes in float32: squares and sums of such weights overflow
        raise NonFiniteError(f"{name} has an entry of magnitude {big:.3g}, beyond what float32 arithmetic can encode (limit {_F32_MAX / 4:.3g}); rescale it first")
    return A32, str(W.dtype).rsplit(".", 1)[-1]


MAX_BLOCK = 1 << 16
MAX_ITERS = 10_000


def check_options(bits, *, block=256, basis="hadamard", method="default", iters=None, seed=0):
    """Validate :func:`quantize`'s options before any data is read (the CLI calls it first).

    Returns ``(bits_u, bits_v, block, iters, seed)`` with ``iters`` defaulted to 10.
    """
    bu, bv = split_bits(bits)
    block = check_int(block, "block", minimum=8, maximum=MAX_BLOCK)
    if block % 8:
        raise OptionError(f"block must be a positive multiple of 8, got {block}")
    check_choice(method, "method", METHODS)
    iters = 10 if iters is None else check_int(iters, "iters", minimum=0, maximum=MAX_ITERS)
    seed = check_int(seed, "seed", minimum=0, maximum=2**64 - 1)
    if isinstance(basis, str):
        if basis == "kron":
            raise OptionError("basis='kron' needs explicit factors: pass ops.kron(...) as the basis")
        check_choice(basis, "basis", [k for k in ops.KINDS if k != "kron"])
    elif not isinstance(basis, (dict, ops.OrthogonalOperator)):
        raise ArgumentTypeError(f"basis must be a kind name, a spec dict or an OrthogonalOperator, got {type(basis).__name__}")
    return bu, bv, block, iters, seed


def _basis_op(basis, block, seed):
    if isinstance(basis, str) and basis == "kron":
        raise OptionError("basis='kron' needs explicit factors: pass ops.kron(...) as the basis")
    if isinstance(basis, str) and basis not in ops.KINDS:
        raise OptionError(f"unknown basis {basis!r}; choose one of {ops.KINDS[:-1]} or pass an operator")
    return as_operator(basis, block, seed)


def _row_blocks(inn: int, N: int, blocks=None) -> list[int]:
    """Column-block sizes of the rows layout (FORMAT.md): explicit ``blocks``, or ``k = max(1, in // N)``
    equal blocks when ``in / k`` is a whole multiple of 8 (576 -> 2 x 288, 384 -> 1 x 384,
    1536 -> 6 x 256: at most one pair of scales per ``N`` weights), else blocks of ``N`` and a
    ragged last block (e.g. 576 with N = 512 -> 512 + 64)."""
    if inn % 8:
        raise ShapeError(f"the rows layout needs in_features to be a multiple of 8, got {inn}")
    if blocks is not None:
        sizes = [int(b) for b in blocks]
        if not sizes or any(b < 1 for b in sizes) or sum(sizes) != inn:
            raise ShapeError(f"blocks {blocks!r} must be positive sizes summing to in = {inn}")
        return sizes
    k = max(1, inn // N)
    if inn % k == 0 and (inn // k) % 8 == 0:
        return [inn // k] * k
    sizes = [N] * (inn // N)
    if inn - N * len(sizes):
        sizes.append(inn - N * len(sizes))
    return sizes


def _block_ops(basis, sizes, seed):
    """One operator per column block: the kind of ``basis`` at each size (same seed)."""
    if isinstance(basis, ops.OrthogonalOperator) or isinstance(basis, dict):
        op = ops.orthogonal(basis)
        if op.kind == "kron" or any(b != op.n for b in sizes):
            if op.kind == "kron" or len(set(sizes)) > 1 or sizes[0] != op.n:
                raise OptionError("the rows layout builds one operator per column block: pass basis as a kind name, "
                                 f"or an operator of size {sizes[0]} when all blocks have that size")
        return [op] * len(sizes)
    cache = {}
    for b in sizes:
        if b not in cache:
            cache[b] = _basis_op(basis, b, seed)
    return [cache[b] for b in sizes]


def _f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _encode_rows(A, sizes, opl, bu, bv, iters, H=None, damp=0.01, gptq="uv"):
    """Rows layout: code each column block of all rows (data-free recipe), or with GPTQ propagation
    (``gptq='uv'``: both factors, :func:`lrmath.kashin.gptq.alternate_uv`; ``'u'``: ``u`` only).

    Returns codes (out, in) for u and v, scales (out, k), tables (k, 2**bits) and info.
    """
    from .gptq import alternate_uv, gptq_columns, inverse_cholesky, prepare_hessian

    out, inn = A.shape
    k = len(sizes)
    bounds = list(zip(np.cumsum([0] + sizes[:-1]).tolist(), np.cumsum(sizes).tolist()))
    CU = np.zeros((out, inn), np.uint8)
    CV = np.zeros((out, inn), np.uint8)
    AL = np.zeros((out, k), np.float32)
    BE = np.zeros((out, k), np.float32)
    TU = np.zeros((k, 1 << bu), np.float32)
    TV = np.zeros((k, 1 << bv), np.float32)
    info: dict[str, Any] = {}

    def fit(x, j):
        op = opl[j]
        cu, cv, alpha, beta, Tu, Tv, inf = _encode_blocks(np.ascontiguousarray(x, np.float32), op, bu, bv, "default", iters)
        alpha, beta = _f16(alpha), _f16(beta)  # what is stored: propagate the error of the stored values
        fwd, _ = _frame_rows(op, np, np.float32)
        P = (beta[:, None] * fwd(_values(Tv, cv))).astype(np.float64)
        info["split_K_max"] = max(info.get("split_K_max", 0.0), inf.get("split_K_max", 0.0))
        return P, alpha, Tu, (cu, cv, alpha, beta, Tu, Tv)

    if H is None:
        states = [fit(A[:, c0:c1], j)[3] for j, (c0, c1) in enumerate(bounds)]
        ucodes = None
    else:
        Hd, dead = prepare_hessian(H, inn, damp)
        U = inverse_cholesky(Hd)
        if gptq == "uv":
            W = np.array(A, dtype=np.float64)
            W[:, dead] = 0
            states, ucodes = [], None
            for j, (c0, c1) in enumerate(bounds):
                x0 = W[:, c0:c1]
                cu, cv, alpha, beta, Tu, Tv = fit(x0, j)[3]
                fwd, _ = _frame_rows(opl[j], np, np.float64)
                cu, cv, alpha, beta, Err = alternate_uv(x0, U[c0:c1, c0:c1], fwd(np.eye(c1 - c0)), alpha, beta,
                                                        Tu, Tv, cu, cv, rounds=_GPTQ_ROUNDS, round_scales=_f16)
                states.append((cu, cv, alpha, beta, Tu, Tv))
                if c1 < inn:
                    W[:, c1:] -= Err @ U[c0:c1, c1:]
        else:
            ucodes, states, _ = gptq_columns(A, U, bounds, fit, dead=dead)
        info["calibrated"] = gptq
        info["dead_columns"] = int(np.count_nonzero(dead))
    for j, ((c0, c1), (cu, cv, alpha, beta, Tu, Tv)) in enumerate(zip(bounds, states)):
        CU[:, c0:c1] = cu if ucodes is None else ucodes[:, c0:c1]
        CV[:, c0:c1] = cv
        AL[:, j], BE[:, j], TU[j], TV[j] = alpha, beta, Tu, Tv
    return CU, CV, AL, BE, TU, TV, info


@public
def quantize(W, bits: int = 2, *, block: int = 256, basis="hadamard", method: str = "default",
             iters: int | None = None, seed: int = 0, layout: str | None = None, blocks=None,
             calibration=None, damp: float = 0.01, rank: int | None = None, rank_bpw: float | None = None,
             lowrank: str | None = None, lowrank_bits: int = 8, lowrank_iters: int | None = None,
             split: tuple[int, int] | None = None, gptq: str = "uv") -> "KashinQuantized":
    """Kashin-quantize a matrix, optionally calibration-aware and with low-rank compensation.

    Parameters
    ----------
    W : array, shape (out, in)
        The weight (torch layout), any float dtype, NumPy or torch; finite.
    bits : int, 2..8
        Code bits per weight for both factors together (``bits_u = ceil(bits/2)``,
        ``bits_v = floor(bits/2)``). Scales and tables come on top; see ``bits_per_weight``.
    block : int
        Block length ``N`` (a multiple of 8); the operator size (flat layout) or the target column
        block length (rows layout).
    basis : str, spec dict or OrthogonalOperator
        ``Q``; a kind name is built as ``ops.orthogonal(basis, block, seed)`` (per column block size
        in the rows layout).
    method : {'default', 'greedy', 'truncation'}
        See the module docstring (the rows layout always uses ``'default'``).
    iters : int, optional
        Alternating sweeps of the default method (default 10; ignored by the others).
    seed : int
        Seed of the operator.
    layout : {'flat', 'rows'}, optional
        ``'flat'`` (FORMAT.md version 1: blocks run across rows) or ``'rows'`` (row-aligned column
        blocks, one table per column block). Default: ``'rows'`` with ``calibration``, else ``'flat'``.
    blocks : list of int, optional
        Column block sizes of the rows layout (default :func:`_row_blocks`).
    calibration : array (in, in), optional
        ``H = X^T X`` of the layer's inputs ``X`` (t, in): minimise the output error
        ``||(W - W_hat) X^T||_F`` with GPTQ error propagation (:mod:`lrmath.kashin.gptq`).
    damp : float
        Relative diagonal damping of ``H`` (GPTQ's 1%).
    gptq : {'uv', 'u'}
        With ``calibration``: GPTQ's column loop re-chooses the codes of both factors, alternating,
        with the scales refitted for the output error (``'uv'``, default), or of ``u`` only
        (``'u'``, the first version); :mod:`lrmath.kashin.gptq`.
    rank, rank_bpw : int or float, optional
        Low-rank compensation ``W ~ W_hat + B A`` (:mod:`lrmath.kashin.lowrank`): a fixed rank, or
        the largest rank whose stored factors cost at most ``rank_bpw`` bits per weight.
    lowrank : {'loftq', 'lqer'}, optional
        How the factors are found (default ``'lqer'`` with ``calibration``, else ``'loftq'``).
    lowrank_bits : {16, 8, 4}
        Storage of the factors (float16, or codes with one float16 scale per factor row).
    lowrank_iters : int, optional
        Alternating rounds (default 3 for ``'loftq'``, 1 for ``'lqer'``).
    split : (int, int), optional
        ``(bits_u, bits_v)`` with ``bits_u + bits_v = bits`` instead of :func:`split_bits`. At 4 bits
        ``(1, 3)`` (sign codes for ``u``, an 8-level Lloyd-Max table for ``v``) has lower error than
        the even split on the MiniLM matrices (``python -m benchmarks kashin_bits``). With
        ``calibration`` and ``gptq='uv'`` the default is ``(1, bits - 1)`` (:func:`_cal_split`).

    Returns
    -------
    KashinQuantized
    """
    bu, bv, block, iters, seed = check_options(bits, block=block, basis=basis, method=method, iters=iters, seed=seed)
    check_choice(gptq, "gptq", GPTQ_MODES)
    if split is not None:
        if not isinstance(split, (tuple, list)) or len(split) != 2:
            raise OptionError(f"split must be a pair (bits_u, bits_v), got {split!r}")
        bu, bv = (check_int(v, "split", minimum=1, maximum=7) for v in split)
        if bu + bv != bits:
            raise OptionError(f"split {tuple(split)!r} must be two positive code widths summing to bits = {bits}")
    elif calibration is not None and gptq == "uv":
        bu, bv = _cal_split(bits)
    if layout is None:
        layout = "rows" if (calibration is not None or blocks is not None) else "flat"
    check_choice(layout, "layout", ("flat", "rows"))
    if calibration is not None and layout != "rows":
        raise OptionError("calibration needs the rows layout (row-aligned column blocks)")
    A, dtype_name = _check_weight(W)
    out, inn = A.shape
    H = None
    if calibration is not None:
        H = np.asarray(to_numpy(calibration), np.float64)
    lr_rank = _lowrank_rank(out, inn, rank, rank_bpw, lowrank_bits)
    if lowrank is None:
        lowrank = "lqer" if H is not None else "loftq"
    if lowrank not in ("loftq", "lqer"):
        raise OptionError(f"lowrank must be 'loftq' or 'lqer', got {lowrank!r}")
    if lowrank == "lqer" and H is None and lr_rank:
        raise OptionError("lowrank='lqer' weights the error by the calibration H: pass calibration=")

    def code(target):
        return _quantize_plain(target, dtype_name, bu, bv, block, basis, method, int(iters), int(seed),
                               layout, blocks, H, damp, gptq)

    if not lr_rank:
        return code(A)
    return _compensate(A, code, lr_rank, lowrank, int(lowrank_bits), lowrank_iters, H, damp)


def _lowrank_rank(out, inn, rank, rank_bpw, bits):
    from .lowrank import FACTOR_BITS, rank_for_budget

    if rank is None and rank_bpw is None:
        return 0
    if bits not in FACTOR_BITS:
        raise OptionError(f"lowrank_bits must be one of {FACTOR_BITS}, got {bits!r}")
    if rank is not None and rank_bpw is not None:
        raise OptionError("pass rank or rank_bpw, not both")
    if rank_bpw is not None:
        if not (isinstance(rank_bpw, (int, float)) and rank_bpw >= 0):
            raise OptionError(f"rank_bpw must be a non-negative number, got {rank_bpw!r}")
        return rank_for_budget(out, inn, float(rank_bpw), bits)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank <= min(out, inn):
        from ..errors import RankError

        raise RankError(f"rank must be an integer in 0..min(out, in) = {min(out, inn)}, got {rank!r}")
    return int(rank)


def _compensate(A, code, r, how, fbits, n_iter, H, damp):
    """LoftQ / LQER rounds (:mod:`.lowrank`): the factors are fitted to what the codes leave over."""
    from .gptq import prepare_hessian
    from .lowrank import pack_factor, unpack_factor, weighted_svd

    out, inn = A.shape
    L = None
    if how == "lqer":
        Hd, _ = prepare_hessian(H, inn, damp)
        L = np.linalg.cholesky(Hd)
    if n_iter is None:
        n_iter = 3 if how == "loftq" else 1
    A64 = A.astype(np.float64)
    BA = np.zeros_like(A64)
    hist, best = [], None
    for _ in range(max(1, int(n_iter))):
        q = code((A64 - BA).astype(np.float32))
        E = A64 - q.dequantize(np.float64)
        B, Af = weighted_svd(E, r, L)
        pa, sa = pack_factor(Af, fbits)
        pb, sb = pack_factor(B.T, fbits)
        Ad = unpack_factor(pa, sa, fbits, (r, inn)).astype(np.float64)
        Bd = unpack_factor(pb, sb, fbits, (r, out)).astype(np.float64).T
        BA = Bd @ Ad
        R = E - BA
        hist.append(float(np.linalg.norm(R if L is None else R @ L)))
        if best is None or hist[-1] < best[0]:  # the rounds need not be monotone: keep the best
            best = (hist[-1], q, pa, sa, pb, sb)
    _, q, pa, sa, pb, sb = best
    q.lowrank = {"rank": int(r), "bits": int(fbits), "method": how}
    q.extra = {"lowrank_a": pa, "lowrank_bt": pb}
    if sa is not None:
        q.extra.update(lowrank_a_scale=sa, lowrank_bt_scale=sb)
    q.info["lowrank_residual"] = hist
    q.method = f"{q.method}+{how}"
    return q


def _quantize_plain(A, dtype_name, bu, bv, block, basis, method, iters, seed, layout, blocks, H, damp, gptq="uv"):
    out, inn = A.shape
    if layout == "rows":
        sizes = _row_blocks(inn, int(block), blocks)
        opl = _block_ops(basis, sizes, seed)
        CU, CV, AL, BE, TU, TV, info = _encode_rows(A, sizes, opl, bu, bv, iters, H, damp, gptq)
        cu, cv, alpha, beta = CU, CV, AL.reshape(-1), BE.reshape(-1)
        Tu, Tv = TU.reshape(-1), TV.reshape(-1)
        N, basis_spec = sizes[0], opl[0].spec
        extra = {"layout": "rows", "blocks": sizes, "bases": [o.spec for o in opl]}
        mname = "calibrated" if H is not None else "default"
    else:
        op = _basis_op(basis, int(block), int(seed))
        N = op.n
        B = -(-(out * inn) // N)
        X = np.zeros(B * N, dtype=np.float32)  # flat row-major blocks, zero padding at the end (FORMAT.md)
        X[: out * inn] = A.reshape(-1)
        X = X.reshape(B, N)
        cu, cv, alpha, beta, Tu, Tv, info = _encode_blocks(X, op, bu, bv, method, int(iters))
        basis_spec, extra, mname = op.spec, {}, method
    for nm, sc in (("alpha", alpha), ("beta", beta)):
        if not np.all(np.isfinite(sc)) or np.max(np.abs(sc), initial=0.0) > _F16_MAX:
            raise NonFiniteError(f"a block scale {nm} = {float(np.max(np.abs(sc))):.3g} exceeds the float16 range of the stored scales (max {_F16_MAX:g}); rescale W first")
    return KashinQuantized(
        shape=(out, inn), dtype=dtype_name, block=N, bits_u=bu, bits_v=bv, basis=basis_spec, method=mname,
        codes_u=fmt.pack_codes(cu, bu), codes_v=fmt.pack_codes(cv, bv),
        scale_u=alpha.astype(np.float16), scale_v=beta.astype(np.float16),
        table_u=np.asarray(Tu, np.float32), table_v=np.asarray(Tv, np.float32), info=info, **extra,
    )


@public
class KashinQuantized:
    """A Kashin-quantized ``(out, in)`` matrix (see FORMAT.md for the fields).

    Use :meth:`dequantize` for the dense approximation, :meth:`linear` (``X @ W^T``),
    :meth:`matmul` (``W @ X``) and :meth:`rmatmul` (``X @ W``) to apply it without building the
    dense matrix (factors are decoded a few rows at a time), :meth:`save` / :meth:`load` for files.
    """

    _CHUNK = 1 << 20  # decoded factor entries per chunk in the products
    __array_ufunc__ = None  # so that ``ndarray @ q`` defers to :meth:`__rmatmul__`

    def __init__(self, *, shape, dtype, block, bits_u, bits_v, basis, method, codes_u, codes_v,
                 scale_u, scale_v, table_u, table_v, info=None, layout="flat", blocks=None, bases=None,
                 lowrank=None, extra=None):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = str(dtype)
        self.block = int(block)
        self.bits_u, self.bits_v = int(bits_u), int(bits_v)
        self.basis = dict(basis)
        self.method = str(method)
        self.codes_u, self.codes_v = codes_u, codes_v
        self.scale_u, self.scale_v = scale_u, scale_v
        self.table_u, self.table_v = table_u, table_v
        self.info = dict(info or {})
        self._Q = None
        # rows layout (FORMAT.md version 2): row-aligned column blocks, one operator and table each
        self.layout = str(layout)
        self.blocks = [int(b) for b in blocks] if blocks is not None else None
        self.bases = [dict(b) for b in bases] if bases is not None else None
        # low-rank compensation W ~ W_hat + B A: meta {"rank", "bits", "method"} and its tensors
        self.lowrank = dict(lowrank) if lowrank else None
        self.extra = dict(extra or {})

    # ---------------------------------------------------------------- geometry and sizes
    @property
    def bits(self) -> int:
        return self.bits_u + self.bits_v

    @property
    def n_blocks(self) -> int:
        """``ceil(out * in / N)`` blocks of the flattened matrix (flat), ``out * k`` (rows layout)."""
        if self.layout == "rows":
            return self.shape[0] * len(self.blocks)
        return -(-(self.shape[0] * self.shape[1]) // self.block)

    @property
    def row_aligned(self) -> bool:
        """Every block lies inside one row (``in % N == 0`` or the rows layout): products use the
        transformed input."""
        return self.layout == "rows" or self.shape[1] % self.block == 0

    def _col_ops(self):
        """``[(c0, c1, fwd, bwd)]`` per column block of a row (row-aligned layouts)."""
        if not hasattr(self, "_cols"):
            if self.layout == "rows":
                bounds = np.cumsum([0] + self.blocks).tolist()
                specs = self.bases
            else:
                bounds = list(range(0, self.shape[1] + 1, self.block))
                specs = [self.basis] * (len(bounds) - 1)
            cache, cols = {}, []
            for c0, c1, sp in zip(bounds[:-1], bounds[1:], specs):
                key = repr(sp)
                if key not in cache:
                    cache[key] = _frame_rows(ops.orthogonal(sp), np, np.float32)
                cols.append((c0, c1) + cache[key])
            self._cols = cols
        return self._cols

    def _xform(self, X2, transpose: bool):
        """Blockwise ``Q_j^T`` (``transpose``) or ``Q_j`` applied to the column blocks of the rows of X2."""
        Y = np.empty_like(X2)
        for c0, c1, fwd, bwd in self._col_ops():
            Y[:, c0:c1] = (bwd if transpose else fwd)(np.ascontiguousarray(X2[:, c0:c1]))
        return Y

    def lowrank_factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Decoded compensation factors ``(B (out, r), A (r, in))`` float32, or None."""
        if not self.lowrank:
            return None
        if not hasattr(self, "_lr"):
            from .lowrank import unpack_factor

            r, b = int(self.lowrank["rank"]), int(self.lowrank["bits"])
            A = unpack_factor(self.extra["lowrank_a"], self.extra.get("lowrank_a_scale"), b, (r, self.shape[1]))
            Bt = unpack_factor(self.extra["lowrank_bt"], self.extra.get("lowrank_bt_scale"), b, (r, self.shape[0]))
            self._lr = (np.ascontiguousarray(Bt.T), A)
        return self._lr

    @property
    def Q(self) -> ops.OrthogonalOperator:
        if self._Q is None:
            self._Q = ops.orthogonal(self.basis)
        return self._Q

    def tensors(self) -> dict[str, np.ndarray]:
        """Every stored tensor: the six of FORMAT.md, then the low-rank ones when present."""
        d = {t: getattr(self, t) for t in fmt.TENSORS}
        d.update({t: self.extra[t] for t in fmt.EXTRA_TENSORS if t in self.extra})
        return d

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales, tables and low-rank factors (what :meth:`save` writes besides the
        JSON header)."""
        return int(sum(np.asarray(a).nbytes for a in self.tensors().values()))

    @property
    def bits_per_weight(self) -> float:
        """``8 * nbytes / (out * in)``: codes, scales, tables and padding, per original weight."""
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    # ---------------------------------------------------------------- decoding
    def _frame(self):
        if not hasattr(self, "_fr"):
            self._fr = _frame_rows(self.Q, np, np.float32)
        return self._fr

    def _decode(self, which: str, b0: int, b1: int) -> np.ndarray:
        """Decoded factor values of blocks ``b0:b1``, shape (b1 - b0, N), float32."""
        N = self.block
        bits = self.bits_u if which == "u" else self.bits_v
        packed = self.codes_u if which == "u" else self.codes_v
        per_block = N * bits // 8
        codes = fmt.unpack_codes(packed[b0 * per_block: b1 * per_block], bits, (b1 - b0) * N).reshape(b1 - b0, N)
        table = self.table_u if which == "u" else self.table_v
        scale = (self.scale_u if which == "u" else self.scale_v)[b0:b1].astype(np.float32)
        return scale[:, None] * table[codes]

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(u_hat, v_hat)``, each (n_blocks, N) float32 in block order ((out, in) in the
        rows layout, where blocks differ in length)."""
        if self.layout == "rows":
            return self._uv_rows(0, self.shape[0])
        B = self.n_blocks
        return self._decode("u", 0, B), self._decode("v", 0, B)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The dense approximation ``W_hat`` (+ ``B A`` when compensated), (out, in) (FORMAT.md)."""
        out, inn = self.shape
        if self.layout == "rows":
            w = self._w_rows(0, out)
        else:
            w = self._decode_w(0, self.n_blocks).reshape(-1)[: out * inn].reshape(out, inn)
        lr = self.lowrank_factors()
        if lr is not None:
            w = w + lr[0] @ lr[1]
        return np.ascontiguousarray(w, dtype=dtype)

    def _decode_w(self, b0, b1):
        fwd, _ = self._frame()
        return self._decode("u", b0, b1) + fwd(self._decode("v", b0, b1))

    def _rows_per_chunk(self):
        return max(1, self._CHUNK // self.shape[1])

    def _w_rows(self, r0, r1):
        """Decoded rows ``r0:r1`` of ``W_hat`` (r1 - r0, in) without the low-rank part."""
        if self.layout == "rows":
            U, V = self._uv_rows(r0, r1)
            return U + self._xform(V, transpose=False)
        inn, N = self.shape[1], self.block
        f0, f1 = r0 * inn, r1 * inn
        b0, b1 = f0 // N, -(-f1 // N)
        flat = self._decode_w(b0, b1).reshape(-1)
        return flat[f0 - b0 * N: f1 - b0 * N].reshape(r1 - r0, inn)

    def _uv_rows(self, r0, r1):
        """Decoded ``u_hat``, ``v_hat`` of rows ``r0:r1`` as (r1 - r0, in) (row-aligned blocks only)."""
        if self.layout == "rows":
            return self._uv_rows_cols("u", r0, r1), self._uv_rows_cols("v", r0, r1)
        nb = self.shape[1] // self.block
        return (self._decode("u", r0 * nb, r1 * nb).reshape(r1 - r0, -1),
                self._decode("v", r0 * nb, r1 * nb).reshape(r1 - r0, -1))

    def _uv_rows_cols(self, which, r0, r1):
        """Rows layout: factor ``which`` of rows ``r0:r1`` (codes are row-major over (out, in))."""
        out, inn = self.shape
        bits = self.bits_u if which == "u" else self.bits_v
        packed = self.codes_u if which == "u" else self.codes_v
        k = len(self.blocks)
        colidx = np.repeat(np.arange(k), self.blocks)
        c = fmt.unpack_codes(packed[r0 * inn * bits // 8: r1 * inn * bits // 8], bits, (r1 - r0) * inn)
        table = (self.table_u if which == "u" else self.table_v).reshape(k, -1)
        scale = (self.scale_u if which == "u" else self.scale_v).reshape(out, k)[r0:r1].astype(np.float32)
        return scale[:, colidx] * table[colidx[None, :], c.reshape(r1 - r0, inn)]

    def linear(self, X) -> np.ndarray:
        """``X @ W_hat^T`` for ``X`` of shape (..., in) -> (..., out), as a linear layer does.

        The dense ``W_hat`` is never built: with row-aligned blocks (``in % N == 0``) it uses
        ``w . x = u . x + v . (Q^T x)`` blockwise, transforming the input once and decoding the
        factors a chunk of rows at a time; otherwise it decodes ``W_hat`` a chunk of rows at a time.
        """
        X = self._input(X, self.shape[1], "X")
        lead = X.shape[:-1]
        X2 = X.reshape(-1, self.shape[1])
        t = X2.shape[0]
        out, inn = self.shape
        N = self.block
        Y = np.empty((t, out), np.float32)
        R = self._rows_per_chunk()
        if self.row_aligned:
            Xt = self._xform(X2, transpose=True)
            for r0 in range(0, out, R):
                r1 = min(r0 + R, out)
                U, V = self._uv_rows(r0, r1)
                Y[:, r0:r1] = X2 @ U.T + Xt @ V.T
        else:
            for r0 in range(0, out, R):
                r1 = min(r0 + R, out)
                Y[:, r0:r1] = X2 @ self._w_rows(r0, r1).T
        lr = self.lowrank_factors()
        if lr is not None:
            Y += (X2 @ lr[1].T) @ lr[0].T
        return Y.reshape(lead + (out,))

    def rmatmul(self, X) -> np.ndarray:
        """``X @ W_hat`` for ``X`` of shape (..., out) -> (..., in), without the dense ``W_hat``."""
        X = self._input(X, self.shape[0], "X")
        lead = X.shape[:-1]
        X2 = X.reshape(-1, self.shape[0])
        t = X2.shape[0]
        out, inn = self.shape
        N = self.block
        R = self._rows_per_chunk()
        if self.row_aligned:
            accu = np.zeros((t, inn), np.float32)
            accv = np.zeros((t, inn), np.float32)
            for r0 in range(0, out, R):
                r1 = min(r0 + R, out)
                U, V = self._uv_rows(r0, r1)
                accu += X2[:, r0:r1] @ U
                accv += X2[:, r0:r1] @ V
            Y = accu + self._xform(accv, transpose=False)  # sum_r x_r Q v_r = Q sum_r x_r v_r
        else:
            Y = np.zeros((t, inn), np.float32)
            for r0 in range(0, out, R):
                r1 = min(r0 + R, out)
                Y += X2[:, r0:r1] @ self._w_rows(r0, r1)
        lr = self.lowrank_factors()
        if lr is not None:
            Y += (X2 @ lr[0]) @ lr[1]
        return Y.reshape(lead + (inn,))

    def matmul(self, X) -> np.ndarray:
        """``W_hat @ X`` for ``X`` of shape (in,) or (in, k) -> (out,) or (out, k)."""
        X = self._input(X, self.shape[1], "X", axis=0)
        if X.ndim == 1:
            return self.linear(X)
        if X.ndim != 2:
            raise ShapeError(f"matmul takes X of shape (in,) or (in, k), got {X.shape}")
        return np.ascontiguousarray(self.linear(X.T).T)

    def __matmul__(self, X):
        return self.matmul(X)

    def __rmatmul__(self, X):
        return self.rmatmul(X)

    @staticmethod
    def _input(X, n, name, axis=-1):
        check_array(X, name, finite=False)
        A = np.asarray(to_numpy(X))
        if A.ndim == 0 or A.shape[axis] != n:
            raise ShapeError(f"{name} must have length {n} along axis {axis}, got shape {A.shape}")
        return np.asarray(A, dtype=np.float32)

    def relative_error(self, W) -> float:
        """``||W - W_hat||_F / ||W||_F``."""
        A = np.asarray(to_numpy(W), dtype=np.float64)
        if A.shape != self.shape:
            raise ShapeError(f"W has shape {A.shape}, this quantized matrix {self.shape}")
        return _rel_err(A, self.dequantize(np.float64))

    # ---------------------------------------------------------------- files
    def meta(self) -> dict:
        m = {"shape": list(self.shape), "dtype": self.dtype, "block": self.block, "bits_u": self.bits_u,
             "bits_v": self.bits_v, "basis": self.basis, "method": self.method}
        if self.layout != "flat":
            m.update(layout=self.layout, blocks=list(self.blocks), bases=list(self.bases))
        if self.lowrank:
            m["lowrank"] = dict(self.lowrank)
        return m

    def save(self, path, name: str | None = "weight") -> None:
        """Write a one-entry quantized checkpoint (FORMAT.md), atomically.

        ``name`` (default ``"weight"``; ``None`` means the default) names the entry; it must be a
        non-empty string without ``".kashin."``. The file loads back with ``load(path)``.
        """
        if name is None:
            name = "weight"
        if not isinstance(name, str) or not name or ".kashin." in name:
            raise OptionError(f"name must be a non-empty string without '.kashin.', got {name!r}")
        check_path(path, "path", must_exist=False)
        fmt.write_checkpoint(path, {name: {"meta": self.meta(), "tensors": self.tensors()}})

    @classmethod
    def from_entry(cls, meta: dict, tensors: dict, *, path="<memory>", name="weight", version: int = fmt.VERSION) -> "KashinQuantized":
        """Build from an entry's header fields and tensors, validated as on load (FORMAT.md)."""
        if not isinstance(meta, dict):
            raise FormatError(f"{path}: entry {name!r} is not an object")
        if "sha256" not in meta:  # an in-memory entry: nothing to verify against
            meta = {**meta, "tensors": sorted(set(fmt.TENSORS) | set(tensors))} if version >= 2 else dict(meta)
            meta["sha256"] = fmt.entry_checksum(tensors, meta, version=version)
        fmt.validate_entry(path, name, meta, tensors, version=version)
        try:
            ops.orthogonal(meta["basis"])
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"{path}: entry {name!r}: basis {meta['basis']!r} cannot be rebuilt ({exc})") from exc
        try:
            for sp in meta.get("bases") or ():
                ops.orthogonal(sp)
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"{path}: entry {name!r}: a column-block basis cannot be rebuilt ({exc})") from exc
        main = {t: tensors[t] for t in fmt.TENSORS}
        extra = {t: tensors[t] for t in fmt.EXTRA_TENSORS if t in tensors}
        return cls(shape=meta["shape"], dtype=meta["dtype"], block=meta["block"], bits_u=meta["bits_u"],
                   bits_v=meta["bits_v"], basis=meta["basis"], method=meta.get("method", "unknown"),
                   layout=meta.get("layout", "flat"), blocks=meta.get("blocks"), bases=meta.get("bases"),
                   lowrank=meta.get("lowrank"), extra=extra, **main)

    @classmethod
    def load(cls, path, name: str | None = None) -> "KashinQuantized":
        """Read one entry (``name``; the only one when omitted) of a quantized file, validated."""
        if name is not None and not isinstance(name, str):
            raise ArgumentTypeError(f"name must be a string or None, got {name!r}")
        entries = load_entries(path, [name] if name is not None else None)
        if name is None and len(entries) != 1:
            raise FormatError(f"{path}: holds {len(entries)} quantized entries; pass name= (one of {sorted(entries)[:5]}...)")
        return next(iter(entries.values()))

    def __repr__(self) -> str:
        rows = [
            ("shape", f"{self.shape[0]} x {self.shape[1]} ({self.dtype})"),
            ("blocks", f"{self.n_blocks} of N = {self.block}"),
            ("basis", f"{self.basis.get('kind')} (seed {self.basis.get('seed')})"),
            ("method", self.method),
            ("layout", self.layout if self.layout == "flat" else f"rows, column blocks {self.blocks}"),
            ("low-rank", f"rank {self.lowrank['rank']}, {self.lowrank['bits']}-bit factors" if self.lowrank else "none"),
            ("code bits u + v", f"{self.bits_u} + {self.bits_v}"),
            ("bits per weight", f"{self.bits_per_weight:.4f}"),
            ("bytes", f"{self.nbytes:,}"),
        ]
        w = max(len(r[0]) for r in rows)
        return "KashinQuantized\n" + "\n".join(f"  {k.ljust(w)}  {v}" for k, v in rows)


@public
def load_entries(path, names=None) -> dict[str, KashinQuantized]:
    """Every quantized entry of a file (or those in ``names``), validated against FORMAT.md."""
    from safetensors import safe_open

    check_path(path, "path")
    header, keys = fmt.read_header(path)
    version = header["version"]
    entries = header["entries"]
    if names is not None and (isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names)):
        raise ArgumentTypeError(f"names must be a list of entry names, got {names!r}")
    want = list(entries) if names is None else list(names)
    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for nm in want:
            if nm not in entries:
                raise FormatError(f"{path}: no quantized entry {nm!r} (has {sorted(entries)[:5]}...)")
            meta = entries[nm]
            if not isinstance(meta, dict):
                raise FormatError(f"{path}: entry {nm!r} is not an object")
            tensors = {}
            for t in fmt.entry_tensor_names(meta, version):
                key = f"{nm}.kashin.{t}"
                if key not in keys:
                    if t in fmt.EXTRA_TENSORS:
                        continue  # optional; validate_entry checks the entry's fields ask for none
                    raise FormatError(f"{path}: entry {nm!r}: tensor {key} is missing")
                try:
                    tensors[t] = f.get_tensor(key)
                except Exception as exc:  # noqa: BLE001
                    raise FormatError(f"{path}: tensor {key} cannot be read ({exc})") from exc
            out[nm] = KashinQuantized.from_entry(meta, tensors, path=path, name=nm, version=version)
    return out
