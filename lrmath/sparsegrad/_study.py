"""The energy study on real gradients (used by the CLI, the tour and the notebook).

For each MLP linear of the default model, gradients ``G_1 .. G_S`` come from a short
fine-tuning run (:func:`lrmath.data.capture_linears` with AdamW steps). Bases are
fitted on the first ``S - h`` steps and judged on the ``h`` held-out last steps:

* ``top``   -- share of ``||G~||_F^2`` in the top ``density`` entries of each held-out step;
* ``fixed`` -- share held by ONE index set chosen from the fit steps (what a trainer with a
  fixed sparse layout gets).

Learned variants: ``learned (paper: plain sum)`` -- the paper's one-off HOSVD of the fit
steps (Gram matrices summed as they are, the index set scored by the plain sum of the
transformed energies); ``learned`` -- the default, the same one-off fit with each step
normalised and recent steps weighted (Gram ``decay`` 0.85; the index set scored on
per-step normalised energies with decay 0.97: ``DEFAULT_DECAY``/``DEFAULT_SCORE_DECAY``,
chosen on validation steps by ``python -m benchmarks sparsegrad_settings``); ``learned (online, K=1)`` --
:class:`~lrmath.sparsegrad.online.OnlineBasis`: the streaming Gram estimate, with ``U``, ``V``
and the index set refitted before each held-out step from the steps before it (so
``fixed`` stays a held-out number); it keeps the most energy per step (``top``) but its
set, scored on the last 3 steps only, is 0.01 below the one-off set.
``oracle (previous step's SVD)`` uses the exact singular vectors and top entries of the
step just before -- one step carries little of the next step's subspace; a step's *own*
SVD would hold all its energy in ``min(n, m)`` diagonal entries (1.0 at 1%), which no basis
fitted on past steps can reach.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .analysis import energy_at_density
from .bases import DEFAULT_DECAY, DEFAULT_SCORE_DECAY, GramAccumulator, basis, transform
from .select import _fixed_index_set
from ..errors import OptionError

__all__ = ["mlp_layer_names", "capture_mlp_grads", "energy_study", "STUDY_BASES"]

STUDY_BASES = ("original", "dct", "hadamard", "random", "learned (paper: plain sum)", "learned",
               "learned (online, K=1)", "oracle (previous step's SVD)")
#: Settings of the online learned basis (``learned (online, K=1)``), measured in
#: benchmarks/results/sparsegrad_energy_cpu.md (``python -m benchmarks sparsegrad_energy``, the same study).
ONLINE = {"refresh_every": 1, "decay": 0.9, "window": 3, "score_decay": 0.7}


def mlp_layer_names(blocks: Sequence[int] | None = None, n_blocks: int = 6) -> list[str]:
    """``encoder.layer.{i}.intermediate.dense`` / ``.output.dense`` for the chosen blocks."""
    blocks = range(n_blocks) if blocks is None else blocks
    return [f"encoder.layer.{i}.{k}" for i in blocks for k in ("intermediate.dense", "output.dense")]


def capture_mlp_grads(steps: int, *, blocks: Sequence[int] | None = None, n_pairs: int = 8, lr: float = 2e-5,
                      max_length: int = 24, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Weight gradients ``{name: [G_1 .. G_steps]}`` of the MLP linears along a short AdamW run."""
    from .. import data

    names = mlp_layer_names(blocks)
    cap = data.capture_linears(steps=steps, layers=names, optimizer_lr=lr, n_pairs=n_pairs, max_length=max_length, seed=seed)
    return {n: (cap[n]["grads"] if steps > 1 else [cap[n]["grad"]]) for n in names}


def _share_at(Gt, idx):
    e = np.asarray(Gt, dtype=np.float64).ravel() ** 2
    tot = e.sum()
    return float(e[idx].sum() / tot) if tot > 0 else 0.0


def energy_study(grads: Mapping[str, Sequence[np.ndarray]], *, density: float = 0.01, held_out: int | None = None,
                 bases: Sequence[str] = STUDY_BASES, seed: int = 0) -> list[dict]:
    """One row per layer and basis: ``{"layer", "basis", "top", "fixed"}`` (see module docstring)."""
    rows = []
    for name, gl in grads.items():
        gl = [np.asarray(g, dtype=np.float64) for g in gl]
        S = len(gl)
        h = held_out if held_out is not None else max(1, S // 4)
        if S < 2 or not (1 <= h < S):
            raise OptionError(f"{name}: need at least one fit and one held-out step, got {S} steps and held_out={h}")
        fit, test = gl[: S - h], gl[S - h :]
        n, m = gl[0].shape
        for b in bases:
            if b.startswith("learned (online"):
                rows.append({"layer": name, "basis": b, **_online_energy(gl, S - h, density, **ONLINE)})
                continue
            if b.startswith("oracle"):
                rows.append({"layer": name, "basis": b, **_previous_svd_energy(gl, S - h, density)})
                continue
            if b.startswith("learned"):
                plain = "plain" in b
                acc = GramAccumulator(n, m, normalize=not plain, decay=1.0 if plain else DEFAULT_DECAY)
                for g in fit:
                    acc.update(g)
                U, V = acc.bases(dtype=np.float64)
            else:
                U, V = basis(b, n, seed), basis(b, m, seed)
            default = b == "learned"  # the default layer's index set (sparsegrad_mlp)
            idx = _fixed_index_set(fit, lambda g: transform(g, U, V), (n, m), density,
                                   decay=DEFAULT_SCORE_DECAY if default else 1.0, normalize=default)
            tops, fixed = [], []
            for g in test:
                Gt = transform(g, U, V)
                tops.append(energy_at_density(Gt, density))
                fixed.append(_share_at(Gt, idx))
            rows.append({"layer": name, "basis": b, "top": float(np.mean(tops)), "fixed": float(np.mean(fixed))})
    return rows


def _online_energy(gl, fit: int, density: float, **opts) -> dict:
    """``top``/``fixed`` of :class:`OnlineBasis` on the steps after ``fit`` (held out one by one)."""
    from .online import OnlineBasis

    n, m = gl[0].shape
    ob = OnlineBasis(n, m, density, dtype=np.float32, **opts)
    for g in gl[:fit]:
        ob.update(g, refresh=False)
    ob.refresh()
    tops, fixed = [], []
    for g in gl[fit:]:
        Gt = transform(g, ob.U, ob.V)  # the basis and set in force before this step
        tops.append(energy_at_density(Gt, density))
        fixed.append(_share_at(Gt, ob.indices))
        ob.update(g)
    return {"top": float(np.mean(tops)), "fixed": float(np.mean(fixed))}


def _previous_svd_energy(gl, fit: int, density: float) -> dict:
    """Each held-out step in the exact SVD basis of the step before, with that step's top set."""
    from .bases import LearnedBasis
    from .select import k_for_density, topk_global

    tops, fixed = [], []
    for s in range(fit, len(gl)):
        P, _, Qt = np.linalg.svd(gl[s - 1])
        U, V = LearnedBasis(P, check=False), LearnedBasis(Qt.T, check=False)
        idx = topk_global(transform(gl[s - 1], U, V), k_for_density(gl[s].shape, density))
        Gt = transform(gl[s], U, V)
        tops.append(energy_at_density(Gt, density))
        fixed.append(_share_at(Gt, idx))
    return {"top": float(np.mean(tops)), "fixed": float(np.mean(fixed))}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and lowest layer per basis."""
    out = []
    for b in dict.fromkeys(r["basis"] for r in rows):
        rs = [r for r in rows if r["basis"] == b]
        out.append({"basis": b, "top mean": np.mean([r["top"] for r in rs]), "top min": min(r["top"] for r in rs),
                    "fixed mean": np.mean([r["fixed"] for r in rs]), "fixed min": min(r["fixed"] for r in rs)})
    return out
