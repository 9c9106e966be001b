"""Unbiased randomized estimators of ``C = X^T Y`` with regenerable sketches.

Reference: Bershatsky et al., "Memory-Efficient Backpropagation through Large Linear
Layers", arXiv 2201.13195 (eq. 3-5: ``X^T Y ~ (S^T X)^T (S^T Y)`` with ``E[S S^T] = I``);
Drineas, Kannan & Mahoney 2006 (column-row sampling); Liu et al., NeurIPS 2023
(winner-take-all column-row sampling, WTA-CRS).

Every estimator is written as ``C_hat = (L X)^T (R Y)`` where ``L, R`` are ``(k, t)``
operators with ``E[L^T R] = I_t``. For the dense sketches ``L = R = S^T``; for the
sampling sketches the importance weight is put on the ``X`` side only (``L`` rows are
``w_j e_{i_j}^T``, ``R`` rows are ``e_{i_j}^T``), so the ``Y`` side is a plain row gather.
:class:`Sketch` holds ``(kind, t, k, seed, stream)`` and, for data-dependent sampling,
the ``k`` sampled indices and their weights (``O(k)`` numbers, not ``O(t m)``).
A data-independent sketch is regenerated from ``(seed, stream)`` alone: the layer in
:mod:`lrmath.torch.randmm` stores ``S^T X`` and the seed, and rebuilds ``S`` in backward.

Kinds
-----
``gaussian``
    ``S_ij ~ N(0, 1/k)`` (``rng.normal``).
``rademacher``
    ``S_ij = +-1/sqrt(k)`` (``rng.signs``).
``srht`` / ``srdct``
    Subsampled randomized orthogonal transform ``S = sqrt(t/k) D H^T P``: random signs
    ``D``, the orthonormal transform ``H`` (:func:`lrmath.ops.orthogonal` ``'hadamard'``,
    whose rule for sizes that are not powers of two is ``H_p kron R_q``; or ``'dct'``,
    the orthonormal DCT-II), and ``P`` picking ``k`` of the ``t`` transformed rows with
    or without replacement. The scale is ``t/k`` on ``C`` (``sqrt(t/k)`` per side): a
    public implementation multiplies by ``k t`` instead, which is biased by ``k**2``.
``crs``
    Column-row sampling: ``k`` rows drawn from probabilities ``p`` (``'xy'``:
    ``p_i ~ ||x_i|| ||y_i||``, optimal; ``'x'``: ``p_i ~ ||x_i||``; ``'uniform'``; or an
    array), ``C_hat = 1/k sum_j x_{i_j} y_{i_j}^T / p_{i_j}``. ``replace=False`` draws
    ``k`` distinct rows uniformly (``C_hat = t/k sum``; only uniform probabilities,
    because unequal probabilities without replacement have no closed-form inclusion
    probabilities).
``bernoulli``
    Poisson sampling: row ``i`` kept independently with probability ``q_i`` (``sum q =
    k``, so ``k`` is the *expected* size), ``C_hat = sum_kept x_i y_i^T / q_i``. The
    variance-optimal ``q_i = min(1, c a_i)`` is found by water-filling.
``wta``
    Winner-take-all CRS: the set ``D`` of the largest ``p_i`` is kept exactly, the other
    ``k' = k - |D|`` rows are drawn with replacement from ``p_i / (1 - P_D)`` on the
    rest: ``C_hat = sum_D x_i y_i^T + (1 - P_D)/k' sum_j x_{i_j} y_{i_j}^T / p_{i_j}``.
    ``|D|`` is chosen by minimising the exact variance (the default, decisions.md) or by
    the authors' rule (``deterministic='authors'``: the largest ``|D|`` with
    ``P_D > |D|/k``, the sufficient condition of Liu et al.'s comparison with CRS; their
    released code may differ) or fixed (an int).

Randomness streams (``lrmath.rng``; documented so GPU kernels can regenerate them):
``STREAM_SKETCH`` for Gaussian/Rademacher entries and for transform signs,
``STREAM_INDEX`` for sampled indices / permutation keys / Bernoulli uniforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .. import rng
from ..backend import array_namespace, as_compute, check_array, check_bool, check_int, like, public, restore, to_numpy
from ..errors import ArgumentTypeError, OptionError, ShapeError

__all__ = [
    "KINDS",
    "PROBS",
    "Sketch",
    "make_sketch",
    "estimate",
    "sampling_probabilities",
    "bernoulli_probabilities",
    "check_k",
]

KINDS = ("gaussian", "rademacher", "srht", "srdct", "crs", "bernoulli", "wta")
PROBS = ("xy", "x", "uniform")
DATA_INDEPENDENT = ("gaussian", "rademacher", "srht", "srdct")

STREAM_SKETCH = 11
STREAM_INDEX = 12

_TRANSFORM = {"srht": "hadamard", "srdct": "dct"}


@lru_cache(maxsize=32)
def _operator(kind: str, t: int):
    from ..ops import orthogonal

    return orthogonal(kind, t, seed=0)


@lru_cache(maxsize=32)
def _sylvester(n: int) -> np.ndarray:
    H = np.ones((1, 1))
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return H / math.sqrt(n)


def _kron_hadamard_rows(A, D: np.ndarray, rows: np.ndarray, xp):
    """Rows ``rows`` of ``Q (D A)`` for ``Q = ops.orthogonal('hadamard', t, seed=0)``, ``t`` a
    power of two, from two dense products: Sylvester's ``H_t = H_a kron H_b`` (``a b = t``,
    ``a ~ b ~ sqrt(t)``) costs ``2 t (a + b) cols`` FLOPs in BLAS instead of ``log2 t``
    memory-bound butterfly passes. ``Q`` includes the operator's own fixed signs ``D0``
    (seed 0), so the result equals ``operator().apply(...)[rows]``.

    With ``Z`` viewed as ``(a, b, cols)``: ``Z1 = H_a Z`` is one GEMM on ``(a, b cols)``; after
    one transposing copy to ``(b, a cols)``, ``Z2 = H_b Z1`` is another, and row
    ``i_a b + i_b`` of the result sits at row ``i_b a + i_a`` of ``Z2`` -- so only the
    wanted rows are gathered, never transposed back.
    """
    from ..ops import STREAM_SIGNS

    t, cols = int(A.shape[0]), int(A.shape[1])
    lg = t.bit_length() - 1
    a = 1 << (lg // 2)
    b = t // a
    signs = D * rng.signs(0, STREAM_SIGNS, t)
    Dv = xp.astype(like(signs, A), A.dtype)
    Ha = xp.astype(like(_sylvester(a), A), A.dtype)
    Hb = xp.astype(like(_sylvester(b), A), A.dtype)
    Z = Ha @ xp.reshape(A * Dv[:, None], (a, b * cols))
    Z = xp.reshape(xp.permute_dims(xp.reshape(Z, (a, b, cols)), (1, 0, 2)), (b, a * cols))
    Z = xp.reshape(Hb @ Z, (b * a, cols))
    r = np.asarray(rows, dtype=np.int64)
    return xp.take(Z, like((r % b) * a + r // b, A), axis=0)


def _ns(A):
    """Array namespace, with NumPy short-circuited (this is called per sketch application)."""
    if type(A) is np.ndarray:
        import array_api_compat.numpy as npx

        return npx
    return array_namespace(A)


@public
def check_k(k: Any, t: int, *, name: str = "k") -> int:
    """Validate a sketch size: an integer with ``1 <= k <= t`` (clear errors otherwise)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise OptionError(f"sketch size {name}={k} must be at least 1")
    if k > t:
        raise OptionError(f"sketch size {name}={k} exceeds the number of rows t={t}; a sketch cannot be larger than the product's inner dimension")
    return k


def _row_sq_norms(A) -> np.ndarray:
    xp = _ns(A)
    _, Ac, _ = as_compute(A, xp)
    nrm = np.asarray(to_numpy(xp.linalg.vector_norm(Ac, axis=1)), dtype=np.float64)
    return nrm * nrm


@public
def sampling_probabilities(X, Y=None, probs: str | Any = "xy") -> np.ndarray:
    """Row sampling probabilities ``p`` (float64 NumPy, sums to 1).

    ``'xy'``: ``p_i = ||x_i|| ||y_i|| / sum_j ||x_j|| ||y_j||`` (minimises the CRS
    variance, Drineas et al. 2006 Lemma 4); ``'x'``: ``p_i ~ ||x_i||`` (what a layer
    can use before ``dY`` exists); ``'uniform'``; or an explicit array (validated).
    Rows with all-zero weight get ``p_i = 0``; if every weight is zero, uniform.
    """
    t = int(X.shape[0])
    if isinstance(probs, str):
        if probs == "uniform":
            return np.full(t, 1.0 / t)
        if probs == "x":
            w = np.sqrt(_row_sq_norms(X))
        elif probs == "xy":
            if Y is None:
                raise OptionError("probs='xy' needs Y (use probs='x' or 'uniform' when only X is known)")
            w = np.sqrt(_row_sq_norms(X) * _row_sq_norms(Y))
        else:
            raise OptionError(f"unknown probabilities {probs!r}; choose one of {PROBS} or pass an array")
        s = w.sum()
        return w / s if s > 0 else np.full(t, 1.0 / t)
    p = np.asarray(to_numpy(probs), dtype=np.float64)
    if p.shape != (t,):
        raise ShapeError(f"probabilities must have shape ({t},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not abs(p.sum() - 1.0) < 1e-6:
        raise OptionError("probabilities must be finite, non-negative and sum to 1")
    return p / p.sum()


@public
def bernoulli_probabilities(weights, k: float) -> np.ndarray:
    """Water-filling: ``q_i = min(1, c w_i)`` with ``sum q = k`` (float64 NumPy).

    This minimises ``sum (1/q_i - 1) u_i v_i`` subject to ``sum q = k``, ``0 <= q <= 1``
    when ``w_i = ||x_i|| ||y_i||`` (Lagrange: ``q_i ~ w_i`` below the cap). If fewer
    than ``k`` weights are non-zero they all get ``q = 1`` and the sum falls short.
    """
    w = np.asarray(to_numpy(weights), dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise OptionError("weights must be finite and non-negative")
    t = w.size
    if not 0 < k <= t:
        raise OptionError(f"expected sample size k={k} must be in (0, t={t}]")
    q = np.zeros(t)
    nz = w > 0
    if nz.sum() <= k:
        q[nz] = 1.0
        return q
    order = np.argsort(-w, kind="stable")
    ws = w[order]
    tail = np.cumsum(ws[::-1])[::-1]  # tail[j] = sum_{i >= j} ws[i]
    for j in range(int(math.floor(k)) + 1):  # j rows saturated at q = 1
        c = (k - j) / tail[j]
        if c * ws[j] <= 1.0 + 1e-12:
            qs = np.minimum(1.0, c * ws)
            qs[:j] = 1.0
            q[order] = qs
            return q
    q[order[: int(k)]] = 1.0  # pragma: no cover - unreachable for 0 < k <= nnz
    return q


def _sample_with_replacement(p: np.ndarray, k: int, seed: int, stream: int, offset: int = 0) -> np.ndarray:
    """Inverse-CDF sampling of ``k`` indices from ``p`` with counter-based uniforms."""
    u = rng.uniform(seed, stream, k, offset=offset)
    cdf = np.cumsum(p)
    idx = np.searchsorted(cdf, u * cdf[-1], side="right")
    idx = np.minimum(idx, p.size - 1)
    # a zero-probability row can be hit only through rounding at the CDF's flat parts
    bad = p[idx] <= 0
    if np.any(bad):
        nz = np.flatnonzero(p > 0)
        idx[bad] = nz[np.searchsorted(nz, idx[bad]).clip(0, nz.size - 1)]
    return idx.astype(np.int64)


@public
@dataclass
class Sketch:
    """A seeded sketch ``C_hat = (L X)^T (R Y)`` with ``E[L^T R] = I``.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    t, k : int
        Rows of ``X``/``Y`` and sketch size (for ``bernoulli`` the expected size; for
        ``wta`` deterministic plus sampled rows).
    seed, stream : int
        Key of the randomness (:mod:`lrmath.rng`).
    replace : bool
        Sampling with replacement (``srht``, ``srdct``, ``crs``).
    indices, weights : ndarray or None
        For sampling kinds: the sampled rows (int64, length = rows of ``L X``) and the
        weights on the ``X`` side (float64).
    n_deterministic : int
        ``|D|`` for ``wta`` (the first ``n_deterministic`` indices have weight 1).
    """

    kind: str
    t: int
    k: int
    seed: int = 0
    stream: int = 0
    replace: bool = True
    indices: np.ndarray | None = None
    weights: np.ndarray | None = None
    n_deterministic: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ properties
    @property
    def rows(self) -> int:
        """Rows of ``L X`` (equals ``k`` except for Bernoulli, whose size is random)."""
        return int(self.indices.size) if self.indices is not None else self.k

    def state_nbytes(self) -> int:
        """Bytes of the sketch state kept besides ``L X`` (indices and weights)."""
        n = 0
        if self.indices is not None:
            n += self.indices.nbytes
        if self.weights is not None:
            n += self.weights.nbytes
        return n

    def __repr__(self) -> str:
        extra = f", replace={self.replace}" if self.kind in ("srht", "srdct", "crs") else ""
        if self.kind == "wta":
            extra += f", |D|={self.n_deterministic}"
        return f"Sketch(kind={self.kind!r}, t={self.t}, k={self.k}, rows={self.rows}, seed={self.seed}, stream={self.stream}{extra})"

    # ------------------------------------------------------------------ regenerated pieces
    def _dense_np(self) -> np.ndarray:
        """``S`` (t, k) for Gaussian/Rademacher, float64, regenerated from the seed.

        Not cached: a layer regenerates it in backward instead of keeping ``t k`` numbers.
        """
        if self.kind == "gaussian":
            return rng.normal(self.seed, self.stream * 64 + STREAM_SKETCH, (self.t, self.k)) / math.sqrt(self.k)
        return rng.signs(self.seed, self.stream * 64 + STREAM_SKETCH, (self.t, self.k)) / math.sqrt(self.k)

    def _transform_rows(self) -> np.ndarray:
        """Indices ``P`` of the transformed rows kept (int64, length k)."""
        key = ("rows",)
        if key not in self._cache:
            s = self.stream * 64 + STREAM_INDEX
            if self.replace:
                r = rng.integers(self.seed, s, self.k, self.t)
            else:  # first k of a random permutation (argsort of uniforms, stable ties)
                r = np.argsort(rng.uniform(self.seed, s, self.t), kind="stable")[: self.k]
            self._cache[key] = r.astype(np.int64)
        return self._cache[key]

    def _signs(self) -> np.ndarray:
        return rng.signs(self.seed, self.stream * 64 + STREAM_SKETCH, self.t)

    def operator(self):
        """The orthogonal transform ``H`` of ``srht``/``srdct`` (a fixed, seed-0 operator;
        the randomness is the separate sign vector ``D``)."""
        return _operator(_TRANSFORM[self.kind], self.t)

    def _check(self, A, name: str):
        xp = check_array(A, name, ndim=2)
        if int(A.shape[0]) != self.t:
            raise ShapeError(f"{name} has {A.shape[0]} rows but the sketch was built for t={self.t} (shape {tuple(A.shape)})")
        return xp

    def _apply(self, A, name: str, side: str, checked: bool = False, keep: bool = False):
        xp = _ns(A) if checked else self._check(A, name)
        xp, Ac, dt = as_compute(A, xp)
        if self.kind in ("gaussian", "rademacher"):
            S = xp.astype(like(self._dense_np(), Ac), Ac.dtype)
            out = xp.permute_dims(S, (1, 0)) @ Ac
        elif self.kind in _TRANSFORM:
            D = self._signs()
            if self.kind == "srht" and self.t & (self.t - 1) == 0 and self.t >= 4:
                out = _kron_hadamard_rows(Ac, D, self._transform_rows(), xp)
            else:
                D = xp.astype(like(D, Ac), Ac.dtype)
                Z = self.operator().apply(Ac * D[:, None], axis=0)  # H D A, (t, cols)
                out = xp.take(Z, like(self._transform_rows(), Ac), axis=0)
            out = out * math.sqrt(self.t / self.k)
        else:
            idx = like(self.indices, Ac)
            out = xp.take(Ac, idx, axis=0)
            if side == "x":
                out = out * xp.astype(like(self.weights, Ac), Ac.dtype)[:, None]
        return out if keep else restore(xp, out, dt)

    def apply_x(self, X, *, check: bool = True):
        """``L X`` (rows, m): the part stored for backward.

        ``check=False`` skips input validation (shape, dtype, NaN scan); the torch layer
        uses it on its hot path, where ``nn.Linear`` semantics apply.
        """
        return self._apply(X, "X", "x", not check)

    def apply_y(self, Y, *, check: bool = True):
        """``R Y`` (rows, n): regenerated later (e.g. from ``dY`` in backward)."""
        return self._apply(Y, "Y", "y", not check)

    def estimate(self, X, Y):
        """``C_hat = (L X)^T (R Y)`` (m, n)."""
        if int(X.shape[0]) != int(Y.shape[0]):
            raise ShapeError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must have the same number of rows")
        self._check(X, "X")
        self._check(Y, "Y")
        xp = array_namespace(X, Y)
        out = xp.permute_dims(self._apply(X, "X", "x", True, True), (1, 0)) @ self._apply(Y, "Y", "y", True, True)
        return restore(xp, out, X.dtype)

    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``(L, R)``, each (rows, t) float64 (for tests and small t)."""
        eye = np.eye(self.t)
        return self.apply_x(eye), self.apply_y(eye)


@public
def make_sketch(
    kind: str,
    t: int,
    k: int,
    *,
    seed: int = 0,
    stream: int = 0,
    X=None,
    Y=None,
    probs: str | Any = "xy",
    replace: bool = True,
    deterministic: str | int = "optimal",
) -> Sketch:
    """Build a :class:`Sketch` of ``kind`` for ``t`` rows and size ``k``.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    t, k : int
        ``1 <= k <= t``.
    seed, stream : int
        Randomness key; the same arguments give the same sketch on every backend.
    X, Y : arrays (t, m), (t, n), optional
        Needed by the data-dependent sampling probabilities (``'xy'`` needs both,
        ``'x'`` only ``X``) and by ``wta`` with ``deterministic='optimal'``.
    probs : {'xy', 'x', 'uniform'} or array (t,)
        Sampling probabilities of ``crs``/``wta``; weights of ``bernoulli``.
    replace : bool
        With (default) or without replacement (``srht``, ``srdct``, ``crs``).
    deterministic : {'optimal', 'authors'} or int
        How ``wta`` chooses ``|D|``.
    """
    if kind not in KINDS:
        raise OptionError(f"unknown estimator {kind!r}; choose one of {KINDS}")
    t = check_int(t, "t", minimum=1)
    k = check_k(k, t)
    if X is not None and int(X.shape[0]) != t:
        raise ShapeError(f"X has {X.shape[0]} rows, expected t={t}")
    if Y is not None and int(Y.shape[0]) != t:
        raise ShapeError(f"Y has {Y.shape[0]} rows, expected t={t}")
    seed, stream = check_int(seed, "seed", minimum=0, maximum=2**64 - 1), check_int(stream, "stream", minimum=0, maximum=2**64 - 1)
    sk = Sketch(kind, t, k, seed, stream, check_bool(replace, "replace"))
    rng.stream_key(seed, stream)  # validates seed and stream
    s_idx = int(stream) * 64 + STREAM_INDEX
    if kind in DATA_INDEPENDENT:
        return sk
    if kind == "crs":
        if not replace:
            if not (isinstance(probs, str) and probs == "uniform"):
                raise OptionError("crs without replacement supports only probs='uniform' (unequal probabilities have no closed-form inclusion probabilities)")
            idx = np.sort(np.argsort(rng.uniform(seed, s_idx, t), kind="stable")[:k]).astype(np.int64)
            sk.indices, sk.weights = idx, np.full(k, t / k)
            return sk
        p = _probs_from(X, Y, probs, t)
        idx = _sample_with_replacement(p, k, seed, s_idx)
        sk.indices, sk.weights = idx, 1.0 / (k * p[idx])
        return sk
    if kind == "bernoulli":
        if isinstance(probs, str):
            if probs == "uniform":
                q = np.full(t, k / t)
            elif probs in ("x", "xy"):
                w = np.sqrt(_row_sq_norms(_need(X, "X", probs)) * (_row_sq_norms(_need(Y, "Y", probs)) if probs == "xy" else 1.0))
                q = bernoulli_probabilities(w, k)
            else:
                raise OptionError(f"unknown probabilities {probs!r}; choose one of {PROBS} or pass an array")
        else:
            q = np.asarray(to_numpy(probs), dtype=np.float64)
            if q.shape != (t,) or np.any(q < 0) or np.any(q > 1) or not np.all(np.isfinite(q)):
                raise OptionError(f"Bernoulli keep-probabilities must be a ({t},) array in [0, 1]")
        u = rng.uniform(seed, s_idx, t)
        keep = np.flatnonzero(u < q)
        sk.indices, sk.weights = keep.astype(np.int64), 1.0 / q[keep]
        return sk
    # wta
    p = _probs_from(X, Y, probs, t)
    from .variance import wta_deterministic_size

    if isinstance(deterministic, (int, np.integer)) and not isinstance(deterministic, bool):
        d = int(deterministic)
        if not 0 <= d < k:
            raise OptionError(f"wta needs 0 <= |D| < k={k}, got {d}")
    elif deterministic == "authors":
        d = wta_deterministic_size(p, k, rule="authors")
    elif deterministic == "optimal":
        if X is None or Y is None:
            raise OptionError("wta with deterministic='optimal' minimises the exact variance, which needs X and Y; pass deterministic='authors' or an int otherwise")
        d = wta_deterministic_size(p, k, rule="optimal", X=X, Y=Y)
    else:
        raise OptionError(f"deterministic must be 'optimal', 'authors' or an int, got {deterministic!r}")
    order = np.argsort(-p, kind="stable")
    D = order[:d]
    rest = order[d:]
    PD = float(p[D].sum())
    kp = k - d
    pr = np.zeros(t)
    pr[rest] = p[rest]
    if pr.sum() > 0:
        idx = _sample_with_replacement(pr / pr.sum(), kp, seed, s_idx)
        w = (1.0 - PD) / (kp * p[idx])
    else:  # the deterministic rows carry everything; sampled rows would be zero
        idx = np.zeros(0, dtype=np.int64)
        w = np.zeros(0)
    sk.indices = np.concatenate([np.sort(D).astype(np.int64), idx])
    sk.weights = np.concatenate([np.ones(d), w])
    sk.n_deterministic = d
    return sk


def _need(A, name, probs):
    if A is None:
        raise OptionError(f"probs={probs!r} needs {name}")
    return A


def _probs_from(X, Y, probs, t) -> np.ndarray:
    if isinstance(probs, str) and probs != "uniform" and X is None:
        raise OptionError(f"probs={probs!r} needs X (and Y for 'xy')")
    if isinstance(probs, str) and probs == "uniform":
        return np.full(t, 1.0 / t)
    return sampling_probabilities(X, Y, probs)


@public
def estimate(X, Y, k: int, kind: str = "gaussian", *, seed: int = 0, stream: int = 0, **options):
    """Unbiased estimate of ``X^T Y`` (m, n) from a sketch of size ``k``.

    Parameters
    ----------
    X : array (t, m)
    Y : array (t, n)
    k : int
        Sketch size, ``1 <= k <= t``.
    kind : str
        One of :data:`KINDS`; ``options`` go to :func:`make_sketch` (``probs``,
        ``replace``, ``deterministic``).
    seed, stream : int

    Returns
    -------
    array (m, n) of the same kind and dtype as ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> X, Y = np.ones((8, 2)), np.ones((8, 3))
    >>> estimate(X, Y, 4, "crs", probs="uniform", seed=1).shape
    (2, 3)
    """
    for A, name in ((X, "X"), (Y, "Y")):
        if not hasattr(A, "shape") or len(A.shape) != 2:
            raise ShapeError(f"{name} must be a 2-D array (t, cols), got shape {getattr(A, 'shape', None)}")
    if int(X.shape[0]) != int(Y.shape[0]):
        raise ShapeError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must have the same number of rows t")
    sk = make_sketch(kind, int(X.shape[0]), k, seed=seed, stream=stream, X=X, Y=Y, **options)
    return sk.estimate(X, Y)
