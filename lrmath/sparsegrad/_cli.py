"""CLI: ``lrmath sparsegrad`` and the SparseGrad tour section (energy at 1% per MLP layer)."""

from __future__ import annotations

from ..registry import command, tour_section

_SHORT = {"original": "orig", "dct": "dct", "hadamard": "hadam", "random": "random",
          "learned (paper: plain sum)": "learned-plain", "learned": "learned",
          "learned (online, K=1)": "learned-online", "oracle (previous step's SVD)": "oracle-prev"}


def _pivot(rows, key):
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    bases = list(dict.fromkeys(r["basis"] for r in rows))
    table = []
    for lay in layers:
        row = {"layer": lay.replace("encoder.layer.", "L")}
        for b in bases:
            row[_SHORT.get(b, b)] = round(next(r[key] for r in rows if r["layer"] == lay and r["basis"] == b), 3)
        table.append(row)
    return table


def _study(ctx, steps, blocks, density, n_pairs, bases=None):
    from ._study import STUDY_BASES, capture_mlp_grads, energy_study, summarise

    grads = capture_mlp_grads(steps, blocks=blocks, n_pairs=n_pairs)
    rows = energy_study(grads, density=density, bases=bases or STUDY_BASES)
    held = max(1, steps // 4)
    ctx.print(f"Share of gradient energy in {density:.0%} of the entries of G~ = U^T G V, per MLP layer of the default model;\n"
              f"bases fitted on steps 1-{steps - held} of an AdamW run, judged on the {held} held-out step(s)\n"
              "('learned (online, K=1)': refitted before each held-out step from the steps before it).\n")
    ctx.print("top: the top entries of each held-out step")
    ctx.table(_pivot(rows, "top"))
    ctx.print("\nfixed: one index set chosen on the fit steps (what the trainer keeps)")
    ctx.table(_pivot(rows, "fixed"))
    summ = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in summarise(rows)]
    ctx.print("\nsummary (mean / lowest layer); facts.md on 160 steps: learned 0.83/0.66 top, DCT 0.135, original 0.49")
    ctx.table(summ)
    return {"density": density, "steps": steps, "held_out": held, "rows": rows, "summary": summ}


@command("sparsegrad", help="SparseGrad: gradient energy kept at a density per basis, on the default model")
def _args(parser):
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps captured (default 12; 40 with LRMATH_SCALE=full)")
    parser.add_argument("--blocks", type=int, nargs="*", default=None, help="encoder blocks (default all 6)")
    parser.add_argument("--density", type=float, default=0.01, help="fraction of entries kept (default 0.01)")
    parser.add_argument("--pairs", type=int, default=None, help="sentence pairs per batch (default 8; 16 with LRMATH_SCALE=full)")
    return _run


def _run(args, ctx):
    from ..backend import check_float, check_int

    full = ctx.scale == "full"
    args.steps = args.steps if args.steps is not None else (40 if full else 12)
    args.pairs = args.pairs if args.pairs is not None else (16 if full else 8)
    check_int(args.steps, "--steps (fit and held-out steps)", minimum=2, maximum=10_000)
    for b in args.blocks or ():
        check_int(b, "--blocks", minimum=0, maximum=5)
    check_float(args.density, "--density", minimum=0.0, maximum=1.0, min_open=True)
    check_int(args.pairs, "--pairs", minimum=1, maximum=1024)
    return _study(ctx, args.steps, args.blocks, args.density, args.pairs)


@tour_section("sparsegrad", order=30, title="SparseGrad: where MLP gradients are sparse")
def _tour(ctx):
    if ctx.scale == "full":
        return _study(ctx, steps=40, blocks=None, density=0.01, n_pairs=16)
    # ci: the last block only, and no dense Haar basis (its QR dominates; facts.md: DCT ~ random)
    return _study(ctx, steps=5, blocks=(5,), density=0.01, n_pairs=8, bases=("original", "dct", "hadamard", "learned"))
