"""Randomized matmul: saved activation memory and fwd+bwd time of one linear per estimator vs nn.Linear.

Full size (issue #7): t = 4096 rows, a 4096 x 4096 layer, k/t in {0.5, 0.25, 0.1}. ``--quick``
uses t = 1024 and 1024 x 1024 (CPU / smoke). Memory is *measured*: the bytes of every
tensor autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``), with
the layer's weight and bias excluded (they are parameters, not activations). Time is
the median of interleaved repeats of forward + backward (``_harness.time_interleaved``).

Targets: saved memory within 1% of k/t of the exact layer's; time <= 1.15x the exact
layer's. The sketch costs are, per call, on top of the two dense products that remain
(``Y = X W^T``, ``dX = dY W``, each ``2 t m n`` FLOPs) and the sketched ``dW`` (``2 k m n``):
Gaussian/Rademacher ``S^T X`` and ``S^T dY`` (``2 t k (m + n)``) plus generating ``t k``
counter-based random numbers twice; SRHT/SRDCT a fast transform of X and dY
(``~t log2 t (m + n)``); sampling a gather.
"""

from __future__ import annotations

import gc

ESTIMATORS = [
    ("crs-x", "crs", {"probs": "x"}),
    ("crs-uniform", "crs", {"probs": "uniform"}),
    ("crs-uniform-norep", "crs", {"probs": "uniform", "replace": False}),
    ("wta-x", "wta", {"probs": "x"}),
    ("srht-norep", "srht", {"replace": False}),
    ("srdct-norep", "srdct", {"replace": False}),
    ("rademacher", "rademacher", {}),
    ("gaussian", "gaussian", {}),
]


def add_arguments(parser):
    parser.add_argument("--t", type=int, default=None, help="rows (default 4096; 1024 with --quick)")
    parser.add_argument("--dim", type=int, default=None, help="in = out features (default 4096; 1024 with --quick)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=None, help="estimator labels to run")
    parser.add_argument("--tag", default=None, help="suffix of the results name (randmm_<tag>_<device>)")


def _flops(label: str, t: int, m: int, n: int, k: int) -> int:
    base = 2 * t * m * n * 2 + 2 * k * m * n
    if label in ("gaussian", "rademacher"):
        return base + 2 * t * k * (m + n)
    if label.startswith(("srht", "srdct")):
        import math

        return base + int(t * math.log2(t) * (m + n))
    return base


def run(args) -> dict:
    import torch

    from benchmarks._harness import env_info, time_interleaved, write_results
    from lrmath.torch import RandomizedLinear

    device = args.device
    t = args.t or (1024 if args.quick else 4096)
    dim = args.dim or (1024 if args.quick else 4096)
    sync = "cuda" if str(device).startswith("cuda") else None
    torch.manual_seed(0)
    x = torch.randn(t, dim, device=device, requires_grad=True)
    gy = torch.randn(t, dim, device=device)
    exact = torch.nn.Linear(dim, dim, device=device)
    chosen = [e for e in ESTIMATORS if args.only is None or e[0] in args.only]

    def measure_saved(layer):
        ids = {p.data_ptr() for p in layer.parameters()}
        acts = []

        def pack(z):
            if z.data_ptr() not in ids:
                acts.append(z.numel() * z.element_size())
            return z

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
            y = layer(x)
        y.backward(gy)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        return sum(acts)

    def step(layer):
        def fn():
            y = layer(x)
            y.backward(gy)
            layer.weight.grad = None
            layer.bias.grad = None
            x.grad = None

        return fn

    exact_bytes = measure_saved(exact)
    rows = []
    for ratio in args.ratios:
        layers = {}
        for label, kind, opts in chosen:
            lay = RandomizedLinear.from_linear(exact, ratio=ratio, estimator=kind, **opts)
            layers[label] = lay
        fns = {"exact": step(exact), **{lab: step(lay) for lab, lay in layers.items()}}
        times = time_interleaved(fns, repeats=args.repeats, number=1, warmup=1, sync=sync)
        base = times["exact"]["median"]
        rows.append({
            "k/t": ratio, "estimator": "exact nn.Linear", "k": t, "saved MiB": exact_bytes / 2**20, "saved/exact": 1.0,
            "mem target": "-", "time ms": 1e3 * base, "spread": times["exact"]["spread"], "time/exact": 1.0,
            "time target": "-", "GFLOP": 6 * t * dim * dim / 1e9,
        })
        for label, lay in layers.items():
            saved = measure_saved(lay)
            k = lay.sketch_size(t)
            assert saved == lay.saved_bytes(t), (label, saved, lay.saved_bytes(t))
            frac = saved / exact_bytes
            rel = times[label]["median"] / base
            rows.append({
                "k/t": ratio, "estimator": label, "k": k, "saved MiB": saved / 2**20, "saved/exact": frac,
                "mem target": "met" if abs(frac - k / t) <= 0.01 * k / t else f"missed ({frac / (k / t) - 1:+.2%})",
                "time ms": 1e3 * times[label]["median"], "spread": times[label]["spread"], "time/exact": rel,
                "time target": "met" if rel <= 1.15 else "missed",
                "GFLOP": _flops(label, t, dim, dim, k) / 1e9,
            })
        del layers, fns
        gc.collect()
    notes = (
        f"One linear layer {dim}x{dim}, t = {t} rows, float32, forward + backward (dX exact, dW sketched). "
        "Saved MiB: measured bytes autograd keeps for backward (saved_tensors_hooks), parameters excluded. "
        "Memory target: within 1% of k/t of the exact layer; time target: <= 1.15x exact (median of "
        f"{args.repeats} interleaved repeats; spread = (max - min)/median). GFLOP counts the dense products "
        "plus the sketch (exact: 6 t m n for Y, dX and dW)."
    )
    write_results("randmm" + (f"_{args.tag}" if args.tag else ""), rows, {"t": t, "dim": dim, "ratios": args.ratios, "repeats": args.repeats, **env_info(device)}, device=device, notes=notes)
    return {"rows": rows}
