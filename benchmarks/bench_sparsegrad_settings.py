"""SparseGrad: choose the learned basis' decay and the index-set score on validation steps, judge on held-out ones.

The gradients are those of the full-scale energy study (``LRMATH_SCALE=full lrmath sparsegrad``): 40
AdamW steps of 16 sentence pairs on all-MiniLM-L6-v2, the 12 MLP linears
(:func:`lrmath.sparsegrad._study.capture_mlp_grads`). For every setting

* ``d``      -- decay of the Gram matrices of the per-step normalised gradients (the basis),
* ``sd``     -- decay of the index-set score,
* ``snorm``  -- whether each step's transformed energy is divided by its total before it is scored,

the basis and the fixed 1% index set are fitted on steps 1-25 and scored on steps 26-30
(**validation**: the choice), then refitted on steps 1-30 and scored on the held-out steps 31-40
(**test**: what is reported, the same split as the energy study). The number is the share of a step's
energy in the fixed set, mean over the steps and the 12 layers.

The captured gradients are cached in ``$LRMATH_CACHE_DIR/bench/sparsegrad_grads_full.npz`` (float32,
~1 GB); ``--fresh`` captures them again.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

DECAYS = (0.97, 0.93, 0.9, 0.85)
SCORE_DECAYS = (1.0, 0.97, 0.9, 0.8, 0.7)


def add_arguments(parser):
    parser.add_argument("--fresh", action="store_true", help="capture the gradients again")


def _grads(fresh: bool):
    from lrmath._progress import cache_dir
    from lrmath.sparsegrad._study import capture_mlp_grads

    from pathlib import Path

    path = Path(cache_dir("bench")) / "sparsegrad_grads_full.npz"
    if path.exists() and not fresh:
        return dict(np.load(path))
    g = capture_mlp_grads(40, n_pairs=16)
    out = {k: np.stack([np.asarray(x, np.float32) for x in v]) for k, v in g.items()}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def _key(d, sd, snorm):
    return f"d={d:g} sd={sd:g} {'normalised' if snorm else 'plain'} score"


def grid(grads, decays=DECAYS, score_decays=SCORE_DECAYS, density=0.01, splits=None):
    """``{split: {setting: mean fixed-set share}}`` over the layers of ``grads`` ``{name: (S, n, m)}``."""
    from lrmath.sparsegrad.bases import _sym_eig_desc

    splits = splits or {"validation": (25, range(25, 30)), "test": (30, range(30, 40))}
    res: dict = {}
    for name, gl in grads.items():
        gl = np.asarray(gl, np.float64)
        S, n, m = gl.shape
        A = [g @ g.T for g in gl]
        B = [g.T @ g for g in gl]
        tr = [float(np.trace(a)) for a in A]
        k = round(density * n * m)
        for split, (fit, judged) in splits.items():
            for d in decays:
                w = [d ** (fit - 1 - s) / tr[s] for s in range(fit)]  # normalised steps, as GramAccumulator
                _, U = _sym_eig_desc(sum(wi * A[s] for s, wi in enumerate(w)), np.float64)
                _, V = _sym_eig_desc(sum(wi * B[s] for s, wi in enumerate(w)), np.float64)
                E = np.stack([(U.T @ g @ V) ** 2 for g in gl[: max(judged) + 1]])
                for sd, snorm in itertools.product(score_decays, (False, True)):
                    sc = np.zeros(n * m)
                    for s in range(fit):
                        e = E[s].ravel()
                        sc = sd * sc + (e / e.sum() if snorm else e)
                    idx = np.argpartition(-sc, k)[:k]
                    share = np.mean([E[t].ravel()[idx].sum() / E[t].sum() for t in judged])
                    res.setdefault(split, {}).setdefault(_key(d, sd, snorm), []).append(float(share))
        print(f"{name} done", flush=True)
    return {sp: {k: float(np.mean(v)) for k, v in r.items()} for sp, r in res.items()}


def run(args) -> dict:
    from benchmarks._harness import write_results
    from lrmath.sparsegrad.bases import DEFAULT_DECAY, DEFAULT_SCORE_DECAY

    t0 = time.perf_counter()
    grads = _grads(args.fresh)
    if args.quick:
        grads = dict(list(grads.items())[:2])
    out = grid(grads)
    best = max(out["validation"], key=lambda k: out["validation"][k])
    default = _key(DEFAULT_DECAY, DEFAULT_SCORE_DECAY, True)
    rows = []
    for k in sorted(out["validation"], key=lambda k: -out["validation"][k]):
        tag = "chosen (best on validation)" if k == best else ""
        if k == default:
            tag = (tag + "; " if tag else "") + "the default"
        if k == _key(0.97, 1.0, False):
            tag = (tag + "; " if tag else "") + "the previous default"
        rows.append({"setting": k, "validation": out["validation"][k], "held-out test": out["test"][k], "note": tag})
    notes = ("Share of a step's gradient energy in a fixed 1% index set in the learned basis, mean over the steps and "
             f"the {len(grads)} MLP layers of all-MiniLM-L6-v2 (gradients of the full-scale energy study: 40 AdamW "
             "steps of 16 sentence pairs). Bases are always fitted on per-step normalised Gram matrices with decay d; "
             "the index set is the top 1% of the sd-weighted sum of transformed energies (each step divided by its "
             "total when 'normalised'). validation: fit on steps 1-25, judged on 26-30 (the choice); held-out test: "
             "fit on 1-30, judged on 31-40 (reported; the energy study's split). Goal (issue #15): >= 0.85 held out. "
             "d = 0.85 is the smallest decay of the grid and validation still rose towards it. "
             "Command: `python -m benchmarks sparsegrad_settings`.")
    write_results("sparsegrad_settings", rows, {"layers": list(grads), "seconds": time.perf_counter() - t0,
                                                "decays": DECAYS, "score_decays": SCORE_DECAYS},
                  device="cpu", notes=notes)
    return {"rows": rows}
