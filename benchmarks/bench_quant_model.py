"""Model-level quantization table: SmolLM2-135M perplexity and MiniLM STS-B Spearman at 2/3/4 bits.

Every ``nn.Linear`` inside the transformer blocks is quantized, weight-only and data-free
(:func:`lrmath.eval.quantize_linears`): SmolLM2-135M-Instruct's 210 decoder linears, all-MiniLM-
L6-v2's 36 encoder linears; embeddings, the LM head and the pooler stay as they are (as GPTQ and
HQQ evaluations do). Methods: fp32 (no quantization), Kashin (default recipe and the paper's
greedy encoder, blocks of 256, Hadamard), RTN and HQQ (hqq 0.2.8) with groups of 64 and 256.
Bits per weight count every stored byte (codes, float16 scales/zeros, tables).

* SmolLM2: perplexity on the **evaluation half** of ``lee-news`` (articles 150-299), first 8,192
  tokens, non-overlapping 512-token windows, token-weighted NLL (:func:`lrmath.eval.perplexity`).
  The model is the GGUF Q4_1 release dequantized to float32 (the "fp32" row is that model).
* MiniLM: STS-B **test** (1,379 pairs) Spearman x 100 of cosine similarities of mean-pooled
  embeddings (:func:`lrmath.eval.sts_spearman`).

Resumable: every finished row is stored in the results JSON at once; a rerun skips rows already
there (``--fresh`` starts over). Run it in the background on a shared machine::

    nice -n 10 python -m benchmarks quant_model
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SUITE = "quant_model"
# (label, quantizer, group, method)
METHODS = [
    ("Kashin default", "kashin", None, "default"),
    ("Kashin greedy", "kashin", None, "greedy"),
    ("RTN g64", "rtn", 64, None),
    ("RTN g256", "rtn", 256, None),
    ("HQQ g64", "hqq", 64, None),
    ("HQQ g256", "hqq", 256, None),
]

NOTES = """Model-level quantization, CPU (a shared 2-core machine; times are wall-clock under load and only
indicative). Every nn.Linear inside the transformer blocks is quantized weight-only and data-free
(SmolLM2-135M: 210 decoder linears; all-MiniLM-L6-v2: 36 encoder linears); embeddings, LM head and
pooler are not. bpw = 8 x (bytes of codes + float16 scales/zeros + tables) / weights, over the
quantized layers. weight err = mean over layers of ||W - W_hat||_F / ||W||_F.

- SmolLM2-135M-Instruct (GGUF Q4_1 release dequantized to fp32, via transformers): perplexity on the
  evaluation half of lee-news (articles 150-299), first {max_tokens} tokens, {window}-token
  non-overlapping windows, token-weighted NLL.
- all-MiniLM-L6-v2: STS-B test (1,379 pairs) Spearman x 100 (mean pooling, cosine).
- Anchors (shared/facts.md, measured earlier on another held-out news text of 4,096 tokens, so not
  the same number): SmolLM2 fp 30.4, Kashin 4.126 bpw 48.3, HQQ g64 4.5 bpw 38.6; MiniLM STS-B test
  fp32 82.03 (the published figure).

Regenerate: `nice -n 10 python -m benchmarks quant_model` (resumable; `--fresh` to start over)."""


def add_arguments(parser):
    parser.add_argument("--models", nargs="+", choices=("minilm", "smollm2"), default=["minilm", "smollm2"])
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4, 2], help="bit widths, in run order")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of method labels (default all)")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore rows cached in the results JSON")


def _key(row: dict) -> tuple:
    return (row["model"], row["bits"], row["method"])


def _order(rows: list[dict]) -> list[dict]:
    models = {"SmolLM2-135M": 0, "all-MiniLM-L6-v2": 1}
    methods = {"fp32": 0, **{m[0]: i + 1 for i, m in enumerate(METHODS)}}
    return sorted(rows, key=lambda r: (models.get(r["model"], 9), r["bits"] if r["bits"] != 32 else 0,
                                       methods.get(r["method"], 99)))


def run(args) -> dict:
    import copy

    import torch

    from benchmarks._harness import RESULTS, write_results
    from lrmath import data
    from lrmath._progress import progress
    from lrmath.eval import perplexity, quantize_linears, sts_spearman, token_ids

    torch.set_num_threads(args.threads)
    suite = SUITE + ("_quick" if args.quick else "")
    out_dir = Path(os.environ.get("LRMATH_BENCH_OUT") or RESULTS)
    js = out_dir / f"{suite}_{'gpu' if str(args.device).startswith('cuda') else 'cpu'}.json"
    rows: list[dict] = []
    if args.fresh and js.is_file():
        js.unlink()
    if js.is_file():
        rows = json.loads(js.read_text())["rows"]
    done = {_key(r) for r in rows}
    methods = [m for m in METHODS if args.methods is None or m[0] in args.methods]
    if args.quick:  # smoke run: MiniLM on 200 pairs, 3 bits, two methods
        args.models, args.bits, methods = ["minilm"], [3], [METHODS[0], METHODS[2]]
    meta = {"max_tokens": args.max_tokens, "window": args.window, "threads": args.threads,
            "text": "lee-news evaluation half (articles 150-299)", "sts": "STS-B test"}
    notes = NOTES.format(max_tokens=args.max_tokens, window=args.window)

    def save():
        # two runs (e.g. --models minilm and --models smollm2 side by side) share the file:
        # merge the rows on disk under a lock before writing
        import fcntl

        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / f".{suite}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if js.is_file():
                mine = {_key(r) for r in rows}
                rows.extend(r for r in json.loads(js.read_text())["rows"] if _key(r) not in mine)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            write_results(suite, _order(rows), meta={**meta, "load_average_at_write": round(load, 2)},
                          device=args.device, notes=notes)

    # run order: the common settings (Kashin default, RTN g64, HQQ g64) at every bit width
    # first, then greedy and g256, so a run cut short still has the comparisons users need
    first = ("Kashin default", "RTN g64", "HQQ g64")
    plan = []
    for model_name in args.models:
        plan.append((model_name, 32, ("fp32", None, None, None)))
        for tier in (True, False):
            plan += [(model_name, b, m) for b in args.bits for m in methods if (m[0] in first) == tier]
    for model_name in args.models:
        todo = [(b, m) for mn, b, m in plan if mn == model_name
                and (("SmolLM2-135M" if mn == "smollm2" else "all-MiniLM-L6-v2"), b, m[0]) not in done]
        if not todo:
            continue
        if model_name == "smollm2":
            label = "SmolLM2-135M"
            base, tok = data.load_smollm2()
            ids = token_ids(data.lee_news("evaluation"), tok)

            def evaluate(m):
                r = perplexity(m, ids, window=args.window, max_tokens=args.max_tokens, progress_bar=False)
                return {"metric": "perplexity (lee-news eval)", "value": r.ppl, "tokens": r.tokens}
        else:
            label = "all-MiniLM-L6-v2"
            base, tok = data.load_minilm()
            pairs = data.stsb("test")[: 200 if args.quick else None]

            def evaluate(m):
                return {"metric": "STS-B test Spearman x100", "value": sts_spearman(m, tok, pairs), "pairs": len(pairs)}

        for bits, (name, quantizer, group, method) in progress(todo, desc=f"quant_model {label}", enabled=True):
            model = copy.deepcopy(base)
            rep = None
            if quantizer is not None:
                rep = quantize_linears(model, quantizer, bits, group=group or 64, method=method or "default")
            t0 = time.perf_counter()
            res = evaluate(model)
            row = {"model": label, "bits": bits, "method": name,
                   "bpw": 32.0 if rep is None else round(rep.bits_per_weight, 4),
                   "weight err": 0.0 if rep is None else round(rep.weight_error, 4),
                   "metric": res["metric"], "value": round(res["value"], 4),
                   "quantize s": 0.0 if rep is None else round(rep.seconds, 1),
                   "eval s": round(time.perf_counter() - t0, 1),
                   "layers": 0 if rep is None else rep.layers}
            rows.append(row)
            done.add(_key(row))
            save()
            del model
    if not rows:
        save()
    return {"rows": _order(rows)}
