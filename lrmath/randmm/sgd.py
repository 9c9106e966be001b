"""Sketch variance versus the variance SGD already has (Bershatsky et al. 2022, Sec. 4).

A mini-batch gradient is the mean of ``B`` per-example gradients ``g_n`` drawn from a
population of ``N``; its variance is (facts.md)

    Var_SGD = (1/B) [ (1/N) sum_n ||g_n||^2 - ||g_bar||^2 ]      (with replacement)
              ... times (N - B)/(N - 1)                            (without replacement).

Sketching ``dW = dY^T X`` of that batch adds ``E||dW_hat - dW||^2`` on top (independent
of the batch draw, so there is no cross term). :func:`compare` reports the ratio
``Var_sketch / Var_SGD`` per estimator and compression, and :func:`max_compression`
returns the smallest ``k`` whose ratio stays below a target, i.e. the largest safe
compression. Rule of thumb from facts.md: ratio ~ ``B / k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import check_array, public, to_numpy
from ..errors import OptionError, ShapeError
from .estimators import check_k
from .variance import stats, variance

__all__ = ["per_example_gradients", "sgd_variance", "compare", "Comparison", "max_compression", "Compression"]


@public
def per_example_gradients(X, dY, n_examples: int, *, scale: float | None = None) -> np.ndarray:
    """Per-example weight gradients ``g_b = scale * dY_b^T X_b`` (B, n, m), torch layout.

    Parameters
    ----------
    X : array (t, m)
        Layer inputs of a batch, examples stored contiguously (``t = B * s``).
    dY : array (t, n)
        Output gradients of the *mean* loss over the batch.
    n_examples : int
        ``B``; must divide ``t``.
    scale : float, optional
        Default ``B``: turns gradients of the mean loss into gradients of each example's
        own loss, so that their mean is the batch gradient ``dY^T X``.
    """
    check_array(X, "X", ndim=2)
    check_array(dY, "dY", ndim=2)
    t = int(X.shape[0])
    if int(dY.shape[0]) != t:
        raise ShapeError(f"X {tuple(X.shape)} and dY {tuple(dY.shape)} must have the same number of rows")
    B = int(n_examples)
    if B < 1 or t % B:
        raise ShapeError(f"n_examples={n_examples} must divide the number of rows t={t}")
    s = t // B
    Xn = np.asarray(to_numpy(X), dtype=np.float64).reshape(B, s, -1)
    Dn = np.asarray(to_numpy(dY), dtype=np.float64).reshape(B, s, -1)
    return (B if scale is None else scale) * np.einsum("bsn,bsm->bnm", Dn, Xn)


@public
def sgd_variance(per_example, batch_size: int, *, replace: bool = True) -> float:
    """``E||g_batch - g_bar||^2`` of the mean of ``batch_size`` draws from ``per_example``.

    Parameters
    ----------
    per_example : array (N, ...)
        The population of per-example gradients (any trailing shape).
    batch_size : int
        ``B``; without replacement ``B <= N``.
    replace : bool
        Draws with (default) or without replacement (finite-population correction).
    """
    G = np.asarray(to_numpy(per_example), dtype=np.float64)
    if G.ndim < 1 or G.shape[0] < 1:
        raise ShapeError(f"per_example must have at least one example, got shape {G.shape}")
    N = G.shape[0]
    G = G.reshape(N, -1)
    B = int(batch_size)
    if B < 1 or (not replace and B > N):
        raise OptionError(f"batch_size={batch_size} must be in [1, {N if not replace else 'inf'})")
    mean = G.mean(axis=0)
    pop = float(np.mean(np.einsum("ij,ij->i", G, G)) - mean @ mean)
    v = pop / B
    if not replace:
        v *= (N - B) / (N - 1) if N > 1 else 0.0
    return v


@public
@dataclass
class Comparison:
    """Rows ``(estimator, k, ratio k/t, Var_sketch, Var_sketch / Var_SGD)``."""

    t: int
    sgd: float
    rows: list = field(default_factory=list)

    def __repr__(self) -> str:
        head = f"Comparison(t={self.t}, Var_SGD={self.sgd:.4g})\n"
        lines = [f"{'estimator':<22} {'k':>6} {'k/t':>6} {'Var_sketch':>12} {'sketch/SGD':>11}"]
        for r in self.rows:
            lines.append(f"{r['estimator']:<22} {r['k']:>6d} {r['ratio']:>6.3f} {r['variance']:>12.4g} {r['vs_sgd']:>11.4g}")
        return head + "\n".join(lines)

    def to_dict(self) -> dict:
        return {"t": self.t, "sgd": self.sgd, "rows": self.rows}


def _label(kind: str, opts: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in opts.items())
    return f"{kind}({extra})" if extra else kind


@public
def compare(X, dY, sgd_var: float, ratios=(0.5, 0.25, 0.1), estimators=None) -> Comparison:
    """Exact sketch variance and its ratio to ``sgd_var`` for each estimator and ``k/t``.

    ``estimators`` is a list of ``(kind, options)``; by default every fixed-size kind
    with the probabilities a layer can use and the optimal standalone ones.
    """
    st = stats(X, dY)
    if not sgd_var > 0:
        raise OptionError(f"sgd_var must be positive, got {sgd_var}")
    if estimators is None:
        estimators = [
            ("gaussian", {}),
            ("rademacher", {}),
            ("srht", {"replace": False}),
            ("crs", {"probs": "uniform"}),
            ("crs", {"probs": "x"}),
            ("crs", {"probs": "xy"}),
            ("wta", {"probs": "xy"}),
        ]
    out = Comparison(st.t, float(sgd_var))
    for r in ratios:
        k = max(1, min(st.t, int(round(r * st.t))))
        for kind, opts in estimators:
            v = variance(st, None, k, kind, **opts)
            out.rows.append({"estimator": _label(kind, opts), "k": k, "ratio": k / st.t, "variance": v, "vs_sgd": v / sgd_var})
    return out


@public
@dataclass
class Compression:
    """Result of :func:`max_compression`: the smallest safe ``k`` and what it gives."""

    kind: str
    t: int
    k: int
    variance: float
    vs_sgd: float
    target: float

    @property
    def ratio(self) -> float:
        return self.k / self.t

    @property
    def reached(self) -> bool:
        """False when even ``k = t`` leaves the sketch variance above the target."""
        return self.vs_sgd <= self.target * (1 + 1e-12)

    def __repr__(self) -> str:
        cmp = "<=" if self.reached else "> (target not reachable; no compression)"
        return (
            f"Compression(kind={self.kind!r}, k={self.k} of t={self.t} (k/t={self.ratio:.3f}), "
            f"Var_sketch/Var_SGD={self.vs_sgd:.3g} {cmp} target {self.target:g})"
        )


@public
def max_compression(X, dY, sgd_var: float, target: float = 1.0, kind: str = "crs", **options) -> Compression:
    """Smallest ``k`` with ``Var_sketch(k) <= target * sgd_var`` (bisection; every formula
    in :mod:`.variance` decreases in ``k``).

    Returns ``k = t`` (no compression) when even ``k = t`` misses the target, which only
    happens for the dense sketches (their variance stays positive at ``k = t``).
    """
    st = stats(X, dY)
    if not (target > 0 and math.isfinite(target)):
        raise OptionError(f"target must be a positive number, got {target}")
    if not sgd_var > 0:
        raise OptionError(f"sgd_var must be positive, got {sgd_var}")
    bound = target * sgd_var
    f = lambda k: variance(st, None, k, kind, **options)  # noqa: E731
    lo, hi = 1, st.t
    if f(hi) > bound:
        v = f(hi)
        return Compression(kind, st.t, hi, v, v / sgd_var, target)
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid) <= bound:
            hi = mid
        else:
            lo = mid + 1
    check_k(lo, st.t)
    v = f(lo)
    return Compression(kind, st.t, lo, v, v / sgd_var, target)
