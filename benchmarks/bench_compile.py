"""torch.compile: PEFT eager, PEFT compiled, lrmath eager, lrmath compiled, one LoRA layer and a decoder block.

Forward+backward of one LoRA linear (PEFT's layer, and the same layer after
``lrmath.torch.convert_peft``), each eager and under ``torch.compile`` (inductor, default
mode), timed in interleaved rounds, plus a LLaMA-style decoder block with LoRA on all seven
linears. Ratios are *paired per round* (candidate / reference measured in the same round):
the median, [min-max] and the rounds in which the candidate was faster. Verdict (decisions.md):
"faster" only where the paired median and most rounds agree, "slower" where the paired median
is more than 5% slower, else "on par". The target of issue 17 is lrmath compiled not slower
than lrmath eager. Compile time (first call) is reported separately.
"""

from __future__ import annotations

import copy
import time
import warnings

CASES = [(1024, 768, 3072, 8), (512, 2048, 2048, 16), (2048, 768, 768, 64)]


def add_arguments(parser):
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-block", action="store_true", help="skip the decoder block")


def _peft_and_ours(torch, peft, base, targets, r):
    from lrmath.torch.runlora import convert_peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                                       init_lora_weights="gaussian"))
        ours = convert_peft(copy.deepcopy(pm))
    return pm, ours


def _measure(torch, fns, repeats):
    from benchmarks._harness import time_interleaved

    compile_s = {}
    for k, fn in fns.items():  # first call compiles (and plans) outside the timed region
        t0 = time.perf_counter()
        fn()
        compile_s[k] = time.perf_counter() - t0
    return time_interleaved(fns, repeats=repeats, warmup=2), compile_s


def _row(res, compile_s):
    from benchmarks._harness import fmt_paired, paired, verdict

    row = {k + " ms": 1e3 * v["median"] for k, v in res.items()}
    pairs = {"lrmath compiled / lrmath eager": ("lrmath compiled", "lrmath eager"),
             "peft compiled / peft eager": ("peft compiled", "peft eager"),
             "lrmath eager / peft eager": ("lrmath eager", "peft eager"),
             "lrmath compiled / peft compiled": ("lrmath compiled", "peft compiled")}
    if "frozen" in res:
        pairs = {**{f"{k} / frozen": (k, "frozen") for k in res if k != "frozen"}, **pairs}
    for name, (a, b) in pairs.items():
        p = paired(res, a, b)
        row[name] = fmt_paired(p)
        row[name + " verdict"] = verdict(p)
    row["max spread"] = max(v["spread"] for v in res.values())
    row["compile s (lrmath, peft)"] = f"{compile_s['lrmath compiled']:.1f}, {compile_s['peft compiled']:.1f}"
    return row


def run(args) -> dict:
    import torch
    import peft

    from benchmarks._harness import write_results

    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64
    cases = CASES[:2] if args.quick else CASES
    rows, samples = [], []
    for t, in_f, out_f, r in cases:
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(in_f, out_f, bias=False))
        frozen = base[0]
        frozen.weight.requires_grad_(False)
        pm, ours = _peft_and_ours(torch, peft, base, ["0"], r)
        x = torch.randn(t, in_f, requires_grad=True)
        dy = torch.randn(t, out_f)
        mods = {"frozen": frozen, "peft eager": pm.base_model.model[0], "lrmath eager": ours.base_model.model[0]}
        mods["peft compiled"] = torch.compile(mods["peft eager"])
        mods["lrmath compiled"] = torch.compile(mods["lrmath eager"])
        fns = {k: (lambda m: lambda: m(x).backward(dy))(m) for k, m in mods.items()}
        res, cs = _measure(torch, fns, args.repeats)
        row = {"case": f"layer t={t} {in_f}x{out_f} r={r}", **_row(res, cs)}
        rows.append(row)
        samples.append({k: v["samples"] for k, v in res.items()})
        print(row, flush=True)
    if not args.no_block:
        from benchmarks.bench_runlora import _Block

        d, f, heads, batch, seq, r = 768, 2048, 12, 2, 256, 8
        torch.manual_seed(0)
        block = _Block.build(torch, d, f, heads)
        for p in block.parameters():
            p.requires_grad_(False)
        pm, ours = _peft_and_ours(torch, peft, block, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"], r)
        x = torch.randn(batch, seq, d, requires_grad=True)
        mods = {"peft eager": pm, "lrmath eager": ours, "peft compiled": torch.compile(pm),
                "lrmath compiled": torch.compile(ours)}
        fns = {k: (lambda m: lambda: m(x).square().mean().backward())(m) for k, m in mods.items()}
        res, cs = _measure(torch, fns, args.repeats)
        row = {"case": f"block d={d} f={f} tokens={batch * seq} r={r}", **_row(res, cs)}
        rows.append(row)
        samples.append({k: v["samples"] for k, v in res.items()})
        print(row, flush=True)
    write_results("compile", rows, {"repeats": args.repeats, "samples": samples, "cases": cases},
                  notes=(__doc__ or "").strip())
    return {"rows": rows}
