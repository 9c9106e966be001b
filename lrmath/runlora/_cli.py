"""CLI: ``lrmath plan M N R`` and the RunLoRA section of ``lrmath tour``."""

from __future__ import annotations

from ..registry import command, tour_section


@command("plan", help="RunLoRA: the cheapest LoRA forward/backward graphs for an (M, N) layer of rank R")
def _plan_args(parser):
    parser.add_argument("m", type=int, help="input features (X is (tokens, M); PyTorch in_features)")
    parser.add_argument("n", type=int, help="output features (W is (M, N); PyTorch out_features)")
    parser.add_argument("r", type=int, help="LoRA rank, 1 <= R <= min(M, N)")
    parser.add_argument("--tokens", type=int, default=None, help="rows of X (batch x sequence); default: every t")
    parser.add_argument("--objective", choices=("flops", "time", "memory"), default="flops")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"))
    parser.add_argument("--no-x-grad", action="store_true", help="the input needs no gradient (first layer)")
    parser.add_argument("--w-grad", action="store_true", help="the frozen weight trains too (ReLoRA-style)")
    parser.add_argument("--bias", action="store_true")
    parser.add_argument("--dropout", action="store_true", help="LoRA dropout on the adapter input")
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes of saved activations at most")
    parser.add_argument("--backend", default=None, help="for --objective time: numpy, torch or cuda")
    parser.add_argument("--show-graphs", action="store_true", help="print the chosen graphs step by step")
    return _plan_run


def _plan_run(args, ctx):
    from .plan import plan

    p = plan(args.m, args.n, args.r, tokens=args.tokens, dtype=args.dtype, x_grad=not args.no_x_grad,
             w_grad=args.w_grad, bias=args.bias, dropout=args.dropout, objective=args.objective,
             memory_budget=args.memory_budget, backend=args.backend)
    if ctx.json:
        return p.to_dict()
    ctx.print(repr(p))
    if args.show_graphs:
        c = p.choice
        ctx.print(f"\nforward {c.forward.name}:\n{c.forward.describe()}")
        ctx.print(f"\nbackward {c.backward.name}:\n{c.backward.describe()}")
    return 0


@tour_section("runlora", order=10, title="RunLoRA: LoRA graphs planned per layer of the default model")
def _tour(ctx):
    from .. import data
    from .plan import plan

    tokens = 16 * 32 if ctx.scale == "ci" else 64 * 128  # the tiny task's batch; a training batch
    r = 8
    rows, seen = [], {}
    for name, (out_f, in_f) in data.linear_layers():
        if r > min(in_f, out_f):
            rows.append({"layer": name, "in x out": f"{in_f}x{out_f}", "pair": "skipped (r > min)",
                         "GFLOP": "-", "vs PEFT FLOPs": "-", "saved KiB": "-", "vs PEFT moved": "-"})
            continue
        key = (in_f, out_f)
        if key not in seen:
            seen[key] = plan(in_f, out_f, r, tokens=tokens, bias=True)
        p = seen[key]
        c = p.choice
        g = p.gain_over_peft()
        v = c.at(tokens, in_f, out_f, r)
        rows.append({"layer": name, "in x out": f"{in_f}x{out_f}", "pair": c.name,
                     "GFLOP": round(v["flops"] / 1e9, 4), "vs PEFT FLOPs": f"x{g['flops']:.3f}",
                     "saved KiB": round(v["saved_bytes"] / 1024, 1), "vs PEFT moved": f"x{g['bytes_moved']:.2f}"})
    # one row per distinct shape is enough to read; the full list goes to --json
    shown = {}
    for row in rows:
        shown.setdefault(row["in x out"], row)
    ctx.print(f"r={r}, t={tokens} tokens, fp32, bias; FLOP objective; 'vs PEFT' = PEFT / ours (predicted)")
    ctx.table(list(shown.values()), title="one row per distinct layer shape")
    for key, p in seen.items():
        c = p.choice
        ctx.print(f"\n{key[0]}x{key[1]}: forward {c.forward.name} ({_brief(c.forward.choices)}); "
                  f"backward {c.backward.name} ({_brief(c.backward.choices)})")
    return {"tokens": tokens, "r": r, "layers": rows}


def _brief(ch):
    parts = []
    for k, v in ch.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
            parts.append(f"{k}: [{v}]")
        elif v not in ((), "-"):
            parts.append(f"{k}={v}")
    return "; ".join(parts)
