"""MiniLM STS-B at 2 bits: data-free vs calibrated vs compensated Kashin, and RTN/HQQ g64 (issue #14).

all-MiniLM-L6-v2 (36 encoder linears quantized; embeddings and pooler float), STS-B *test* split
(1,379 pairs), Spearman x 100 of cosine vs gold (``lrmath.eval.sts_spearman``). Calibration inputs:
the first ``--cal-sentences`` sentences of the STS-B *train* split (never the test split), padded
batches of 32; rows marked ``nopad``: the first 512 train sentences in batches of equal token length
(no padding). Rows ``*-distill``: after quantizing, the float biases and LayerNorm parameters (stored
in float by every method, so no extra bits) are tuned with
:func:`lrmath.torch.kashin.distill_floats` (cosine loss on mean-pooled embeddings against the fp32
model) on 4,000 unique STS-B *train* sentences; the STS-B *dev* Spearman before and after is
reported next to the test score. ``bpw``: parameter-weighted mean of the stored bits per weight of the 36 matrices.
Rows are cached one file each in ``<out>/kashin_sts_cpu.rows/`` (resumable).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np

# distill_floats settings: unique STS-B train sentences in a seeded order, batches of 32
DISTILL = {"sentences": 4000, "steps": 300, "lr": 1e-3, "batch": 32, "seed": 0}

ROWS = [
    ("fp32", "fp", 32, {}),
    ("kashin-2", "kashin", 2, {}),
    # "gptq": "u": the first calibrated coder (GPTQ's column loop over u's codes only)
    ("kashin-cal-2", "kashin-cal", 2, {"gptq": "u"}),
    ("kashin-cal-2-lqer", "kashin-cal", 2, {"gptq": "u", "rank_bpw": 0.33, "lowrank_bits": 8}),
    # calibration without padding: sentences bucketed by token length (padding positions would enter
    # H = X^T X with states no real input produces), 512 sentences, damping 0.1 for the small sample
    ("kashin-cal-2-nopad", "kashin-cal", 2, {"gptq": "u", "cal": "nopad", "damp": 0.1}),
    ("kashin-cal-2-nopad-lqer", "kashin-cal", 2, {"gptq": "u", "cal": "nopad", "damp": 0.1, "rank_bpw": 0.33, "lowrank_bits": 8}),
    # the same calibration through the default coder now: GPTQ's column loop over both factors (gptq="uv")
    ("kashin-cal-2-nopad-uv", "kashin-cal", 2, {"cal": "nopad", "damp": 0.1}),
    ("kashin-cal-2-nopad-lqer-uv", "kashin-cal", 2, {"cal": "nopad", "damp": 0.1, "rank_bpw": 0.33, "lowrank_bits": 8}),
    # data-free codes + data-free LoftQ factors (no calibration at all)
    ("kashin-2-loftq", "kashin", 2, {"rank_bpw": 0.33, "lowrank_bits": 8}),
    ("hqq-g64-2", "hqq", 2, {"group": 64}),
    ("rtn-g64-2", "rtn", 2, {"group": 64}),
    # data-free codes, then the float biases and LayerNorms (stored in float either way: no extra
    # bits) distilled towards the fp32 embeddings on STS-B *train* sentences
    # (lrmath.torch.kashin.distill_floats); settings fixed before any score was seen
    ("kashin-2-distill", "kashin", 2, {"distill": DISTILL}),
    ("hqq-g64-2-distill", "hqq", 2, {"group": 64, "distill": DISTILL}),
]


def add_arguments(parser):
    parser.add_argument("--cal-sentences", type=int, default=256)
    parser.add_argument("--rows", nargs="*", default=None)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--report", action="store_true", help="only rewrite the table from finished rows")


def run(args) -> dict:
    import torch

    from benchmarks._harness import write_results
    from lrmath import data
    from lrmath.eval import sts_spearman
    from lrmath.kashin import hqq_quantize, quantize, rtn_quantize
    from lrmath.torch.kashin import quantize_model

    out_dir = Path(os.environ.get("LRMATH_BENCH_OUT", Path(__file__).resolve().parent / "results"))
    cdir = out_dir / "kashin_sts_cpu.rows"
    cdir.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for f in cdir.glob("*.json"):
            f.unlink()
    if args.report:
        return _write(cdir, args, write_results, None)
    base, tok = data.load_minilm()
    test = data.stsb("test")
    train = data.stsb("train")
    dev = data.stsb("dev")
    sents = []
    for a, b, _ in train:
        sents += [a, b]
    sents = sents[: args.cal_sentences]
    cal = _padded_batches(tok, sents, 32)
    nopad = []
    by_len: dict = {}
    for snt in [x for a, b, _ in train for x in (a, b)][:512]:
        ids = tok(snt, truncation=True, max_length=128)["input_ids"]
        by_len.setdefault(len(ids), []).append(ids)
    for L, group in sorted(by_len.items()):
        for i in range(0, len(group), 32):
            x = torch.as_tensor(group[i:i + 32])
            nopad.append({"input_ids": x, "attention_mask": torch.ones_like(x)})
    names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")]
    for rid, method, bits, opts in ROWS:
        if args.rows is not None and rid not in args.rows or (cdir / f"{rid}.json").exists():
            continue
        print(f"row {rid} ...", flush=True)
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        tot, cnt = 0.0, 0
        if method == "kashin-cal":
            kw = {k: v for k, v in opts.items() if k != "cal"}
            quantize_model(model, bits, include=names, exclude=(), calibration=nopad if opts.get("cal") == "nopad" else cal,
                           **kw)
            for n in names:
                kl = model.get_submodule(n)
                tot += kl.bits_per_weight * kl.in_features * kl.out_features
                cnt += kl.in_features * kl.out_features
        elif method != "fp":
            for n in names:
                lin = model.get_submodule(n)
                W = lin.weight.detach().numpy()
                if method == "kashin":
                    q = quantize(W, bits, **{k: v for k, v in opts.items() if k != "distill"})
                    Wh, bpw = q.dequantize(), q.bits_per_weight
                elif method == "rtn":
                    r = rtn_quantize(W, bits, opts["group"])
                    Wh, bpw = r.dequantize(), r.bits_per_weight
                else:
                    Wh, bpw = hqq_quantize(W, bits, opts["group"])  # (peers: distilled the same way below)
                with torch.no_grad():
                    lin.weight.copy_(torch.as_tensor(np.asarray(Wh, np.float32)))
                tot += bpw * W.size
                cnt += W.size
        secs = time.perf_counter() - t0
        extra = {}
        if "distill" in opts:
            extra = _distill(model, base, tok, train, dev, opts["distill"], sts_spearman)
        score = sts_spearman(model, tok, test)
        row = {"id": rid, "method": method, "bits": bits, "bpw": tot / cnt if cnt else 32.0,
               "spearman x100": score, "quantize_s": secs, "options": json.dumps(opts), **extra}
        print(row, flush=True)
        (cdir / f"{rid}.json").write_text(json.dumps(row, indent=1))
    return _write(cdir, args, write_results, len(test))


def _padded_batches(tok, sents, batch):
    """Sentences -> model inputs of ``batch`` sentences each, padded, with their attention masks."""
    out = []
    for i in range(0, len(sents), batch):
        enc = tok(sents[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def _distill(model, base, tok, train, dev, cfg, sts_spearman):
    """Tune biases and LayerNorms of the quantized ``model`` towards ``base`` (fp32); dev Spearman before/after."""
    from lrmath.torch.kashin import distill_floats

    before = sts_spearman(model, tok, dev)
    sents = list(dict.fromkeys(x for a, b, _ in train for x in (a, b)))
    np.random.default_rng(cfg["seed"]).shuffle(sents)
    batches = _padded_batches(tok, sents[: cfg["sentences"]], cfg["batch"])
    t0 = time.perf_counter()
    rep = distill_floats(model, base, batches, steps=cfg["steps"], lr=cfg["lr"], loss="cosine", seed=cfg["seed"],
                         progress=True)
    return {"distill_s": time.perf_counter() - t0, "distill_params": rep["parameters"],
            "distill_loss_first10": float(np.mean(rep["losses"][:10])),
            "distill_loss_last10": float(np.mean(rep["losses"][-10:])),
            "dev before": before, "dev after": sts_spearman(model, tok, dev)}


def _write(cdir, args, write_results, n_test):
    rows = [json.loads((cdir / f"{r[0]}.json").read_text()) for r in ROWS if (cdir / f"{r[0]}.json").exists()]
    notes = ("STS-B test Spearman x100 of all-MiniLM-L6-v2 with its 36 encoder linears quantized (higher is better); "
             f"calibration: first {args.cal_sentences} STS-B train sentences. Command: "
             "`nice -n 10 python -m benchmarks kashin_sts` (resumable; quantize_s is wall time on a heavily shared machine). "
             "Rows *-distill: biases and LayerNorms (float, no extra bits) tuned towards the fp32 embeddings by "
             "`lrmath.torch.kashin.distill_floats` (300 AdamW steps, lr 1e-3, 32 sentences per step, 4,000 unique "
             "STS-B train sentences, cosine loss); 'dev before/after' is the STS-B dev Spearman. Calibrated rows with "
             "\"gptq\": \"u\" ran the first calibrated coder (u's codes only); *-uv rows the default both-factor coder.")
    write_results("kashin_sts", rows, {"test_pairs": n_test or 1379, "cal_sentences": args.cal_sentences}, device="cpu",
                  notes=notes)
    return {"rows": rows}
