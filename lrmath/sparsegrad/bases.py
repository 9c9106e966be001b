"""Orthogonal bases for SparseGrad: fixed transforms and the learned (HOSVD) basis.

Notation (Chekalina et al., EMNLP 2024, Sec. 3): a linear layer ``Y = X W^T`` with
``W`` of shape ``(n, m)`` (torch's (out, in) layout), ``X (t, m)``, ``dY (t, n)`` and
the weight gradient ``G = dY^T X``. With orthogonal ``U (n, n)`` and ``V (m, m)`` the
transformed weight is ``W~ = U^T W V`` and its gradient (paper eq. 2)

    G~ = U^T G V = (dY U)^T (X V).

Bases
-----
* ``"dct"``, ``"hadamard"``, ``"random"`` (Haar), ``"original"`` (identity): the shared
  seeded operators of :mod:`lrmath.ops` (fast transforms where they exist). facts.md
  measures that DCT and Hadamard keep no more energy than a random rotation on real MLP
  gradients; they stay as comparison bases.
* ``"learned"``: the paper's basis -- the left singular vectors of the unfoldings of the
  stack of warm-up gradients (HOSVD). Decision (decisions.md): we never store the
  stack. :class:`GramAccumulator` keeps the two Gram matrices

      A = sum_s w_s G_s G_s^T   (n, n)      B = sum_s w_s G_s^T G_s   (m, m)

  (the mode-1 and mode-2 unfoldings of the stack ``[G_1, ..., G_S]`` have exactly these
  Gram matrices), and ``U``, ``V`` are their eigenvectors, ordered by decreasing
  eigenvalue (``eigh``). Memory is ``n^2 + m^2`` whatever the number of steps. By
  default each step is normalised to unit Frobenius norm (``w_s = 1/||G_s||^2``) and
  older steps are down-weighted by ``decay`` (default :data:`DEFAULT_DECAY` = 0.85); the
  paper's plain sum is ``normalize=False, decay=1``. The default was chosen on validation
  steps at full scale and then judged on held-out steps
  (``python -m benchmarks sparsegrad_settings``, ``benchmarks/results/sparsegrad_settings_cpu.md``):
  0.875 of the held-out gradient energy in a fixed 1% index set against 0.849 for decay 0.97.

Every basis object has the interface of :class:`lrmath.ops.OrthogonalOperator`:
``apply(x, axis)`` (``Q x``), ``apply_t(x, axis)`` (``Q^T x``), ``matrix()``, ``n``,
``flops`` (per vector), plus :func:`columns` for a subset of its columns.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .. import ops
from ..backend import array_namespace, as_compute, check_array, check_axis, check_squarable, like, public, restore, to_numpy
from ..errors import (
    EmptyInputError,
    IndexRangeError,
    OptionError,
    ShapeError,
)

__all__ = [
    "BASIS_KINDS",
    "LearnedBasis",
    "GramAccumulator",
    "basis",
    "learned_bases",
    "columns",
    "transform",
    "inverse_transform",
]

#: Names accepted by :func:`basis` (``learned`` is built by :class:`GramAccumulator`).
BASIS_KINDS = ("original", "dct", "hadamard", "random", "learned")
_OPS_KIND = {"original": "identity", "identity": "identity", "dct": "dct", "hadamard": "hadamard", "random": "haar", "haar": "haar"}


@public
class LearnedBasis:
    """A dense orthogonal basis ``Q (n, n)`` (columns = basis vectors), same interface as
    :class:`lrmath.ops.OrthogonalOperator`.

    Parameters
    ----------
    Q : array (n, n)
        Orthogonal matrix; its columns are the basis vectors ordered by importance.
    eigenvalues : array (n,), optional
        The Gram-matrix eigenvalues that ranked the columns (for reports).
    """

    kind = "learned"

    def __init__(self, Q, eigenvalues=None, *, check: bool = True):
        xp = check_array(Q, "Q", ndim=2)
        n = int(Q.shape[0])
        if Q.shape[1] != n:
            raise ShapeError(f"a basis matrix must be square, got shape {tuple(Q.shape)}")
        if check:
            Qn = np.asarray(to_numpy(Q), dtype=np.float64)
            err = float(np.max(np.abs(Qn.T @ Qn - np.eye(n))))
            lim = 1e-4 if str(Q.dtype).endswith("float32") else 1e-8
            if err > lim * max(1.0, math.sqrt(n)):
                raise OptionError(f"Q is not orthogonal: max |Q^T Q - I| = {err:.3g}")
        self.Q = Q
        self.n = n
        self.seed = 0
        self.eigenvalues = eigenvalues
        self._xp = xp
        self._cache: dict[Any, Any] = {}

    def _q_like(self, ref):
        key = (type(ref).__module__, str(getattr(ref, "device", "cpu")), str(ref.dtype))
        q = self._cache.get(key)
        if q is None:
            xp = array_namespace(ref)
            q = xp.astype(like(self.Q, ref), ref.dtype)
            self._cache[key] = q
        return q

    def _along(self, x, axis, transpose):
        xp = check_array(x, "x", finite=False, nonempty=False)
        nd = len(x.shape)
        ax = check_axis(axis, nd)  # no modulo wrap: axis 2 of a 2-D array is an error
        if x.shape[ax] != self.n:
            raise ShapeError(f"basis of size {self.n} applied along axis {axis} of length {x.shape[ax]} (shape {tuple(x.shape)})")
        xp, xc, dt = as_compute(x, xp)
        Q = self._q_like(xc)
        moved = xp.moveaxis(xc, ax, -1) if ax != nd - 1 else xc
        # rows r -> Q r is r Q^T; Q^T r is r Q
        y = moved @ Q if transpose else moved @ xp.permute_dims(Q, (1, 0))
        if ax != nd - 1:
            y = xp.moveaxis(y, -1, ax)
        return restore(xp, y, dt)

    def apply(self, x, axis: int = -1):
        """``Q x`` for every vector of ``x`` along ``axis``."""
        return self._along(x, axis, False)

    def apply_t(self, x, axis: int = -1):
        """``Q^T x`` (the inverse) for every vector of ``x`` along ``axis``."""
        return self._along(x, axis, True)

    def matrix(self, xp=np, dtype=None):
        """The dense ``n x n`` matrix ``Q`` (float64 NumPy by default)."""
        Q = np.asarray(to_numpy(self.Q), dtype=np.float64)
        if xp is not np:
            Q = xp.asarray(Q)
        return Q if dtype is None else xp.astype(Q, dtype)

    @property
    def flops(self) -> int:
        """Floating-point operations to apply ``Q`` to one vector (a dense product)."""
        return 2 * self.n * self.n

    @property
    def spec(self) -> dict:
        return {"kind": "learned", "n": self.n}

    def __repr__(self) -> str:
        return f"LearnedBasis(n={self.n}, dtype={str(self.Q.dtype).rsplit('.', 1)[-1]})"


@public
def basis(kind, n: int, seed: int = 0):
    """A fixed basis of size ``n``: ``'original'``, ``'dct'``, ``'hadamard'`` or ``'random'``.

    An existing operator (:class:`lrmath.ops.OrthogonalOperator` or :class:`LearnedBasis`)
    is returned unchanged after a size check. ``'learned'`` needs gradients: use
    :class:`GramAccumulator` or :func:`learned_bases`.
    """
    if isinstance(kind, (ops.OrthogonalOperator, LearnedBasis)) or (
        not isinstance(kind, str) and all(hasattr(kind, a) for a in ("n", "apply", "apply_t"))
    ):  # any object with the operator interface (duck typing)
        if kind.n != n:
            raise ShapeError(f"basis has size {kind.n}, needed {n}")
        return kind
    if kind == "learned":
        raise OptionError("the learned basis is fitted from gradients: use GramAccumulator(...).bases() or learned_bases(grads)")
    if kind not in _OPS_KIND:
        raise OptionError(f"unknown basis {kind!r}; choose one of {BASIS_KINDS}")
    return ops.orthogonal(_OPS_KIND[kind], n, seed)


def _sym_eig_desc(A: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD matrix, eigenvalues descending, deterministic signs
    (the largest-magnitude entry of each eigenvector is positive). Solved in ``dtype``
    (float32 halves the time of the O(n^3) solve; the basis is stored in it anyway)."""
    scale = float(np.max(np.abs(A))) or 1.0
    w, Q = np.linalg.eigh((A / scale).astype(dtype))
    w = w.astype(np.float64) * scale
    Q = Q.astype(np.float64)
    order = np.argsort(-w, kind="stable")
    w, Q = w[order], Q[:, order]
    piv = np.argmax(np.abs(Q), axis=0)
    s = np.sign(Q[piv, np.arange(Q.shape[1])])
    s[s == 0] = 1.0
    return np.maximum(w, 0.0), Q * s[None, :]


#: Decay of the Gram matrices of the default learned basis, and of the index-set scores
#: (per-step normalised energies); chosen on validation steps, see
#: ``benchmarks/results/sparsegrad_settings_cpu.md``.
DEFAULT_DECAY = 0.85
DEFAULT_SCORE_DECAY = 0.97


@public
class GramAccumulator:
    """Running Gram matrices of a layer's gradients, from which the learned basis comes.

    Parameters
    ----------
    n, m : int
        Gradient shape ``(n, m)`` (torch layout: out, in).
    normalize : bool
        Divide each step's contribution by ``||G_s||_F^2`` (default True, facts.md).
    decay : float in (0, 1]
        Multiply the accumulated matrices by ``decay`` before adding a step, so step
        ``s`` of ``S`` has weight ``decay^(S - s)``. Default :data:`DEFAULT_DECAY` (0.85, an
        effective window of ~7 steps; chosen on validation steps, see the module docstring);
        ``1.0`` is the plain sum.

    Notes
    -----
    ``update(G)`` costs ``2 n m (n + m)`` flops. ``update_factors(dY, X)`` takes the
    factors of ``G = dY^T X`` instead and never forms ``G``: ``G G^T = dY^T (X X^T) dY``
    and ``G^T G = X^T (dY dY^T) X`` cost ``2 t^2 (n + m) + 2 t (n^2 + m^2)``, cheaper when
    ``t`` is small; the route is chosen by that flop count.
    """

    def __init__(self, n: int, m: int, *, normalize: bool = True, decay: float = DEFAULT_DECAY):
        from ..backend import check_positive_int

        self.n = check_positive_int(n, "n")
        self.m = check_positive_int(m, "m")
        decay = float(decay)
        if not (0.0 < decay <= 1.0):
            raise OptionError(f"decay must be in (0, 1], got {decay}")
        self.normalize = bool(normalize)
        self.decay = decay
        self.A = np.zeros((self.n, self.n), dtype=np.float64)
        self.B = np.zeros((self.m, self.m), dtype=np.float64)
        self.steps = 0

    def _add(self, A, B):
        tr = float(np.trace(A))
        if self.normalize:
            if tr <= 0.0:
                return self  # an all-zero gradient carries no direction
            A, B = A / tr, B / tr
        self.A *= self.decay
        self.B *= self.decay
        self.A += A
        self.B += B
        self.steps += 1
        return self

    def update(self, G) -> "GramAccumulator":
        """Add one gradient ``G (n, m)`` (any array kind; accumulated in float64 on the host)."""
        check_array(G, "G", shape=(self.n, self.m))
        check_squarable(G, "G", terms=(self.n + self.m) * max(self.n, self.m))
        g = np.asarray(to_numpy(G), dtype=np.float64)
        return self._add(g @ g.T, g.T @ g)

    def update_factors(self, dY, X) -> "GramAccumulator":
        """Add the gradient ``G = dY^T X`` given ``dY (t, n)`` and ``X (t, m)`` (G is not formed
        when the factor route is cheaper)."""
        check_array(dY, "dY", ndim=2, shape=(None, self.n))
        check_array(X, "X", ndim=2, shape=(dY.shape[0], self.m))
        big = (int(dY.shape[0]) + self.n + self.m) ** 2
        check_squarable(dY, "dY", terms=big)
        check_squarable(X, "X", terms=big)
        d = np.asarray(to_numpy(dY), dtype=np.float64)
        x = np.asarray(to_numpy(X), dtype=np.float64)
        t, n, m = d.shape[0], self.n, self.m
        dense = 2 * t * n * m + 2 * n * m * (n + m)
        factored = 2 * t * t * (n + m) + 2 * t * (n * n + m * m)
        if factored < dense:
            return self._add(d.T @ ((x @ x.T) @ d), x.T @ ((d @ d.T) @ x))
        g = d.T @ x
        return self._add(g @ g.T, g.T @ g)

    def bases(self, dtype=np.float32) -> tuple[LearnedBasis, LearnedBasis]:
        """``(U, V)``: eigenvectors of ``A`` and ``B`` by decreasing eigenvalue (HOSVD factors)."""
        if self.steps == 0:
            raise EmptyInputError("no gradients accumulated yet: call update() first")
        solve = np.float32 if np.dtype(dtype) == np.float32 else np.float64
        wa, U = _sym_eig_desc(self.A, solve)
        wb, V = _sym_eig_desc(self.B, solve)
        return (LearnedBasis(U.astype(dtype), wa, check=False), LearnedBasis(V.astype(dtype), wb, check=False))

    def reset(self) -> None:
        """Forget all steps (start a new window)."""
        self.A[...] = 0.0
        self.B[...] = 0.0
        self.steps = 0

    def __repr__(self) -> str:
        return f"GramAccumulator(n={self.n}, m={self.m}, steps={self.steps}, normalize={self.normalize}, decay={self.decay})"


@public
def learned_bases(grads: Iterable, *, normalize: bool = True, decay: float = DEFAULT_DECAY, dtype=np.float32):
    """Learned ``(U, V)`` from an iterable of gradients ``G_s (n, m)`` (see :class:`GramAccumulator`)."""
    acc = None
    for G in grads:
        if acc is None:
            check_array(G, "G", ndim=2)
            acc = GramAccumulator(int(G.shape[0]), int(G.shape[1]), normalize=normalize, decay=decay)
        acc.update(G)
    if acc is None:
        raise EmptyInputError("learned_bases needs at least one gradient")
    return acc.bases(dtype=dtype)


@public
def columns(Q, idx, ref=None):
    """Columns ``Q[:, idx]`` of a basis as an ``(n, len(idx))`` array like ``ref`` (NumPy default).

    Dense bases are sliced; fast operators are applied to the unit vectors ``e_j``
    (``n log n`` per column).
    """
    idx = np.asarray(to_numpy(idx)).astype(np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= Q.n):
        raise IndexRangeError(f"column index out of range for a basis of size {Q.n}")
    if isinstance(Q, LearnedBasis):
        out = np.asarray(to_numpy(Q.Q))[:, idx]
    else:
        E = np.zeros((Q.n, idx.size), dtype=np.float64)
        E[idx, np.arange(idx.size)] = 1.0
        out = Q.apply(E, axis=0)
    out = np.ascontiguousarray(out)
    if ref is None:
        return out
    xp = array_namespace(ref)
    return xp.astype(like(out, ref), ref.dtype)


@public
def transform(G, U, V):
    """``G~ = U^T G V`` for ``G (n, m)`` (paper eq. 2). ``U``, ``V``: bases or kind names."""
    check_array(G, "G", ndim=2)
    n, m = int(G.shape[0]), int(G.shape[1])
    U, V = basis(U, n), basis(V, m)
    # (G V)[i, :] = V^T g_i  ->  apply_t along axis 1; then U^T along axis 0
    return U.apply_t(V.apply_t(G, axis=1), axis=0)


@public
def inverse_transform(Gt, U, V):
    """``G = U G~ V^T`` (inverse of :func:`transform`)."""
    check_array(Gt, "Gt", ndim=2)
    n, m = int(Gt.shape[0]), int(Gt.shape[1])
    U, V = basis(U, n), basis(V, m)
    return U.apply(V.apply(Gt, axis=1), axis=0)
