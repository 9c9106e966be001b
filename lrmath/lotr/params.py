"""Parameter accounting: LoTR versus LoRA at equal parameter count, and the error of each.

For ``L`` layers whose updates are ``(m, n)`` matrices (LoTR, arXiv 2402.01376, sec. 3):

* LoRA of rank ``r`` on every layer stores ``L r (m + n)`` numbers;
* LoTR of ranks ``(r_a, r_b)`` stores ``r_a m + r_b n + L r_a r_b`` (shared ``A``, ``B`` and one
  core per layer) -- for ``r_a = r_b = r``: ``r (m + n) + L r^2``.

The error baselines on the same stack ``T`` (L, m, n):

* **LoRA** = per-layer truncated SVD (Eckart-Young optimal for a fixed rank per layer);
* **LoRA, pooled ranks** = the best rank-1 terms of all layers together (the ``k`` largest
  singular values over the whole stack, ``k = budget // (m + n)``): the optimum over any
  per-layer rank allocation with the same budget, a stronger baseline than equal ranks;
* **LoTR** = Tucker-2 by HOSVD + HOOI (:func:`lrmath.lotr.tucker2`).

:func:`compare` evaluates all three at the LoTR budgets of the given ranks and returns a
:class:`Comparison` whose ``repr`` is a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..backend import check_array, check_positive_int, public, to_numpy
from ..errors import RankError
from .tucker import check_ranks, tucker2

__all__ = [
    "lora_params",
    "lotr_params",
    "lora_rank_for_budget",
    "lotr_rank_for_budget",
    "matched_lora_rank",
    "svd_errors",
    "pooled_svd_error",
    "Comparison",
    "compare",
]


def _dims(m, n, L):
    return (check_positive_int(m, "m"), check_positive_int(n, "n"), check_positive_int(L, "L"))


@public
def lora_params(m: int, n: int, r: int, L: int = 1) -> int:
    """Parameters of rank-``r`` LoRA on ``L`` layers of shape (m, n): ``L r (m + n)``."""
    m, n, L = _dims(m, n, L)
    r = check_positive_int(r, "r", minimum=0)
    return L * r * (m + n)


@public
def lotr_params(m: int, n: int, r: int | Sequence[int], L: int = 1) -> int:
    """Parameters of LoTR with ranks ``r`` or ``(r_a, r_b)`` on ``L`` layers: ``r_a m + r_b n + L r_a r_b``."""
    m, n, L = _dims(m, n, L)
    r_a, r_b = (r, r) if not isinstance(r, (tuple, list)) else r
    r_a = check_positive_int(r_a, "r_a", minimum=0)
    r_b = check_positive_int(r_b, "r_b", minimum=0)
    return r_a * m + r_b * n + L * r_a * r_b


@public
def lora_rank_for_budget(budget: int, m: int, n: int, L: int = 1) -> int:
    """Largest LoRA rank ``r`` with ``L r (m + n) <= budget`` (0 if even rank 1 does not fit)."""
    m, n, L = _dims(m, n, L)
    budget = check_positive_int(budget, "budget", minimum=0)
    return min(budget // (L * (m + n)), min(m, n))


@public
def lotr_rank_for_budget(budget: int, m: int, n: int, L: int = 1) -> int:
    """Largest equal LoTR rank ``r`` with ``r (m + n) + L r^2 <= budget`` (0 if none fits).

    Solved exactly: the positive root of ``L r^2 + (m + n) r - budget`` rounded down, then
    corrected by one step either way against integer arithmetic.
    """
    m, n, L = _dims(m, n, L)
    budget = check_positive_int(budget, "budget", minimum=0)
    s = m + n
    r = int((-s + math.sqrt(s * s + 4 * L * budget)) / (2 * L))
    while r > 0 and r * s + L * r * r > budget:
        r -= 1
    while (r + 1) * s + L * (r + 1) ** 2 <= budget:
        r += 1
    return min(r, min(m, n))


@public
def matched_lora_rank(lotr_rank: int | Sequence[int], m: int, n: int, L: int) -> int:
    """LoRA rank with the largest parameter count not above LoTR's at ``lotr_rank``."""
    return lora_rank_for_budget(lotr_params(m, n, lotr_rank, L), m, n, L)


@public
def svd_errors(T) -> np.ndarray:
    """Singular values of every layer of ``T`` (L, m, n), shape (L, min(m, n)), descending.

    Computed once; the error of any truncation follows from them (Eckart-Young).
    """
    check_array(T, "T", ndim=3)
    a = np.asarray(to_numpy(T), dtype=np.float64)
    return np.linalg.svd(a, compute_uv=False)


def _lora_error(sv: np.ndarray, r: int, total: float) -> float:
    """Relative error of per-layer rank-``r`` truncation from singular values (L, k)."""
    tail = float(np.sum(sv[:, r:] ** 2))
    return math.sqrt(tail / total) if total > 0 else 0.0


@public
def pooled_svd_error(sv: np.ndarray, k: int, total: float | None = None) -> float:
    """Relative error when the ``k`` largest singular values over all layers are kept."""
    flat = np.sort(np.asarray(sv, dtype=np.float64).ravel())[::-1]
    total = float(np.sum(flat**2)) if total is None else total
    tail = float(np.sum(flat[k:] ** 2))
    return math.sqrt(tail / total) if total > 0 else 0.0


@public
@dataclass
class Comparison:
    """LoTR vs LoRA at (nearly) equal parameter count on one stack; ``repr`` is a table.

    ``rows`` holds, per LoTR rank: ``lotr_rank``, ``lotr_params``, ``lotr_error``, ``hooi_sweeps``,
    ``lora_rank`` (largest rank within LoTR's budget), ``lora_params``, ``lora_error``,
    ``pooled_error`` (LoRA with the best per-layer rank allocation of the same budget) and
    ``winner``.
    """

    shape: tuple
    rows: list = field(default_factory=list)
    label: str = ""

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "label": self.label, "rows": self.rows}

    def __repr__(self) -> str:
        L, m, n = self.shape
        head = f"Comparison({self.label + ': ' if self.label else ''}L={L} layers of {m}x{n}; relative Frobenius error)"
        cols = ["LoTR r", "LoTR params", "LoTR err", "LoRA r", "LoRA params", "LoRA err", "pooled err", "winner"]
        cells = [[str(r["lotr_rank"]), f"{r['lotr_params']:,}", f"{r['lotr_error']:.4f}", str(r["lora_rank"]),
                  f"{r['lora_params']:,}", "-" if r["lora_error"] is None else f"{r['lora_error']:.4f}",
                  f"{r['pooled_error']:.4f}", r["winner"]] for r in self.rows]
        w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
        fmt = lambda xs: "  " + " | ".join(x.rjust(k) for x, k in zip(xs, w))  # noqa: E731
        return "\n".join([head, fmt(cols), "  " + "-+-".join("-" * k for k in w), *map(fmt, cells)])


@public
def compare(T, ranks: Sequence[int], *, max_iter: int = 30, tol: float = 1e-7, label: str = "") -> Comparison:
    """Error of LoTR (Tucker-2) and LoRA (per-layer SVD) on the same stack at equal budgets.

    Parameters
    ----------
    T : array (L, m, n)
        Stack of updates (or weights) of ``L`` layers.
    ranks : sequence of int
        LoTR ranks ``r`` (``r_a = r_b = r``); each sets the budget ``r (m + n) + L r^2``.
    max_iter, tol
        HOOI settings passed to :func:`tucker2`.

    Returns
    -------
    Comparison
        One row per rank; LoRA gets the largest rank whose parameters fit in LoTR's budget
        (``lora_error`` is ``None`` when not even rank 1 fits) and ``pooled_error`` the best
        allocation of exactly ``budget // (m + n)`` rank-1 terms over the layers.
    """
    check_array(T, "T", ndim=3)
    L, m, n = (int(s) for s in T.shape)
    if not ranks:
        raise RankError("ranks must name at least one LoTR rank")
    a = np.asarray(to_numpy(T), dtype=np.float64)
    sv = svd_errors(a)
    total = float(np.sum(a * a))
    rows = []
    for r in ranks:
        check_ranks(int(r), a.shape)
        dec = tucker2(a, int(r), max_iter=max_iter, tol=tol)
        budget = lotr_params(m, n, int(r), L)
        lr = lora_rank_for_budget(budget, m, n, L)
        lora_err = _lora_error(sv, lr, total) if lr > 0 else None
        pooled = pooled_svd_error(sv, budget // (m + n), total)
        best = min([("LoTR", dec.error), ("LoRA", lora_err if lora_err is not None else math.inf), ("pooled LoRA", pooled)],
                   key=lambda kv: kv[1])
        rows.append({
            "lotr_rank": int(r), "lotr_params": budget, "lotr_error": dec.error, "hooi_sweeps": dec.n_iter,
            "lora_rank": lr, "lora_params": lora_params(m, n, lr, L) if lr else 0, "lora_error": lora_err,
            "pooled_error": pooled, "winner": best[0],
        })
    return Comparison(shape=(L, m, n), rows=rows, label=label)
