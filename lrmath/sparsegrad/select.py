"""Choosing which transformed-gradient entries to keep.

Index sets are 1-D int64 arrays of *flat* row-major indices into the ``(n, m)``
transformed gradient, sorted ascending (so ``rows = idx // m``, ``cols = idx % m`` are
already in CSR order). Every selection uses one deterministic tie rule: larger
magnitude first; among equal magnitudes, the lower flat index wins (decisions.md:
discrete outputs need a tie rule to be comparable).

* :func:`topk_global` -- the paper's rule: the ``k`` largest ``|G~_ij|`` of the layer.
* :func:`topk_per_row` -- ``k`` per row (balanced work per output neuron).
* :func:`threshold_select` -- every entry with ``|G~_ij| >= tau``.
* :class:`IndexSelector` -- a *fixed* index set chosen from statistics accumulated over
  steps and refreshed every ``K`` steps, what a trainer needs so that optimizer state
  has a fixed sparse layout. Statistics are kept for a bounded pool of candidates
  (``pool * k`` entries, a heavy-hitters sketch) so they never cost a dense ``(n, m)``
  buffer; ``pool=None`` keeps exact dense statistics.
* :func:`carry_over` -- move per-entry state (optimizer moments, values) from an old
  index set to a new one: kept indices keep their state, new ones start at zero.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import (
    array_namespace,
    check_array,
    check_positive_int,
    check_squarable,
    is_numpy,
    like,
    public,
    to_numpy,
)
from ..errors import (
    ArgumentTypeError,
    IndexRangeError,
    OptionError,
    ShapeError,
)

__all__ = [
    "k_for_density",
    "topk_global",
    "topk_per_row",
    "threshold_select",
    "topk_of_values",
    "IndexSelector",
    "carry_over",
    "check_indices",
]


@public
def k_for_density(shape, density: float) -> int:
    """Number of entries ``max(1, round(density * n * m))`` for a density in (0, 1]."""
    density = float(density)
    if not (0.0 < density <= 1.0) or math.isnan(density):
        raise OptionError(f"density must be in (0, 1], got {density}")
    size = int(np.prod(shape))
    return max(1, min(size, int(round(density * size))))


@public
def check_indices(idx, shape) -> np.ndarray:
    """Validate a flat index set for ``shape``: 1-D integers, in range, strictly increasing."""
    a = np.asarray(to_numpy(idx))
    if a.ndim != 1:
        raise ShapeError(f"index set must be 1-D flat indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ArgumentTypeError(f"index set must hold integers, got {a.dtype}")
    a = a.astype(np.int64, copy=False)
    size = int(np.prod(shape))
    if a.size and (a[0] < 0 or a.max() >= size or a.min() < 0):
        raise IndexRangeError(f"flat index out of range for shape {tuple(shape)}: min {a.min()}, max {a.max()}")
    if a.size > 1 and np.any(np.diff(a) <= 0):
        raise OptionError("index set must be sorted ascending without duplicates")
    return a


@public
def topk_of_values(idx: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Positions (into ``idx``) of the ``k`` best ``score`` entries with the tie rule
    (higher score, then lower ``idx``), returned in ascending ``idx`` order."""
    if k >= idx.size:
        return np.argsort(idx, kind="stable")
    order = np.lexsort((idx, -score))[:k]
    return order[np.argsort(idx[order], kind="stable")]


def _topk_flat_numpy(a: np.ndarray, k: int) -> np.ndarray:
    size = a.size
    if k >= size:
        return np.arange(size, dtype=np.int64)
    thr = np.partition(a, size - k)[size - k]  # the k-th largest magnitude
    above = np.flatnonzero(a > thr)
    ties = np.flatnonzero(a == thr)[: k - above.size]  # lower index wins ties
    return np.sort(np.concatenate([above, ties])).astype(np.int64)


@public
def topk_global(Gt, k: int):
    """Flat indices (sorted) of the ``k`` largest ``|Gt|`` entries of ``Gt (n, m)``.

    Returns an int64 array of the input's kind. Cost ``O(n m)`` on NumPy (partition),
    ``O(n m log(n m))`` through the array API (stable sort).
    """
    xp = check_array(Gt, "Gt", ndim=2)
    k = check_positive_int(k, "k")
    a = xp.abs(xp.reshape(Gt, (-1,)))
    if is_numpy(a):
        return _topk_flat_numpy(a, k)
    k = min(k, int(a.shape[0]))
    order = xp.argsort(a, descending=True, stable=True)[:k]
    return xp.astype(xp.sort(order), xp.int64)


@public
def topk_per_row(Gt, k: int):
    """Flat indices (sorted) of the ``k`` largest ``|Gt|`` entries in each row of ``Gt (n, m)``."""
    xp = check_array(Gt, "Gt", ndim=2)
    n, m = int(Gt.shape[0]), int(Gt.shape[1])
    k = check_positive_int(k, "k", maximum=m)
    a = xp.abs(Gt)
    order = xp.argsort(a, axis=1, descending=True, stable=True)[:, :k]
    order = xp.sort(order, axis=1)
    base = xp.reshape(xp.arange(n, dtype=xp.int64, **_dev(Gt)) * m, (n, 1))
    return xp.reshape(xp.astype(order, xp.int64) + base, (-1,))


@public
def threshold_select(Gt, tau: float):
    """Flat indices (sorted) of the entries with ``|Gt| >= tau``."""
    xp = check_array(Gt, "Gt", ndim=2)
    tau = float(tau)
    if not tau >= 0.0:
        raise OptionError(f"threshold must be >= 0, got {tau}")
    a = xp.reshape(xp.abs(Gt), (-1,))
    (idx,) = xp.nonzero(a >= tau)
    return xp.astype(idx, xp.int64)


def _dev(x):
    from ..backend import backend_name, device_of

    return {} if backend_name(x) == "numpy" else {"device": device_of(x)}


@public
def carry_over(values, old_idx, new_idx):
    """State for ``new_idx`` from state ``values`` on ``old_idx`` (kept entries keep their
    value, new entries start at zero). ``values`` may have leading batch axes; the last
    axis runs over ``old_idx``."""
    xp = array_namespace(values)
    old = check_indices(old_idx, (np.iinfo(np.int64).max,))
    new = check_indices(new_idx, (np.iinfo(np.int64).max,))
    if values.shape[-1] != old.size:
        raise ShapeError(f"values has {values.shape[-1]} entries on its last axis, index set has {old.size}")
    _, pos_old, pos_new = np.intersect1d(old, new, assume_unique=True, return_indices=True)
    out = xp.zeros(tuple(values.shape[:-1]) + (new.size,), dtype=values.dtype, **_dev(values))
    if pos_old.size:
        po = like(pos_old.astype(np.int64), values) if not is_numpy(values) else pos_old
        pn = like(pos_new.astype(np.int64), values) if not is_numpy(values) else pos_new
        if is_numpy(values):
            out[..., pn] = values[..., po]
        else:
            out[..., pn] = xp.take(values, po, axis=-1)
    return out


@public
class IndexSelector:
    """A fixed index set of ``k`` entries, chosen from accumulated statistics and refreshed
    every ``refresh_every`` steps.

    The score of entry ``(i, j)`` is an exponentially weighted energy
    ``s_ij <- decay * s_ij + G~_ij^2`` over the steps seen since the last refresh window
    began (scores persist across refreshes, so the set changes only when the energy moves).

    Parameters
    ----------
    shape : (n, m)
        Shape of the transformed gradient.
    density : float, optional
        Fraction of entries to keep (``k = round(density n m)``); or give ``k``.
    k : int, optional
    refresh_every : int
        ``K``: :meth:`step` returns True every ``K`` updates.
    decay : float in (0, 1]
        Forgetting factor of the scores.
    pool : int or None
        Keep statistics for the best ``pool * k`` candidates only (bounded memory; entries
        that fall out of the pool lose their history). ``None`` keeps all ``n m`` scores.
    """

    def __init__(self, shape, density: float | None = None, *, k: int | None = None, refresh_every: int = 100,
                 decay: float = 0.9, pool: int | None = 4):
        if len(shape) != 2:
            raise ShapeError(f"shape must be (n, m), got {shape}")
        self.shape = (check_positive_int(shape[0], "n"), check_positive_int(shape[1], "m"))
        if (density is None) == (k is None):
            raise OptionError("give exactly one of density and k")
        self.k = k_for_density(self.shape, density) if k is None else check_positive_int(k, "k", maximum=self.shape[0] * self.shape[1])
        self.refresh_every = check_positive_int(refresh_every, "refresh_every")
        decay = float(decay)
        if not (0.0 < decay <= 1.0):
            raise OptionError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.pool = None if pool is None else check_positive_int(pool, "pool")
        self.cand = np.zeros(0, dtype=np.int64)
        self.score = np.zeros(0, dtype=np.float64)
        self.steps = 0
        self.indices: np.ndarray | None = None
        self._dense: np.ndarray | None = None

    @property
    def capacity(self) -> int:
        size = self.shape[0] * self.shape[1]
        return size if self.pool is None else min(size, self.pool * self.k)

    def update(self, Gt=None, *, indices=None, values=None) -> "IndexSelector":
        """Add one step: a dense ``Gt (n, m)``, or a sparse sample ``(indices, values)`` of it
        (e.g. from :func:`lrmath.sparsegrad.topk_product`)."""
        if Gt is not None:
            check_array(Gt, "Gt", shape=self.shape)
            check_squarable(Gt, "Gt")
            a = np.asarray(to_numpy(Gt), dtype=np.float64).ravel()
            if self.pool is None:
                idx = val = None
            else:
                idx = _topk_flat_numpy(np.abs(a), self.capacity)
                val = a[idx]
        else:
            if indices is None or values is None:
                raise OptionError("update needs Gt or both indices and values")
            idx = check_indices(indices, self.shape)
            val = np.asarray(to_numpy(values), dtype=np.float64).ravel()
            if val.size != idx.size:
                raise ShapeError(f"{idx.size} indices but {val.size} values")
            if not np.all(np.isfinite(val)):
                from ..errors import NonFiniteError

                raise NonFiniteError("values hold NaN/Inf")
            check_squarable(val, "values")
        if self.pool is None:  # exact dense statistics: one score per entry
            if self._dense is None:
                self._dense = np.zeros(self.shape[0] * self.shape[1])
            self._dense *= self.decay
            if Gt is None:
                np.add.at(self._dense, idx, val * val)
            else:
                self._dense += a * a
            self.steps += 1
            return self
        allidx = np.union1d(self.cand, idx)
        score = np.zeros(allidx.size)
        score[np.searchsorted(allidx, self.cand)] = self.decay * self.score
        score[np.searchsorted(allidx, idx)] += val * val
        keep = topk_of_values(allidx, score, self.capacity)
        self.cand, self.score = allidx[keep], score[keep]
        self.steps += 1
        return self

    def select(self) -> np.ndarray:
        """The current best ``k`` indices (sorted); also stored as ``self.indices``. If fewer
        than ``k`` entries were ever seen, the set is filled with the lowest unseen indices."""
        if self._dense is not None:
            idx = _topk_flat_numpy(self._dense, self.k)  # zero scores fill by lowest index
        else:
            pos = topk_of_values(self.cand, self.score, self.k)
            idx = self.cand[pos]
        if idx.size < self.k:
            extra = np.setdiff1d(np.arange(self.k + idx.size, dtype=np.int64), idx)[: self.k - idx.size]
            idx = np.sort(np.concatenate([idx, extra]))
        self.indices = idx
        return idx

    def due(self) -> bool:
        """True when ``refresh_every`` updates have passed since the start or the last refresh."""
        return self.steps > 0 and self.steps % self.refresh_every == 0

    def __repr__(self) -> str:
        return (f"IndexSelector(shape={self.shape}, k={self.k}, refresh_every={self.refresh_every}, "
                f"decay={self.decay}, pool={self.pool}, steps={self.steps}, candidates={self.cand.size})")


def _fixed_index_set(grads, to_basis, shape, density, *, decay: float = 1.0, normalize: bool = False) -> np.ndarray:
    """One fixed index set from warm-up gradients: the top ``density`` entries of the
    ``decay``-weighted sum of the transformed energies ``to_basis(G_s)^2``, each step divided by
    its total energy ``||G_s||^2`` when ``normalize`` (the default layer's rule; the paper's is
    ``decay=1, normalize=False``). Shared by :func:`lrmath.torch.sparsegrad_mlp` and the energy study."""
    sel = IndexSelector(shape, density=density, pool=None, decay=decay)
    for g in grads:
        gt = to_basis(g)
        tot = float(np.sum(np.asarray(g, np.float64) ** 2)) if normalize else 1.0
        sel.update(gt / np.sqrt(tot) if tot > 0 else gt)
    return sel.select()
