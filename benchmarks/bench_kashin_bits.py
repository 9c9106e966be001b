"""Kashin data-free at 2, 3 and 4 bits: where to spend the bits (code split, layout, block size) vs RTN/HQQ g64.

Relative Frobenius error ``||W - W_hat|| / ||W||`` on the default model's 36 encoder matrices
(all-MiniLM-L6-v2), mean and max, with total bits per weight from the stored bytes. Kashin variants:
the default (even split, ``u`` gets the odd bit, flat blocks of 256), the rows layout (one table per
column block), smaller blocks (more scales), and the uneven code splits ``(bits_u, bits_v)``.
Baselines at the common group size 64: RTN (fp16 scale + zero) and HQQ (``hqq``, optimize=True).
``--quick``: 6 matrices.

``--model smollm2``: every ``--every``-th of SmolLM2-135M's 210 decoder matrices instead (its GGUF
release is a 4-bit group-32 grid, facts.md), written to ``kashin_bits_smollm2_cpu.md``; with
``--bits 4 5`` it shows what a data-free Kashin code needs to reach the group-64 peers there.
"""

from __future__ import annotations

import time

import numpy as np


def add_arguments(parser):
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--no-hqq", action="store_true")
    parser.add_argument("--model", choices=("minilm", "smollm2"), default="minilm")
    parser.add_argument("--every", type=int, default=7, help="smollm2: take every k-th decoder matrix")


def _variants(bits, layouts=True):
    v = [("Kashin default", {})]
    if layouts:
        v += [("Kashin rows layout", {"layout": "rows"}), ("Kashin N=128", {"block": 128})]
    if bits >= 3:
        for bu in range(1, bits):
            if (bu, bits - bu) != ((bits + 1) // 2, bits // 2):
                v.append((f"Kashin split {bu}+{bits - bu}", {"split": (bu, bits - bu)}))
    return v


def run(args) -> dict:
    from benchmarks._harness import write_results
    from lrmath import data
    from lrmath.kashin import hqq_available, hqq_quantize, quantize, rtn_quantize

    if args.model == "smollm2":
        from benchmarks.bench_kashin_model import _load_model, _targets

        model, _ = _load_model()
        Ws = {f"{n}.weight": lin.weight.detach().float().numpy().copy() for n, lin in _targets(model)}
        del model
        names = list(Ws)[:: max(1, args.every)]
        if args.quick:
            names = names[:6]
        Ws = {k: Ws[k] for k in names}
    else:
        names = [f"{n}.weight" for n, _ in data.linear_layers() if n.startswith("encoder.")]
        if args.quick:
            names = names[:: max(1, len(names) // 6)][:6]
        Ws = {k: np.asarray(v, np.float32) for k, v in data.load_weights(names).items()}
    use_hqq = not args.no_hqq and hqq_available()
    rows = []
    for bits in args.bits:
        methods = [(n, (lambda W, kw=kw: (lambda q: (q.dequantize(), q.bits_per_weight))(quantize(W, bits, **kw))))
                   for n, kw in _variants(bits, layouts=args.model != "smollm2")]
        methods.append(("RTN g64", lambda W: (lambda r: (r.dequantize(), r.bits_per_weight))(rtn_quantize(W, bits, 64))))
        if use_hqq:
            methods.append(("HQQ g64", lambda W: hqq_quantize(W, bits, 64)))
        for name, f in methods:
            errs, bpws = [], []
            t0 = time.perf_counter()
            for n in names:
                W = Ws[n]
                Wh, bpw = f(W)
                errs.append(float(np.linalg.norm(W - Wh) / np.linalg.norm(W)))
                bpws.append(bpw * W.size)
            rows.append({"bits": bits, "method": name, "bpw": sum(bpws) / sum(w.size for w in Ws.values()),
                         "rel. error mean": float(np.mean(errs)), "rel. error max": float(np.max(errs)),
                         "matrices": len(names), "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    if args.model == "smollm2":
        notes = ("Relative weight error on every %d-th of SmolLM2-135M's 210 decoder matrices (%d matrices; the model "
                 "ships as a GGUF Q4_1 file, i.e. every weight lies on a 4-bit grid with a scale and minimum per 32 "
                 "weights, which a group-affine quantizer can nearly reproduce). Lower is better; bpw from the stored "
                 "bytes. Command: `python -m benchmarks kashin_bits --model smollm2 --bits %s`."
                 % (args.every, len(names), " ".join(map(str, args.bits))))
        write_results("kashin_bits_smollm2", rows, {"matrices": len(names), "every": args.every, "names": names},
                      device="cpu", notes=notes)
        return {"rows": rows}
    notes = ("Relative weight error on the MiniLM encoder matrices (lower is better); bpw from the bytes each "
             "quantizer stores. Command: `python -m benchmarks kashin_bits`.")
    write_results("kashin_bits", rows, {"matrices": len(names)}, device="cpu", notes=notes)
    return {"rows": rows}
