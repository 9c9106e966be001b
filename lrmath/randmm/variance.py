"""Exact variances ``E||C_hat - C||_F^2`` of the estimators in :mod:`.estimators`.

Notation (facts.md "Randomized backprop", derived and checked by simulation):
``C = X^T Y``; rows ``x_i, y_i``; ``u_i = ||x_i||^2``, ``v_i = ||y_i||^2``,
``a_i = ||x_i|| ||y_i||``, ``S2 = sum u_i v_i``, ``F = ||X||_F^2 ||Y||_F^2``.

==========================  ======================================================
estimator                   ``E||C_hat - C||^2``
==========================  ======================================================
gaussian (``N(0, 1/k)``)    ``(F + ||C||^2) / k``
rademacher                  ``(F + ||C||^2 - 2 S2) / k``
iid entries, kurtosis mu4   ``(F + ||C||^2 + (mu4 - 3) S2) / k``
srht / srdct, replace       ``(t E_D[sum_r ||x~_r||^2 ||y~_r||^2] - ||C||^2) / k``,
                            ``X~ = H D X``; equals rademacher for normalised Hadamard
... without replacement     the same times ``(t - k) / (t - 1)``
crs, probabilities p        ``(sum u_i v_i / p_i - ||C||^2) / k``; optimum
                            ``p ~ a``: ``((sum a)^2 - ||C||^2) / k``
crs uniform, no replace     ``(t S2 - ||C||^2) / k * (t - k) / (t - 1)``
bernoulli, keep prob. q     ``sum (1/q_i - 1) u_i v_i``; water-filled optimum
                            ``(sum_U a)^2 / (k - |F1|) - sum_U a^2``
wta                         ``[(1 - P_D) sum_{i not in D} u_i v_i / p_i
                            - ||sum_{i not in D} x_i y_i^T||^2] / (k - |D|)``
==========================  ======================================================

For the transforms, ``E_D`` over the random signs is exact: with ``M = H o H``
(entrywise square) and ``G = (X X^T) o (Y Y^T)``,
``sum_r E_D ||x~_r||^2 ||y~_r||^2 = sum_r (M u)_r (M v)_r + 2 <G, M^T M> - 2 sum_i (sum_r M_ri^2) u_i v_i``.
All quantities are computed in float64 on the host (they are scalar diagnostics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import check_array, public, to_numpy
from ..errors import OptionError, ShapeError
from .estimators import KINDS, _TRANSFORM, bernoulli_probabilities, check_k, sampling_probabilities

__all__ = [
    "Stats",
    "stats",
    "variance",
    "optimal_probabilities",
    "crs_variance",
    "bernoulli_variance",
    "optimal_bernoulli_variance",
    "wta_variances",
    "wta_deterministic_size",
    "transform_row_moment",
]


@public
@dataclass
class Stats:
    """Float64 summaries of ``(X, Y)`` shared by every formula (computed once)."""

    X: np.ndarray
    Y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    C: np.ndarray
    C2: float
    S2: float
    F: float

    @property
    def t(self) -> int:
        return int(self.u.size)

    @property
    def a(self) -> np.ndarray:
        return np.sqrt(self.u * self.v)


@public
def stats(X, Y) -> Stats:
    """:class:`Stats` of ``X`` (t, m) and ``Y`` (t, n)."""
    if isinstance(X, Stats):
        return X
    check_array(X, "X", ndim=2)
    check_array(Y, "Y", ndim=2)
    if int(X.shape[0]) != int(Y.shape[0]):
        raise ShapeError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must have the same number of rows t")
    Xn = np.asarray(to_numpy(X), dtype=np.float64)
    Yn = np.asarray(to_numpy(Y), dtype=np.float64)
    u = np.einsum("ij,ij->i", Xn, Xn)
    v = np.einsum("ij,ij->i", Yn, Yn)
    C = Xn.T @ Yn
    return Stats(Xn, Yn, u, v, C, float(np.sum(C * C)), float(np.dot(u, v)), float(u.sum() * v.sum()))


@public
def optimal_probabilities(X, Y) -> np.ndarray:
    """``p_i = ||x_i|| ||y_i|| / sum_j ||x_j|| ||y_j||``, the minimiser of the CRS variance."""
    return sampling_probabilities(X, Y, "xy")


@public
def crs_variance(st: Stats, p: np.ndarray, k: int) -> float:
    """``(sum u_i v_i / p_i - ||C||^2) / k`` (rows with ``p_i = 0`` must have ``u_i v_i = 0``)."""
    uv = st.u * st.v
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(uv > 0, uv / p, 0.0)
    return float((terms.sum() - st.C2) / k)


@public
def bernoulli_variance(st: Stats, q: np.ndarray) -> float:
    """``sum (1/q_i - 1) u_i v_i`` for Poisson sampling with keep-probabilities ``q``."""
    uv = st.u * st.v
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(uv > 0, (1.0 / q - 1.0) * uv, 0.0)
    return float(terms.sum())


@public
def optimal_bernoulli_variance(st: Stats, k: float) -> float:
    """Closed form at the water-filling optimum: ``(sum_U a)^2 / (k - |F1|) - sum_U a^2``."""
    a = st.a
    q = bernoulli_probabilities(a, k)
    full = q >= 1.0 - 1e-12
    U = ~full & (a > 0)
    if not U.any():
        return 0.0
    return float(a[U].sum() ** 2 / (k - full.sum()) - np.sum(a[U] ** 2))


@public
def transform_row_moment(kind: str, st: Stats) -> float:
    """``sum_r E_D ||x~_r||^2 ||y~_r||^2`` for ``X~ = H D X`` (random signs ``D``).

    For a power-of-two Hadamard (``|H_ri| = 1/sqrt(t)``) this is ``(F + 2||C||^2 - 2 S2)/t``;
    otherwise it is computed from ``M = H o H`` and the Gram matrices (``O(t^2 (m + n) + t^3)``).
    """
    from ..ops import orthogonal

    t = st.t
    if kind == "srht" and t & (t - 1) == 0:
        return (st.F + 2.0 * st.C2 - 2.0 * st.S2) / t
    H = orthogonal(_TRANSFORM[kind], t, seed=0).matrix()
    M = H * H
    G = (st.X @ st.X.T) * (st.Y @ st.Y.T)
    first = float(np.dot(M @ st.u, M @ st.v))
    second = float(np.sum(G * (M.T @ M)))
    third = float(np.dot((M * M).sum(axis=0), st.u * st.v))
    return first + 2.0 * second - 2.0 * third


def _sorted_desc(p: np.ndarray) -> np.ndarray:
    return np.argsort(-p, kind="stable")


@public
def wta_variances(p: np.ndarray, k: int, X, Y=None) -> np.ndarray:
    """Exact WTA-CRS variance for every ``|D| = 0 .. k-1`` (array of length ``k``).

    ``D`` is the ``|D|`` rows of largest ``p`` (stable order), ``k' = k - |D|``:
    ``Var = [(1 - P_D) sum_{i not in D} u_i v_i / p_i - ||C - sum_D x_i y_i^T||^2] / k'``.
    ``||C_rest||^2 = ||C||^2 - 2 sum_D x_i^T C y_i + sum_{i,j in D} <x_i,x_j><y_i,y_j>``
    is accumulated over ``|D|`` with a ``(k-1) x (k-1)`` Gram block.
    """
    st = stats(X, Y)
    p = np.asarray(p, dtype=np.float64)
    t = st.t
    k = check_k(k, t)
    order = _sorted_desc(p)
    d_max = min(k - 1, t)
    top = order[:d_max]
    uv = st.u * st.v
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(uv > 0, uv / p, 0.0)
    total = ratio.sum()
    pref_ratio = np.concatenate([[0.0], np.cumsum(ratio[top])])  # over d = 0..d_max
    PD = np.concatenate([[0.0], np.cumsum(p[top])])
    XT, YT = st.X[top], st.Y[top]
    m, n = st.C.shape
    if m * n <= t * (m + n):
        r = np.einsum("ij,ij->i", XT @ st.C, YT)
    else:
        r = np.einsum("ij,ij->i", XT @ st.X.T, YT @ st.Y.T)  # sum_j <x_i,x_j><y_i,y_j>
    G = (XT @ XT.T) * (YT @ YT.T)
    lower = np.tril(G, -1).sum(axis=1)
    Q = np.concatenate([[0.0], np.cumsum(np.diag(G) + 2.0 * lower)])
    Crest2 = st.C2 - 2.0 * np.concatenate([[0.0], np.cumsum(r)]) + Q
    d = np.arange(d_max + 1)
    var = ((1.0 - PD) * (total - pref_ratio) - Crest2) / (k - d)
    return var


@public
def wta_deterministic_size(p: np.ndarray, k: int, *, rule: str = "optimal", X=None, Y=None) -> int:
    """``|D|`` for WTA-CRS: ``'optimal'`` minimises :func:`wta_variances` (decisions.md);
    ``'authors'`` is the largest ``|D| < k`` with ``P_D > |D| / k`` (Liu et al. 2023: the
    sufficient condition for WTA-CRS to beat CRS), 0 if none."""
    p = np.asarray(p, dtype=np.float64)
    k = int(k)
    if rule == "optimal":
        if X is None or Y is None:
            raise OptionError("the optimal |D| needs X and Y")
        return int(np.argmin(wta_variances(p, k, X, Y)))
    if rule == "authors":
        PD = np.cumsum(np.sort(p)[::-1])[: k - 1]
        d = np.arange(1, PD.size + 1)
        ok = np.flatnonzero(PD > d / k)
        return int(d[ok[-1]]) if ok.size else 0
    raise OptionError(f"rule must be 'optimal' or 'authors', got {rule!r}")


@public
def variance(
    X,
    Y,
    k: int,
    kind: str = "gaussian",
    *,
    probs="xy",
    replace: bool = True,
    deterministic="optimal",
) -> float:
    """Exact ``E||C_hat - C||_F^2`` of estimator ``kind`` with sketch size ``k``.

    Parameters
    ----------
    X : array (t, m) or :class:`Stats`
    Y : array (t, n) (ignored when ``X`` is a :class:`Stats`)
    k : int
        Sketch size (expected size for ``bernoulli``), ``1 <= k <= t``.
    kind, probs, replace, deterministic
        As in :func:`lrmath.randmm.make_sketch`.

    Returns
    -------
    float
        The variance (sum over all ``m n`` entries), as in the module table.
    """
    if kind not in KINDS:
        raise OptionError(f"unknown estimator {kind!r}; choose one of {KINDS}")
    st = stats(X, Y)
    t = st.t
    k = check_k(k, t)
    fpc = (t - k) / (t - 1) if t > 1 else 0.0
    if kind == "gaussian":
        return (st.F + st.C2) / k
    if kind == "rademacher":
        return (st.F + st.C2 - 2.0 * st.S2) / k
    if kind in _TRANSFORM:
        v = (t * transform_row_moment(kind, st) - st.C2) / k
        return v if replace else v * fpc
    if kind == "crs":
        if not replace:
            if not (isinstance(probs, str) and probs == "uniform"):
                raise OptionError("crs without replacement supports only probs='uniform'")
            return (t * st.S2 - st.C2) / k * fpc
        p = sampling_probabilities(st.X, st.Y, probs)
        return crs_variance(st, p, k)
    if kind == "bernoulli":
        if isinstance(probs, str):
            if probs == "uniform":
                q = np.full(t, k / t)
            elif probs == "xy":
                q = bernoulli_probabilities(st.a, k)
            elif probs == "x":
                q = bernoulli_probabilities(np.sqrt(st.u), k)
            else:
                raise OptionError(f"unknown probabilities {probs!r}")
        else:
            q = np.asarray(to_numpy(probs), dtype=np.float64)
        return bernoulli_variance(st, q)
    # wta
    p = sampling_probabilities(st.X, st.Y, probs)
    vs = wta_variances(p, k, st)
    if isinstance(deterministic, (int, np.integer)) and not isinstance(deterministic, bool):
        d = int(deterministic)
    elif deterministic == "optimal":
        d = int(np.argmin(vs))
    elif deterministic == "authors":
        d = wta_deterministic_size(p, k, rule="authors")
    else:
        raise OptionError(f"deterministic must be 'optimal', 'authors' or an int, got {deterministic!r}")
    if not 0 <= d < vs.size:
        raise OptionError(f"|D|={d} out of range [0, {vs.size})")
    return float(vs[d])
