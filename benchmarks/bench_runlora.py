"""RunLoRA: one LoRA layer forward+backward vs the real PEFT layer vs the frozen linear; decoder block step.

Rows report the median time (interleaved rounds), the relative spread (max-min)/median, the
ratio to the frozen linear (the floor: a LoRA layer cannot be cheaper) and, against PEFT eager
and PEFT under ``torch.compile`` (inductor), the *paired* per-round ratio ours / peer: median
[min-max] and the rounds ours was faster; the verdict says "faster" only where the paired median
and most rounds agree, "slower" past 5%, else "on par" (decisions.md); "ours" is the PEFT layer after ``lrmath.torch.convert_peft`` with the given planner
objective ("time" = candidates measured on this machine, cached; "flops" = the FLOP-optimal
pair), "paper" the RunLoRA authors' FLOP-best named pair (forwardK/backwardK) run through the
same executor.  Saved activation bytes are measured with ``saved_tensors_hooks``.
"""

from __future__ import annotations

import copy
import warnings

FULL_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (768, 3072)]
FULL_T = [2048, 4096, 16384]
FULL_R = [8, 16, 64, 128]
# CPU subset: the shapes of facts.md's CPU table (t, in x out, r)
QUICK = [(1024, 768, 3072, 8), (1024, 3072, 768, 8), (512, 2048, 2048, 16), (2048, 768, 768, 64),
         (1024, 2048, 2048, 16)]


def add_arguments(parser):
    parser.add_argument("--dtype", nargs="+", default=None, help="float32 and/or bfloat16 (default: fp32 on CPU, both on GPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--objectives", nargs="+", default=["time", "flops"], choices=["time", "flops", "memory"])
    parser.add_argument("--no-block", action="store_true", help="skip the decoder block step")


def _modules(torch, peft, in_f, out_f, r, dtype, device, objectives):
    from lrmath.torch.runlora import convert_peft

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(in_f, out_f, bias=False)).to(device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"],
                                                                       init_lora_weights="gaussian"))
    peft_layer = pm.base_model.model[0]
    ours = {}
    for obj in objectives:
        q = copy.deepcopy(pm)
        convert_peft(q, objective=obj)
        ours[obj] = q.base_model.model[0]
    frozen = base[0]
    frozen.weight.requires_grad_(False)
    return frozen, peft_layer, ours


def _paper_fn(torch, layer, t):
    """The paper's FLOP-best named pair at this shape, through our executor."""
    from lrmath.runlora import plan
    from lrmath.torch.runlora import lora_function

    base = layer.get_base_layer()
    out_f, in_f = base.weight.shape
    r = layer.r["default"]
    p = plan(in_f, out_f, r, tokens=t)
    pair = (p.paper_best.forward, p.paper_best.backward)
    lA, lB = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = layer.scaling["default"]
    return lambda x: lora_function(x, base.weight, None, lA, lB, s, graphs=pair), p.paper_best.name


def _saved_bytes(torch, fn, params):
    ptrs = {p.data_ptr() for p in params}
    tot = [0]

    def pack(x):
        if x.data_ptr() not in ptrs:
            tot[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return tot[0]


def _layer_rows(args, torch, peft, device, dtypes, cases):
    from benchmarks._harness import time_interleaved

    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for t, in_f, out_f, r in cases:
            if r > min(in_f, out_f):
                continue
            frozen, peft_layer, ours = _modules(torch, peft, in_f, out_f, r, dtype, device, args.objectives)
            x = torch.randn(t, in_f, device=device, dtype=dtype, requires_grad=True)
            dy = torch.randn(t, out_f, device=device, dtype=dtype)
            paper, paper_name = _paper_fn(torch, ours[args.objectives[0]], t)

            def step(mod):
                return lambda: mod(x).backward(dy)

            fns = {"frozen": step(frozen), "peft": step(peft_layer),
                   "peft compiled": step(torch.compile(peft_layer))}
            for obj, mod in ours.items():
                fns[f"ours({obj})"] = step(mod)
            fns["paper"] = step(paper)
            for fn in fns.values():  # plan + autotune outside the timed region
                fn()
            res = time_interleaved(fns, repeats=args.repeats, warmup=1, sync="cuda" if device == "cuda" else None)
            fl = res["frozen"]["median"]
            row = {"dtype": dtype_name, "t": t, "in x out": f"{in_f}x{out_f}", "r": r,
                   "frozen ms": 1e3 * fl}
            for k in fns:
                if k == "frozen":
                    continue
                row[f"{k} /frozen"] = res[k]["median"] / fl
            _paired_cols(row, res, fns)
            row["max spread"] = max(v["spread"] for v in res.values())
            params = [p for p in peft_layer.parameters()]
            row["peft saved MiB"] = _saved_bytes(torch, lambda: peft_layer(x), params) / 2**20
            mod0 = ours[args.objectives[0]]
            row["ours saved MiB"] = _saved_bytes(torch, lambda: mod0(x), list(mod0.parameters())) / 2**20
            from lrmath.torch.runlora import _pair

            chosen = _pair(in_f, out_f, r, t, True, False, False, False, args.objectives[0], dtype_name,
                           "cuda" if device == "cuda" else "cpu")
            row["ours pair"] = f"{chosen[0].name}/{chosen[1].name}"
            row["paper pair"] = paper_name
            row["_samples"] = {k: v["samples"] for k, v in res.items()}
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "_samples"},
                  flush=True)
    return rows


def _paired_cols(row, res, names):
    from benchmarks._harness import fmt_paired, paired, verdict

    for k in names:
        if k.startswith("ours"):
            for peer in ("peft", "peft compiled"):
                pr = paired(res, k, peer)
                row[f"{k} / {peer} (paired)"] = fmt_paired(pr)
                row[f"{k} vs {peer}"] = verdict(pr)


class _Block:
    """LLaMA-style decoder block: RMSNorm, causal attention (q, k, v, o), SwiGLU MLP (gate, up, down)."""

    @staticmethod
    def build(torch, d, f, heads):
        nn = torch.nn

        class RMSNorm(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.w = nn.Parameter(torch.ones(d), requires_grad=False)

            def forward(self, x):
                return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
                self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
                self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
                self.down_proj = nn.Linear(f, d, bias=False)
                self.heads = heads

            def forward(self, x):
                b, s, _ = x.shape
                h = self.n1(x)
                q, k, v = (p(h).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
                a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + self.o_proj(a.transpose(1, 2).reshape(b, s, -1))
                h = self.n2(x)
                return x + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))

        return Block()


def _block_rows(args, torch, peft, device, dtypes):
    from benchmarks._harness import time_interleaved
    from lrmath.torch.runlora import convert_peft

    if args.quick:
        d, f, heads, batch, seq, r = 768, 2048, 12, 2, 256, 8
    else:
        d, f, heads, batch, seq, r = 4096, 11008, 32, 1, 4096, 8
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        block = _Block.build(torch, d, f, heads).to(device=device, dtype=dtype)
        for p in block.parameters():
            p.requires_grad_(False)
        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights="gaussian",
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(copy.deepcopy(block), cfg)
        models = {"peft": pm, "peft compiled": torch.compile(pm)}
        for obj in args.objectives:
            q = copy.deepcopy(pm)
            convert_peft(q, objective=obj)
            models[f"ours({obj})"] = q
        x = torch.randn(batch, seq, d, device=device, dtype=dtype, requires_grad=True)

        def step(mod):
            return lambda: mod(x).float().square().mean().backward()

        fns = {k: step(v) for k, v in models.items()}
        for fn in fns.values():
            fn()
        res = time_interleaved(fns, repeats=args.repeats, warmup=1, sync="cuda" if device == "cuda" else None)
        row = {"dtype": dtype_name, "block": f"d={d} f={f} tokens={batch * seq} r={r}",
               "peft ms": 1e3 * res["peft"]["median"]}
        for k in models:
            if k != "peft":
                row[f"{k} ms"] = 1e3 * res[k]["median"]
        _paired_cols(row, res, models)
        row["max spread"] = max(v["spread"] for v in res.values())
        row["_samples"] = {k: v["samples"] for k, v in res.items()}
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "_samples"}, flush=True)
    return rows


def run(args) -> dict:
    import torch
    import peft

    from benchmarks._harness import write_results

    device = "cuda" if str(args.device).startswith("cuda") else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    dtypes = args.dtype or (["float32"] if device == "cpu" else ["float32", "bfloat16"])
    if args.quick:
        cases = QUICK
    else:
        cases = [(t, i, o, r) for (i, o) in FULL_SHAPES for t in FULL_T for r in FULL_R]
    rows = _layer_rows(args, torch, peft, device, dtypes, cases)
    block = [] if args.no_block else _block_rows(args, torch, peft, device, dtypes)
    notes = (__doc__ or "").strip()
    clean = [{k: v for k, v in r.items() if k != "_samples"} for r in rows + block]
    meta = {"quick": bool(args.quick), "repeats": args.repeats, "objectives": args.objectives,
            "samples": [r.get("_samples") for r in rows + block]}
    suite = "runlora"
    write_results(suite, clean, meta, device=device, notes=notes)
    return {"layer": rows, "block": block}
