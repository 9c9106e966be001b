"""CLI: ``lrmath eval ppl`` (causal-LM perplexity) and ``lrmath eval sts`` (STS-B Spearman),
each optionally after quantizing every linear inside the transformer blocks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..registry import command


def _common(p):
    p.add_argument("--quantizer", choices=("none", "kashin", "rtn", "hqq"), default="none",
                   help="quantize every nn.Linear inside the transformer blocks first (default none: fp32)")
    p.add_argument("--bits", type=int, default=3, help="code bits per weight, 2..8 (default 3)")
    p.add_argument("--group", type=int, default=64, help="RTN/HQQ group size (default 64)")
    p.add_argument("--method", choices=("default", "greedy"), default="default", help="Kashin encoder (default: default)")


@command("eval", help="model-level evaluation: perplexity (ppl) or STS-B Spearman (sts), optionally after quantization")
def _args(parser):
    sub = parser.add_subparsers(dest="eval_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("ppl", help="perplexity of a causal LM on a text (512-token windows, token-weighted NLL)")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (fetched) or a transformers model folder")
    p.add_argument("--text", default="lee-news",
                   help="lee-news (its evaluation half, articles 150-299) or a UTF-8 text file")
    p.add_argument("--max-tokens", type=int, default=8192, help="score the first N tokens (default 8192)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, default=None, help="window start-to-start distance (default: window)")
    _common(p)
    c = p.add_argument_group("calibrated Kashin (--quantizer kashin)")
    c.add_argument("--calibration", default=None,
                   help="calibrate on lee-news (its calibration half, articles 0-149) or a UTF-8 text file: GPTQ-style "
                        "Kashin, layer by layer (lrmath.eval.calibrated_kashin)")
    c.add_argument("--cal-windows", type=int, default=8, help="calibration windows of --window tokens (default 8)")
    c.add_argument("--gptq", choices=("uv", "u"), default="uv",
                   help="GPTQ's column loop over both Kashin factors (uv, default) or over u only (u, the first version)")
    c.add_argument("--rank-bpw", type=float, default=None,
                   help="LQER low-rank compensation within this many bits per weight (8-bit factors)")
    c.add_argument("--distill-steps", type=int, default=0,
                   help="then distill the norms and block scales to the fp model on the calibration text (default 0)")
    c.add_argument("--distill-lr", type=float, default=1e-3, help="distillation AdamW learning rate (default 1e-3)")
    c.add_argument("--distill-params", default="norm,scales",
                   help="comma-separated subset of bias,norm,scales (default norm,scales)")
    s = sub.add_parser("sts", help="STS-B Spearman x100 of a sentence encoder (mean pooling, cosine)")
    s.add_argument("--model", default="minilm", help="minilm (all-MiniLM-L6-v2, package data) or a BERT model folder")
    s.add_argument("--split", choices=("test", "dev", "train"), default="test", help="STS-B split (default test)")
    s.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs")
    _common(s)
    return _run


def _usage(msg: str) -> int:
    print(f"lrmath: error: {msg}", file=sys.stderr)
    return 2


def _quantize(model, args):
    if args.quantizer == "none":
        return None
    from .quant import quantize_linears

    return quantize_linears(model, args.quantizer, args.bits, group=args.group, method=args.method)


def _row(args, rep, metric_name, metric, count_name, count, seconds):
    return {
        "method": "fp32" if rep is None else rep.label,
        "bits": 32 if rep is None else rep.bits,
        "bpw": 32.0 if rep is None else round(rep.bits_per_weight, 4),
        "weight error": 0.0 if rep is None else round(rep.weight_error, 4),
        metric_name: round(metric, 4),
        count_name: count,
        "layers": 0 if rep is None else rep.layers,
        "quantize s": 0.0 if rep is None else round(rep.seconds, 1),
        "eval s": round(seconds, 1),
    }


def _run(args, ctx):
    if not 2 <= args.bits <= 8:
        return _usage(f"--bits must be 2..8, got {args.bits}")
    if getattr(args, "calibration", None) is not None:
        if args.quantizer != "kashin":
            return _usage("--calibration needs --quantizer kashin")
        if args.cal_windows < 1 or args.distill_steps < 0:
            return _usage("--cal-windows must be >= 1 and --distill-steps >= 0")
        if args.rank_bpw is not None and not args.rank_bpw > 0:
            return _usage(f"--rank-bpw must be > 0, got {args.rank_bpw}")
    elif getattr(args, "distill_steps", 0) or getattr(args, "rank_bpw", None) is not None:
        return _usage("--distill-steps and --rank-bpw need --calibration")
    if args.eval_command == "ppl":
        return _ppl(args, ctx)
    return _sts(args, ctx)


def _ppl(args, ctx):
    from .. import data
    from .metrics import perplexity, token_ids

    if args.text == "lee-news":
        text, text_name = data.lee_news("evaluation"), "lee-news (evaluation half)"
    elif Path(args.text).is_file():
        text, text_name = Path(args.text).read_text(encoding="utf-8"), args.text
    else:
        return _usage(f"--text {args.text!r} is neither 'lee-news' nor a file")
    if args.model == "smollm2-135m":
        model, tok = data.load_smollm2()
    elif Path(args.model).is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True).eval()
    else:
        return _usage(f"--model {args.model!r} is neither 'smollm2-135m' nor a transformers model folder")
    ids = token_ids(text, tok)
    if ids.size < args.window:  # before spending minutes on quantization
        from ..errors import ShapeError

        raise ShapeError(f"the text has {ids.size} tokens, fewer than one window of {args.window}; "
                         f"give more text or a smaller --window")
    if args.calibration is not None:
        if args.calibration == "lee-news":
            cal = data.lee_news("calibration")
        elif Path(args.calibration).is_file():
            cal = Path(args.calibration).read_text(encoding="utf-8")
        else:
            return _usage(f"--calibration {args.calibration!r} is neither 'lee-news' nor a file")
        from .quant import calibrated_kashin

        rep = calibrated_kashin(model, args.bits, cal, tokenizer=tok, windows=args.cal_windows, window=args.window,
                                gptq=args.gptq, rank_bpw=args.rank_bpw, distill_steps=args.distill_steps, distill_lr=args.distill_lr,
                                distill_params=[t.strip() for t in args.distill_params.split(",") if t.strip()],
                                progress_bar=None)
    else:
        rep = _quantize(model, args)
    t0 = time.perf_counter()
    res = perplexity(model, ids, window=args.window, stride=args.stride, max_tokens=args.max_tokens)
    row = _row(args, rep, "ppl", res.ppl, "tokens", res.tokens, time.perf_counter() - t0)
    ctx.print(f"{args.model} on {text_name}: {res.tokens} tokens scored in {res.windows} windows of {res.window}"
              + ("" if rep is None else f"; {rep.layers} block linears quantized (not embeddings / LM head)"))
    rows = ctx.table([row])
    return {"model": args.model, "text": text_name, "perplexity": res.to_dict(),
            "quantization": None if rep is None else rep.to_dict(), "rows": rows}


def _sts(args, ctx):
    from .. import data
    from .metrics import sts_spearman

    if args.model == "minilm":
        model, tok = data.load_minilm()
    elif Path(args.model).is_dir():
        model, tok = data.load_minilm(path=args.model)
    else:
        return _usage(f"--model {args.model!r} is neither 'minilm' nor a BERT model folder")
    pairs = data.stsb(args.split)
    if args.max_pairs is not None:
        pairs = pairs[: max(2, args.max_pairs)]
    rep = _quantize(model, args)
    t0 = time.perf_counter()
    rho = sts_spearman(model, tok, pairs)
    row = _row(args, rep, "spearman x100", rho, "pairs", len(pairs), time.perf_counter() - t0)
    ctx.print(f"{args.model} on STS-B {args.split}: {len(pairs)} pairs"
              + ("" if rep is None else f"; {rep.layers} encoder linears quantized (not embeddings / pooler)"))
    rows = ctx.table([row])
    return {"model": args.model, "split": args.split, "spearman": rho,
            "quantization": None if rep is None else rep.to_dict(), "rows": rows}
