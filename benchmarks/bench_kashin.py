"""Kashin quantization: error at 2/3/4 bits vs RTN and HQQ, and quantization speed (issue #4).

Quality: relative Frobenius error ``||W - W_hat|| / ||W||`` and output error
``||X W_hat^T - X W^T|| / ||X W^T||`` on the default model's 36 encoder matrices (X = real input
activations of each layer from ``lrmath.data.capture_linears``), on Gaussian and Student-t (3 d.o.f.)
matrices (X Gaussian), at 2, 3 and 4 code bits per weight. Every row lists the total bits per weight
with all scales, zeros and tables (computed from the bytes written). Baselines: RTN with groups of
256 (matched total bpw: bits + 0.125) and groups of 64 (the common setting, bits + 0.5), and HQQ
(``hqq`` package, CPU, optimize=True) with groups of 256 and 64 when installed.

Speed: quantizing one 4096 x 4096 float32 matrix at 2 bits (default recipe: 6 truncation-split
iterations + 10 alternating sweeps, randomized Hadamard N = 256), median of interleaved repeats.
``--quick``: 6 real matrices, 512 x 512 synthetic, and a 2048 x 2048 speed case.
"""

from __future__ import annotations

import time

import numpy as np


def add_arguments(parser):
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the speed measurement")
    parser.add_argument("--speed-size", type=int, default=None, help="side of the speed matrix (default 4096; 2048 quick)")
    parser.add_argument("--no-hqq", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true", help="only the speed row (written as suite 'kashin_speed')")


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _sources(quick):
    from lrmath import data

    names = [f"{n}.weight" for n, _ in data.linear_layers() if n.startswith("encoder.")]
    if quick:
        names = names[:6]
    W = data.load_weights(names)
    cap = data.capture_linears(layers=[n[: -len(".weight")] for n in names], steps=1)
    out = [("MiniLM", n, np.asarray(W[n], np.float32), np.asarray(cap[n[: -len(".weight")]]["X"], np.float32)) for n in names]
    s = 512 if quick else 1024
    g = np.random.default_rng(0)
    Xg = g.standard_normal((256, s)).astype(np.float32)
    for k in range(2 if quick else 3):
        out.append(("Gaussian", f"gauss{k}", g.standard_normal((s, s)).astype(np.float32), Xg))
        out.append(("Student-t(3)", f"t3_{k}", g.standard_t(3, size=(s, s)).astype(np.float32), Xg))
    return out


def _methods(bits, use_hqq):
    from lrmath.kashin import hqq_quantize, quantize, rtn_quantize

    def kashin(method):
        def f(W):
            q = quantize(W, bits, method=method)
            return q.dequantize(), q.bits_per_weight
        return f

    def rtn(group):
        def f(W):
            r = rtn_quantize(W, bits, group)
            return r.dequantize(), r.bits_per_weight
        return f

    def hqq(group):
        def f(W):
            return hqq_quantize(W, bits, group)
        return f

    m = {"Kashin (default)": kashin("default"), "Kashin greedy (paper)": kashin("greedy"),
         "RTN g256": rtn(256), "RTN g64": rtn(64)}
    if use_hqq:
        m["HQQ g256"] = hqq(256)
        m["HQQ g64"] = hqq(64)
    return m


def run(args) -> dict:
    from benchmarks._harness import time_interleaved, write_results
    from lrmath._progress import progress
    from lrmath.kashin import hqq_available, quantize

    has_hqq, hqq_why = hqq_available()
    use_hqq = has_hqq and not args.no_hqq
    sources = [] if args.speed_only else _sources(args.quick)
    per = {}  # (source, bits, method) -> list of (bpw, err, out_err)
    t0 = time.perf_counter()
    for src, name, W, X in progress(sources, desc="kashin bench"):
        Y = X @ W.T
        for bits in args.bits:
            for label, fn in _methods(bits, use_hqq).items():
                Wh, bpw = fn(W)
                per.setdefault((src, bits, label), []).append((name, bpw, _rel(Wh, W), _rel(X @ Wh.T, Y)))
    rows = []
    for (src, bits, label), vals in per.items():
        bpw = np.array([v[1] for v in vals])
        err = np.array([v[2] for v in vals])
        oerr = np.array([v[3] for v in vals])
        rows.append({"source": src, "matrices": len(vals), "bits": bits, "method": label, "bpw": round(float(bpw.mean()), 4),
                     "rel. error mean": round(float(err.mean()), 4), "rel. error max": round(float(err.max()), 4),
                     "output error mean": round(float(oerr.mean()), 4)})
    # per-matrix wins of the default recipe at each bit width
    wins = {}
    for src in {s for s, *_ in per}:
        for bits in args.bits:
            k = per[(src, bits, "Kashin (default)")]
            others = [lab for (s, b, lab) in per if s == src and b == bits and lab != "Kashin (default)" and not lab.startswith("Kashin")]
            w = sum(all(k[i][2] < per[(src, bits, o)][i][2] for o in others) for i in range(len(k)))
            wins[f"{src} {bits} bits"] = f"{w}/{len(k)} matrices lower than every baseline ({', '.join(others)})"
    quality_s = time.perf_counter() - t0
    speed = {}
    if not args.no_speed:
        n = args.speed_size or (2048 if args.quick else 4096)
        W = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
        import os

        load0 = os.getloadavg()[0]
        res = time_interleaved({"quantize": lambda: quantize(W, 2)}, repeats=args.repeats, number=1, warmup=0)
        r = res["quantize"]
        c0 = time.process_time()
        q = quantize(W, 2)
        cpu = time.process_time() - c0  # CPU seconds of all threads: less sensitive to a shared machine
        speed = {"shape": f"{n}x{n}", "bits": 2, "split_iterations": 6, "sweeps": 10, "basis": "hadamard N=256",
                 "median_s": round(r["median"], 3), "min_s": round(r["min"], 3), "max_s": round(r["max"], 3),
                 "rel_error": round(q.relative_error(W), 4), "bpw": round(q.bits_per_weight, 4),
                 "cpu_s_all_threads": round(cpu, 3), "load_average_before": round(load0, 1),
                 "load_average_after": round(os.getloadavg()[0], 1)}
        rows.append({"source": f"speed {n}x{n} fp32", "matrices": 1, "bits": 2, "method": "Kashin (default), 6 split it. + 10 sweeps",
                     "bpw": speed["bpw"], "rel. error mean": speed["rel_error"], "rel. error max": speed["rel_error"],
                     "output error mean": "", "seconds (median)": speed["median_s"],
                     "CPU s (all threads)": speed["cpu_s_all_threads"]})
    import os

    notes = ("Relative errors (lower is better); bpw = total bits per weight including fp16 scales/zeros and tables. "
             "HQQ: " + (f"hqq {hqq_why}" if use_hqq else f"skipped ({hqq_why if not has_hqq else '--no-hqq'})") + ". "
             f"Load average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine; the speed row also gives CPU seconds of all threads, which the load does not inflate).\n\n"
             + "\n".join(f"- {k}: {v}" for k, v in sorted(wins.items())))
    meta = {"quick": bool(args.quick), "bits": args.bits, "hqq": hqq_why if use_hqq else None, "wins": wins, "speed": speed,
            "quality_seconds": round(quality_s, 1)}
    write_results("kashin_speed" if args.speed_only else "kashin", rows, meta, device="cpu", notes=notes)
    return {"rows": rows, "meta": meta}
