"""``lrmath randmm`` and the tour section: activation memory saved and the predicted
variance of sketched weight gradients versus SGD noise, on the default model's real
activations (``lrmath.data.capture_linears``)."""

from __future__ import annotations

import numpy as np

from ..registry import command, tour_section

DEFAULT_ESTIMATORS = [
    ("crs", {"probs": "x"}),  # the layer's default
    ("crs", {"probs": "uniform"}),
    ("gaussian", {}),
    ("rademacher", {}),
    ("srht", {"replace": False}),
    ("crs", {"probs": "xy"}),  # needs dY: standalone only (oracle)
    ("wta", {"probs": "xy"}),
]


def _label(kind, opts):
    return kind + ("(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def pair_ids(batch) -> np.ndarray:
    """Pair index of every non-padding row of ``capture_linears`` (same row order)."""
    a, b = batch["attention_mask_a"].numpy(), batch["attention_mask_b"].numpy()
    B = a.shape[0]
    ids = []
    if a.shape[1] == b.shape[1]:  # one forward call on [a; b]
        masks, owners = [np.concatenate([a, b])], [np.concatenate([np.arange(B), np.arange(B)])]
    else:
        masks, owners = [a, b], [np.arange(B), np.arange(B)]
    for m, o in zip(masks, owners):
        ids.append(np.repeat(o, m.shape[1])[m.reshape(-1).astype(bool)])
    return np.concatenate(ids)


def analyse(n_pairs: int = 8, ratios=(0.5, 0.25, 0.1), estimators=None, layers=None, seed: int = 0, max_length: int = 32):
    """Per layer and ratio: saved bytes and ``Var_sketch / Var_SGD`` from real activations.

    ``Var_SGD`` is the variance of a batch of ``n_pairs`` pairs drawn with replacement
    from the captured batch's per-pair gradients (the batch as the population); the
    sketch variance is the exact formula on the batch's ``X`` and ``dY``.

    Returns
    -------
    (rows, meta): rows are dicts (layer, shape, t, ratio, k, saved_bytes, exact_bytes,
    estimator, var_sketch, var_sgd, vs_sgd).
    """
    from .. import data
    from .sgd import sgd_variance
    from .variance import stats, variance

    estimators = estimators or DEFAULT_ESTIMATORS
    cap = data.capture_linears(n_pairs=n_pairs, seed=seed, layers=layers, max_length=max_length)
    owner = pair_ids(data.task_batch(n_pairs, seed, max_length))
    rows = []
    for name, d in cap.items():
        X, dY = d["X"].astype(np.float64), d["dY"].astype(np.float64)
        t, m = X.shape
        if owner.size != t:
            raise RuntimeError(f"row bookkeeping mismatch for {name}: {owner.size} vs {t}")
        G = np.zeros((n_pairs, dY.shape[1], m))
        for b in range(n_pairs):  # per-pair gradients of the per-pair loss (mean loss * B)
            sel = owner == b
            G[b] = n_pairs * dY[sel].T @ X[sel]
        v_sgd = sgd_variance(G, n_pairs)
        st = stats(X, dY)
        for r in ratios:
            k = max(1, min(t, int(round(r * t))))
            for kind, opts in estimators:
                v = variance(st, None, k, kind, **opts)
                idx_bytes = 8 * k if kind in ("crs", "wta") and opts.get("probs") != "uniform" else 0
                rows.append({
                    "layer": name, "shape": f"{dY.shape[1]}x{m}", "t": t, "ratio": r, "k": k,
                    "saved_bytes": t * m * 4 - (k * m * 4 + idx_bytes), "exact_bytes": t * m * 4,
                    "estimator": _label(kind, opts), "var_sketch": v, "var_sgd": v_sgd, "vs_sgd": v / v_sgd,
                })
    return rows, {"n_pairs": n_pairs, "tokens": cap.tokens, "loss": cap.losses}


def _summary_rows(rows, ratios, n_pairs):
    out = []
    for r in ratios:
        sub = [x for x in rows if x["ratio"] == r]
        for est in dict.fromkeys(x["estimator"] for x in sub):
            e = [x for x in sub if x["estimator"] == est]
            vs = np.array([x["vs_sgd"] for x in e])
            out.append({
                "k/t": r,
                "estimator": est,
                "saved MiB": sum(x["saved_bytes"] for x in e) / 2**20,
                "exact MiB": sum(x["exact_bytes"] for x in e) / 2**20,
                "median sketch/SGD": float(np.median(vs)),
                "max sketch/SGD": float(vs.max()),
                "B/k": float(np.median([n_pairs / x["k"] for x in e])),
            })
    return out


@tour_section("randmm", order=50, title="Randomized matmul: sketched weight gradients (arXiv 2201.13195)")
def _tour(ctx):
    full = ctx.scale == "full"
    n_pairs = 16 if full else 8
    ratios = (0.5, 0.25, 0.1)
    layers = None
    if not full:
        layers = [f"encoder.layer.{i}.{p}" for i in (0, 5) for p in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")]
    rows, meta = analyse(n_pairs=n_pairs, ratios=ratios, layers=layers)
    ctx.print(
        f"{len({r['layer'] for r in rows})} linear layers, batch of {n_pairs} pairs ({meta['tokens'][0]} tokens). "
        "Memory: activations a linear saves for backward (X, float32) minus the sketch S^T X (+ int64 "
        "indices for data-dependent sampling). Variance: exact E||dW_hat - dW||^2 from the formulas on the "
        "real X and dY, divided by the variance of the mini-batch gradient (per-pair gradients, batch as population)."
    )
    summary = _summary_rows(rows, ratios, n_pairs)
    ctx.table(summary, title="Saved activation memory and sketch/SGD variance (median and max over layers)")
    per_layer = [
        {"layer": x["layer"], "out x in": x["shape"], "t": x["t"], "k": x["k"], "sketch/SGD": x["vs_sgd"]}
        for x in rows if x["ratio"] == 0.25 and x["estimator"] == "crs(probs=x)"
    ]
    ctx.table(per_layer, title="Per layer at k/t = 0.25 with the layer's default estimator crs(probs=x)")
    return {"summary": summary, "meta": meta}


@command("randmm", help="randomized-matmul backprop: memory saved and sketch/SGD variance on the default model")
def _args(parser):
    parser.add_argument("--pairs", type=int, default=8, help="sentence pairs in the batch")
    parser.add_argument("--ratio", type=float, action="append", default=None, help="k/t (repeatable; default 0.5 0.25 0.1)")
    parser.add_argument("--layer", action="append", default=None, help="layer names (default: all encoder linears)")
    parser.add_argument("--per-layer", action="store_true", help="also print every layer")
    return _run


def _run(args, ctx):
    from ..backend import check_float, check_int

    ratios = tuple(args.ratio) if args.ratio else (0.5, 0.25, 0.1)
    for r in ratios:
        check_float(r, "--ratio", minimum=0.0, maximum=1.0, min_open=True)
    check_int(args.pairs, "--pairs", minimum=1, maximum=1024)
    rows, meta = analyse(n_pairs=args.pairs, ratios=ratios, layers=args.layer)
    summary = _summary_rows(rows, ratios, args.pairs)
    ctx.table(summary, title=f"{args.pairs} pairs, {meta['tokens'][0]} tokens")
    if args.per_layer:
        ctx.table([{k: x[k] for k in ("layer", "shape", "t", "k", "estimator", "vs_sgd")} for x in rows])
    return {"summary": summary, "rows": rows, "meta": meta} if ctx.json else 0
