"""A learned basis and index set that track a layer's gradient subspace during training.

The paper fits ``U``, ``V`` once, from ~130 warm-up gradients (an HOSVD of the stack), and
keeps the top-``k`` entries each step. facts.md measured that the subspace drifts (the
basis fitted on steps 1-130 keeps ~8 points less energy on later steps than one fitted on
the last 30), so a one-off fit loses energy on every later step. :class:`OnlineBasis`
refits instead:

* streaming Gram estimate -- ``A <- d A + G G^T / ||G||^2``, ``B <- d B + G^T G / ||G||^2``
  after every step (``decay`` ``d``; memory ``n^2 + m^2`` whatever the number of steps);
* every ``refresh_every`` (``K``) steps ``U``, ``V`` become the eigenvectors of ``A``, ``B``
  (decreasing eigenvalue; sign-fixed), and the index set the top ``k`` entries of the
  exponentially weighted energy ``sum_q s^(p-1-q) (U^T G_q V)^2 / ||G_q||^2`` of the last
  ``window`` gradients, scored *in the new basis* (scores from an old basis mean nothing
  after a rotation). The last ``window`` gradients are kept (``window * n * m`` floats).

The index set used at step ``s`` is always chosen from steps ``< s`` only: the energy
that :func:`lrmath.sparsegrad._study.energy_study` reports for it is held out.

With a trainer (:class:`lrmath.torch.SparseGradLinear`), a refresh moves the layer to the
new ``(U, V, idx)`` with :meth:`~lrmath.torch.SparseGradLinear.refresh`; the optimizer
state is carried over by rotating it into the new basis (``rotate_state=True``).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..backend import check_array, check_positive_int, public, to_numpy
from .bases import LearnedBasis, _sym_eig_desc
from .select import _topk_flat_numpy, k_for_density

__all__ = ["OnlineBasis"]


@public
class OnlineBasis:
    """Streaming learned basis + index set of one ``(n, m)`` layer (see module docstring).

    Parameters
    ----------
    n, m : int
        Gradient shape (torch layout: out, in).
    density : float
        Share of entries in the index set (``k = round(density n m)``).
    refresh_every : int
        ``K``: refit ``U``, ``V`` and the set every ``K`` updates (1 = every step).
    decay : float in (0, 1]
        Forgetting factor of the Gram estimate (0.9: an effective window of ~10 steps).
    window : int
        Gradients kept for scoring the index set in a new basis.
    score_decay : float in (0, 1]
        Weight ``s`` of older gradients in the score.
    normalize : bool
        Weight each step by ``1 / ||G||_F^2`` (facts.md: normalised steps keep more energy).
    dtype : numpy dtype
        Precision of the eigensolver (float32 halves its time) and of the bases.
    """

    def __init__(self, n: int, m: int, density: float = 0.01, *, refresh_every: int = 1, decay: float = 0.9,
                 window: int = 5, score_decay: float = 0.7, normalize: bool = True, dtype=np.float32):
        self.n = check_positive_int(n, "n")
        self.m = check_positive_int(m, "m")
        self.k = k_for_density((self.n, self.m), density)
        self.refresh_every = check_positive_int(refresh_every, "refresh_every")
        self.window = check_positive_int(window, "window")
        for name, v in (("decay", decay), ("score_decay", score_decay)):
            if not (0.0 < float(v) <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        self.decay, self.score_decay = float(decay), float(score_decay)
        self.normalize = bool(normalize)
        self.dtype = np.dtype(dtype)
        self.A = np.zeros((self.n, self.n))
        self.B = np.zeros((self.m, self.m))
        self.recent: deque = deque(maxlen=self.window)
        self.steps = 0
        self.U: LearnedBasis | None = None
        self.V: LearnedBasis | None = None
        self.indices: np.ndarray | None = None

    def update(self, G, *, gram: tuple[np.ndarray, np.ndarray] | None = None, refresh: bool | None = None) -> bool:
        """Add one gradient ``G (n, m)``; refresh when due. Returns True if it refreshed.

        ``gram`` may pass precomputed ``(G G^T, G^T G)`` (the study reuses them across variants);
        ``refresh=False`` only accumulates (a warm-up), ``True`` forces a refresh.
        """
        check_array(G, "G", shape=(self.n, self.m))
        g = np.asarray(to_numpy(G), dtype=np.float64)
        a, b = gram if gram is not None else (g @ g.T, g.T @ g)
        w = 1.0
        if self.normalize:
            tr = float(np.trace(a))
            if tr <= 0.0:
                return False  # an all-zero gradient carries no direction
            w = 1.0 / tr
        self.A *= self.decay
        self.B *= self.decay
        self.A += w * a
        self.B += w * b
        self.recent.append((g, w))
        self.steps += 1
        due = self.steps % self.refresh_every == 0 or self.U is None
        if refresh if refresh is not None else due:
            self.refresh()
            return True
        return False

    def refresh(self):
        """Refit ``U``, ``V`` from the Gram estimate and the index set from the recent window.

        Returns ``(U, V, indices)``."""
        if self.steps == 0:
            from ..errors import EmptyInputError

            raise EmptyInputError("no gradients yet: call update() first")
        wa, U = _sym_eig_desc(self.A, self.dtype.type if self.dtype == np.float32 else np.float64)
        wb, V = _sym_eig_desc(self.B, self.dtype.type if self.dtype == np.float32 else np.float64)
        score = np.zeros(self.n * self.m)
        for g, w in self.recent:  # oldest first
            score *= self.score_decay
            score += w * ((U.T @ g @ V) ** 2).ravel()
        self.indices = _topk_flat_numpy(score, self.k)
        self.U = LearnedBasis(U.astype(self.dtype), wa, check=False)
        self.V = LearnedBasis(V.astype(self.dtype), wb, check=False)
        return self.U, self.V, self.indices

    def __repr__(self) -> str:
        return (f"OnlineBasis(n={self.n}, m={self.m}, k={self.k}, refresh_every={self.refresh_every}, decay={self.decay}, "
                f"window={self.window}, score_decay={self.score_decay}, steps={self.steps})")
