"""LoTR: forward+backward time and saved activations of L adapted linears vs frozen and LoRA.

For a group of ``L`` linears of shape (out, in) with frozen weights, one "step" runs all ``L``
layers on their own inputs (t tokens each), sums the outputs' inner product with fixed
output gradients and back-propagates. Candidates:

* ``frozen``   -- the linears alone (the floor an adapter cannot beat);
* ``lotr-planned`` -- ``lrmath.torch.LoTR(planned=True)``: the FLOP-planned autograd Function
  (orders from ``lrmath.lotr.plan``: forward and the four gradient chains, products reused);
* ``lotr-autograd`` -- the same adapter as plain autograd on ``((x A) G_l) B^T``
  (``planned=False``); the default ``planned="auto"`` picks one of the two per shape (column
  ``auto picks``: the planned Function only where it saves >= 10% of the FLOPs);
* ``lora``     -- LoRA at the largest rank whose parameters fit LoTR's budget (plain autograd
  ``(x A^T) B^T``), the baseline at equal parameter count.

Saved activations are *measured* with ``torch.autograd.graph.saved_tensors_hooks`` (bytes of
every tensor saved for backward, parameters excluded). FLOPs of the adapter branch are the
plan's (executed-FLOP counts are checked in ``tests/test_lotr.py``).
"""

from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("--t", type=int, default=None, help="tokens per layer (default 2048; 512 with --quick)")
    parser.add_argument("--dim", type=int, default=None, help="in = out features (default 1024; 384 with --quick)")
    parser.add_argument("--layers", type=int, default=6, help="L, layers sharing A and B")
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="LoTR ranks (default 8 32 / 16 64)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def run(args) -> dict:
    import torch
    from torch import nn

    from benchmarks._harness import time_interleaved, write_results
    from lrmath import lotr
    from lrmath.torch import LoTR

    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    t = args.t or (512 if args.quick else 2048)
    d = args.dim or (384 if args.quick else 1024)
    L = args.layers
    ranks = args.ranks or ([8, 32] if args.quick else [16, 64])
    torch.manual_seed(0)
    lins = [nn.Linear(d, d, bias=False).to(device).requires_grad_(False) for _ in range(L)]
    xs = [torch.randn(t, d, device=device, requires_grad=True) for _ in range(L)]
    dys = [torch.randn(t, d, device=device) for _ in range(L)]
    rows = []

    def step(branch):
        def fn():
            total = 0
            for i in range(L):
                y = lins[i](xs[i])
                if branch is not None:
                    y = y + branch(xs[i], i)
                total = total + (y * dys[i]).sum()
            total.backward()
            for x in xs:
                x.grad = None
        return fn

    def saved_bytes(fn):
        params = set()
        for mod in lins:
            params |= {p.data_ptr() for p in mod.parameters()}
        box = [0]

        def pack(tn):
            if tn.data_ptr() not in params and not isinstance(tn, nn.Parameter):
                box[0] += tn.numel() * tn.element_size()
            return tn

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tn: tn):
            fn()
        return box[0]

    for r in ranks:
        budget = lotr.lotr_params(d, d, r, L)
        r_lora = lotr.lora_rank_for_budget(budget, d, d, L)
        lt = LoTR(d, d, L, r, planned=True, device=device)
        lt_plain = LoTR(d, d, L, r, planned=False, device=device)
        with torch.no_grad():
            lt.G.normal_()
            lt_plain.load_state_dict(lt.state_dict())
        cands = {"frozen": step(None), "lotr-planned": step(lambda x, i: lt.delta(x, i)),
                 "lotr-autograd": step(lambda x, i: lt_plain.delta(x, i))}
        if r_lora:
            la = [nn.Parameter(torch.randn(r_lora, d, device=device) / d**0.5) for _ in range(L)]
            lb = [nn.Parameter(torch.randn(d, r_lora, device=device) / d**0.5) for _ in range(L)]
            cands["lora"] = step(lambda x, i: (x @ la[i].T) @ lb[i].T)
        times = time_interleaved(cands, repeats=args.repeats, sync=device if str(device).startswith("cuda") else None)
        p = lotr.plan(t, d, d, r, 1)
        auto = "planned" if LoTR(d, d, L, r)._plan(t) is not None else "autograd"
        from lrmath.lotr.adapter import AUTOGRAD_ORDERS

        p_auto = lotr.plan(t, d, d, r, 1, orders=AUTOGRAD_ORDERS)
        for name, tm in times.items():
            rows.append({
                "t": t, "shape": f"{d}x{d}", "L": L, "LoTR r": r, "candidate": name,
                "rank": {"lotr-planned": r, "lotr-autograd": r, "lora": r_lora}.get(name, "-"),
                "params": {"lotr-planned": budget, "lotr-autograd": budget,
                           "lora": lotr.lora_params(d, d, r_lora, L)}.get(name, 0),
                "median ms": tm["median"] * 1e3, "x frozen": tm["median"] / times["frozen"]["median"],
                "spread": tm["spread"], "saved MiB": saved_bytes(cands[name]) / 2**20,
                "adapter GFLOP/step": (p.flops * L / 1e9 if name == "lotr-planned" else
                                       p_auto.flops * L / 1e9 if name == "lotr-autograd" else ""),
                "auto picks": auto if name.startswith("lotr") else "",
            })
    notes = ("One step = forward + backward of L frozen linears with their own inputs; 'x frozen' is the median "
             "ratio to the frozen linears (interleaved repeats). LoRA gets the largest rank within LoTR's parameter "
             "budget. 'saved MiB' is measured with saved_tensors_hooks (parameters excluded; the frozen row's 4.5 MiB "
             "are the fixed output gradients the harness multiplies by). Check meta.loadavg: on a shared machine the "
             "spread column says how far to trust a ratio.")
    write_results("lotr", rows, meta={"t": t, "dim": d, "L": L, "ranks": ranks, "repeats": args.repeats,
                                             "threads": torch.get_num_threads(),
                                             "loadavg_1min_at_end": __import__("os").getloadavg()[0]}, device=device,
                  notes=notes)
    return {"rows": rows}
