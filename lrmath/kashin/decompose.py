"""Kashin's representation ``x = u + Q v`` on the frame ``[I, Q]`` (arXiv 2404.09737, Sec. 2).

For an orthogonal ``Q`` every ``x`` in ``R^N`` has many representations ``x = u + Q v``; a *Kashin
representation* is one whose two factors are both flat,

.. math::  \\max(\\|u\\|_\\infty, \\|v\\|_\\infty) \\le K \\, \\|x\\|_2 / \\sqrt{N}          (paper eq. 1)

with a constant ``K`` of order one (the *Kashin constant* reported here is the smallest such ``K``
for the representation found, per block). Outliers of ``x`` are thereby spread over ``2N``
coefficients, which is what makes ``u`` and ``v`` cheap to quantize.

Two constructive algorithms, both vectorized over any number of blocks ``x[..., N]``:

``"truncation"`` (default; Lyubarskii and Vershynin 2010, Thm. 3.5)
    Repeat: clip the residual ``r`` at the level ``lambda = clip * ||r||_2 / sqrt(N)``
    and keep the clipped part in ``u``; move the excess to the ``Q`` domain (``Q^T r``), clip it at
    the same level and keep that part in ``v``; the new residual is what is left, mapped back. For
    ``Q`` with an uncertainty principle (randomized Hadamard/DCT) the residual falls geometrically.
``"greedy"`` (the paper's public code; Kashin and Romskii 2023)
    Greedy l1 pursuit: with residual ``r``, if ``||r||_1 > ||Q^T r||_1`` take a ``u`` step
    ``u += sign(r) ||r||_1 / N``, else the same step on ``v`` in the ``Q`` domain. Each step lowers
    ``||r||_2^2`` by ``||.||_1^2 / N``.

Both stop when every block's relative residual ``||r|| / ||x||`` is below ``tol`` or after ``iters``
iterations; the last residual is then added to ``u`` so that ``x = u + Q v`` holds to rounding.

Decision (not in the paper): blocks with ``x = 0`` get ``u = v = 0`` and ``K = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ops
from ..backend import as_compute, check_array, public, restore
from ..errors import ArgumentTypeError, OptionError, ShapeError

__all__ = ["decompose", "Decomposition", "DecompositionReport", "as_operator"]

METHODS = ("truncation", "greedy")


@public
def as_operator(Q, n: int, seed: int = 0) -> ops.OrthogonalOperator:
    """Accept an operator, a spec dict or a kind name (built with size ``n`` and ``seed``)."""
    if isinstance(Q, ops.OrthogonalOperator):
        op = Q
    elif isinstance(Q, dict):
        op = ops.orthogonal(Q)
    elif isinstance(Q, str):
        op = ops.orthogonal(Q, n, seed)
    else:
        raise ArgumentTypeError(f"Q must be an OrthogonalOperator, a spec dict or a kind name, got {type(Q).__name__}")
    if op.n != n:
        raise ShapeError(f"operator size {op.n} does not match the block length {n}")
    return op


@public
@dataclass
class DecompositionReport:
    """What :func:`decompose` did.

    Attributes
    ----------
    method : str
    iterations : int
        Iterations run (the same for all blocks; the stop rule waits for the slowest block).
    residual : ndarray, shape (iterations + 1,)
        ``max_blocks ||r_k||_2 / ||x||_2`` before each iteration (``residual[0] = 1``).
    K : ndarray, shape x.shape[:-1]
        Achieved Kashin constant per block, ``max(||u||_inf, ||v||_inf) sqrt(N) / ||x||_2``.
    converged : bool
        Whether the final relative residual is below ``tol`` for every block.
    """

    method: str
    iterations: int
    residual: np.ndarray
    K: np.ndarray
    converged: bool
    tol: float
    N: int
    extra: dict = field(default_factory=dict)

    @property
    def K_max(self) -> float:
        return float(np.max(self.K)) if self.K.size else 0.0

    @property
    def K_mean(self) -> float:
        return float(np.mean(self.K)) if self.K.size else 0.0

    def __repr__(self) -> str:
        rows = [
            ("method", self.method),
            ("N", self.N),
            ("blocks", int(self.K.size)),
            ("iterations", self.iterations),
            ("final residual", f"{float(self.residual[-1]):.3g} (tol {self.tol:.3g})"),
            ("converged", self.converged),
            ("K mean / max", f"{self.K_mean:.3f} / {self.K_max:.3f}"),
        ]
        w = max(len(r[0]) for r in rows)
        return "DecompositionReport\n" + "\n".join(f"  {k.ljust(w)}  {v}" for k, v in rows)


@public
@dataclass
class Decomposition:
    """``x = u + Q v``: the two factors (shape of ``x``), the operator and a report."""

    u: Any
    v: Any
    Q: ops.OrthogonalOperator
    report: DecompositionReport

    def __iter__(self):  # u, v, report = decompose(...)
        return iter((self.u, self.v, self.report))


def _sylvester(n: int) -> np.ndarray:
    H = np.ones((1, 1))
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return H


def _frame_rows(op: ops.OrthogonalOperator, xp, dtype):
    """``(fwd, bwd)`` computing ``Q x`` and ``Q^T x`` for rows ``x`` of shape (b, N).

    Faster CPU paths (a decision of this package, not of :mod:`lrmath.ops`; checked against
    ``op.matrix()`` in the tests):

    * randomized Hadamard with ``N = p1 p2`` a power of two: ``H_N = H_p1 kron H_p2`` (Sylvester
      order), so ``H x`` is ``H_p1 X H_p2`` on ``x`` reshaped to ``(p1, p2)``, two thin BLAS
      products of ``~2 N sqrt(N)`` flops instead of ``2 N^2``;
    * other kinds with ``N <= 1024``: the dense ``N x N`` matrix (built once from ``op.matrix()``,
      i.e. from the operator's own transform) in one BLAS product per call;
    * otherwise (or on non-NumPy arrays) ``op.apply`` / ``op.apply_t``.
    """
    if getattr(xp, "__name__", "") not in ("numpy", "array_api_compat.numpy"):
        return (lambda r: op.apply(r, axis=-1)), (lambda r: op.apply_t(r, axis=-1))
    n = op.n
    if op.kind == "hadamard" and n >= 4 and n & (n - 1) == 0:
        k = n.bit_length() - 1
        p1, p2 = 1 << (k // 2), 1 << (k - k // 2)
        H1 = (_sylvester(p1) / math.sqrt(n)).astype(dtype)
        H2 = _sylvester(p2).astype(dtype)
        D = ops._signs_np(n, op.seed).astype(dtype)

        def _h(y):  # H_N y / sqrt(N) on rows: H_p1 Y H_p2 per row reshaped to (p1, p2)
            B = y.shape[0]
            y = np.matmul(H1, np.matmul(y.reshape(B, p1, p2), H2))
            return y.reshape(B, n)

        def fwd(r):  # Q = H D / sqrt(N)
            return _h(r * D)

        def bwd(r):  # Q^T = D H / sqrt(N)
            y = _h(r)
            y *= D
            return y

        return fwd, bwd
    if n <= 1024:
        Qm = op.matrix().astype(dtype)
        QmT = np.ascontiguousarray(Qm.T)
        return (lambda r: r @ QmT), (lambda r: r @ Qm)
    return (lambda r: op.apply(r, axis=-1)), (lambda r: op.apply_t(r, axis=-1))


def _norm(xp, r):
    if isinstance(r, np.ndarray) and r.ndim == 2:
        return np.sqrt(np.einsum("ij,ij->i", r, r))[:, None]
    return xp.sqrt(xp.sum(r * r, axis=-1, keepdims=True))



def _check_args(x, method: str, iters, tol, clip) -> int:
    """Validate :func:`decompose`'s arguments (shared with the GPU mirror); return ``iters``."""
    if len(x.shape) < 1:
        raise ShapeError("x must have at least one dimension (blocks along the last axis)")
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose one of {METHODS}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise OptionError(f"tol must be a non-negative number, got {tol!r}")
    if not (isinstance(clip, (int, float)) and clip > 0):
        raise OptionError(f"clip must be positive, got {clip!r}")
    if iters is None:
        iters = 30 if method == "truncation" else 400
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise OptionError(f"iters must be a non-negative integer, got {iters!r}")
    return int(iters)

@public
def decompose(x, Q="hadamard", *, method: str = "truncation", iters: int | None = None, tol: float = 1e-6,
              clip: float = 1.0, seed: int = 0) -> Decomposition:
    """Kashin representation ``x = u + Q v`` of every block ``x[..., :]`` (length ``N``).

    Parameters
    ----------
    x : array, shape (..., N)
        Blocks (any leading shape); float16/bfloat16 are computed in float32.
    Q : OrthogonalOperator, spec dict or kind name
        The orthogonal half of the frame ``[I, Q]``; a kind name is built as
        ``orthogonal(Q, N, seed)``.
    method : {'truncation', 'greedy'}
        See the module docstring.
    iters : int, optional
        Iteration cap (default 30 for truncation, 400 for greedy; one greedy iteration is a single
        ``u`` or ``v`` step).
    tol : float
        Stop when ``||r||_2 <= tol ||x||_2`` for every block.
    clip : float
        Truncation level in units of the residual's RMS ``||r||_2 / sqrt(N)`` (truncation only).

    Returns
    -------
    Decomposition
        ``u`` and ``v`` with the shape and dtype of ``x`` (``x == u + Q.apply(v)`` to rounding) and a
        :class:`DecompositionReport`.
    """
    xp = check_array(x, "x", ndim=None)
    iters = _check_args(x, method, iters, tol, clip)
    N = int(x.shape[-1])
    op = as_operator(Q, N, seed)
    xp, xc, dt = as_compute(x, xp)
    lead = tuple(xc.shape[:-1])
    X = xp.reshape(xc, (-1, N))
    nx = _norm(xp, X)
    safe = xp.where(nx > 0, nx, xp.ones_like(nx))
    u = xp.zeros_like(X)
    v = xp.zeros_like(X)
    r = X
    fwd, bwd = _frame_rows(op, xp, X.dtype)
    res = [1.0 if int(X.shape[0]) else 0.0]
    sq = math.sqrt(N)
    k = 0
    extra = {}
    if method == "truncation":
        for k in range(1, iters + 1):
            lam = clip * _norm(xp, r) / sq
            a = xp.clip(r, -lam, lam)
            u = u + a
            w = bwd(r - a)  # Q^T of the excess; same norm, spread out by Q
            b = xp.clip(w, -lam, lam)
            v = v + b
            r = fwd(w - b)
            rel = float(xp.max(_norm(xp, r) / safe))
            res.append(rel)
            if rel <= tol:
                break
    else:
        steps_u = 0
        for k in range(1, iters + 1):
            w = bwd(r)
            l1r = xp.sum(xp.abs(r), axis=-1, keepdims=True)
            l1w = xp.sum(xp.abs(w), axis=-1, keepdims=True)
            take_u = l1r > l1w
            su = xp.sign(r) * (l1r / N)
            sv = xp.sign(w) * (l1w / N)
            zero = xp.zeros_like(su)
            du = xp.where(take_u, su, zero)
            dv = xp.where(take_u, zero, sv)
            u = u + du
            v = v + dv
            # the residual update in closed form: r - du - Q dv (Q dv only where a v step was taken)
            r = r - du - fwd(dv)
            steps_u += int(xp.sum(xp.astype(take_u, xp.int64)))
            rel = float(xp.max(_norm(xp, r) / safe))
            res.append(rel)
            if rel <= tol:
                break
        extra["u_step_fraction"] = steps_u / max(k * int(X.shape[0]), 1)
    if iters == 0:
        k = 0
    final = res[-1]
    u = u + r  # exactness: whatever is left goes to u (it is below tol * ||x||)
    inf = xp.maximum(xp.max(xp.abs(u), axis=-1), xp.max(xp.abs(v), axis=-1))
    K = np.asarray(_to_np(xp.where(nx[:, 0] > 0, inf * sq / safe[:, 0], xp.zeros_like(inf))), dtype=np.float64)
    report = DecompositionReport(method, int(k), np.asarray(res, dtype=np.float64), K.reshape(lead), bool(final <= tol), float(tol), N, extra)
    u = restore(xp, xp.reshape(u, lead + (N,)), dt)
    v = restore(xp, xp.reshape(v, lead + (N,)), dt)
    return Decomposition(u, v, op, report)


def _to_np(a):
    from ..backend import to_numpy

    return to_numpy(a)
