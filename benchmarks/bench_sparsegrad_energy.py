"""SparseGrad energy study at full scale: gradient energy kept at 1% per basis, MiniLM's 12 MLP layers.

The same study as ``LRMATH_SCALE=full lrmath sparsegrad`` (:func:`lrmath.sparsegrad._study.energy_study`:
40 AdamW steps of 16 sentence pairs; bases fitted on steps 1-30, judged on the held-out steps 31-40),
written as a results table. The captured gradients are shared with ``sparsegrad_settings`` through
``$LRMATH_CACHE_DIR/bench/sparsegrad_grads_full.npz`` (``--fresh`` captures them again).
"""

from __future__ import annotations

import time


def add_arguments(parser):
    parser.add_argument("--fresh", action="store_true", help="capture the gradients again")


def run(args) -> dict:
    from benchmarks._harness import write_results
    from benchmarks.bench_sparsegrad_settings import _grads
    from lrmath.sparsegrad._cli import _pivot
    from lrmath.sparsegrad._study import STUDY_BASES, energy_study, summarise

    t0 = time.perf_counter()
    grads = _grads(args.fresh)
    if args.quick:
        grads = dict(list(grads.items())[:2])
    rows = energy_study({k: list(v) for k, v in grads.items()}, density=0.01, bases=STUDY_BASES)
    summary = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in summarise(rows)]
    fixed = _pivot(rows, "fixed")
    notes = ("Share of a held-out step's gradient energy kept at 1% of the entries of G~ = U^T G V, per MLP layer of "
             "all-MiniLM-L6-v2 (40 AdamW steps of 16 sentence pairs; bases and index sets fitted on steps 1-30, judged on "
             "steps 31-40). 'top' = the step's own top 1%; 'fixed' = one index set chosen on the fit steps (what the "
             "trainer keeps; the goal of issue #15 is >= 0.85 mean). 'learned' = the default (Gram decay 0.85 of per-step "
             "normalised gradients, index set scored on normalised energies with decay 0.97; chosen on validation steps, "
             "results/sparsegrad_settings_cpu.md); 'learned (paper: plain sum)' = the paper's one-off HOSVD; "
             "'learned (online, K=1)' = lrmath.sparsegrad.OnlineBasis refitted before each held-out step; 'oracle "
             "(previous step's SVD)' = the exact SVD of the step before. Per-layer 'fixed' shares: "
             + "; ".join(f"{r['layer']}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "layer") for r in fixed)
             + ". Command: `python -m benchmarks sparsegrad_energy`.")
    write_results("sparsegrad_energy", summary, {"seconds": time.perf_counter() - t0, "rows": rows}, device="cpu", notes=notes)
    return {"rows": summary}
