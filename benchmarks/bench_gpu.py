"""lrmath_gpu kernels on a GPU: time vs the CPU reference and vs the card's bounds (GB/s, TFLOP/s).

Rows (one per kernel or pipeline; each row records its own error instead of stopping the run):

* memory-bound kernels (RNG, randomized Hadamard, fused Kashin iteration, centroid coding,
  packing, decoding, CRS gather, top-k): achieved GB/s = bytes that must move / median time,
  against the card's theoretical bandwidth (memory clock x bus width) and a measured
  device-to-device copy;
* GEMM-bound ones (in-kernel sketch, LoTR forward, dense GEMM baselines): TFLOP/s;
* issue targets: Kashin quantization of a 4096 x 11008 fp16 matrix at 2 bits (each fused
  iteration at >= 50% of bandwidth), all linear weights of a Llama-7B-sized model (random
  weights of the real shapes) quantized in < 60 s, SDDMM at 1% density >= 5x faster than the
  dense GEMM it replaces.

GPU timings: interleaved medians (``benchmarks._harness.time_interleaved``) of calls that end
with a device synchronize. CPU references run the NumPy reference on the same sizes (fewer
repeats for the slow ones; ``--no-cpu`` skips them). Needs CuPy and a GPU; ``--backend numba``
times the Numba kernels instead of the CuPy ones.
"""

from __future__ import annotations

import time
import traceback

import numpy as np

from benchmarks._harness import time_interleaved, write_results

LLAMA7B = [((4096, 4096), 4), ((11008, 4096), 2), ((4096, 11008), 1)]  # per layer (out, in) x count
LLAMA_LAYERS = 32


def add_arguments(p):
    p.add_argument("--backend", default="cupy", choices=["cupy", "numba"], help="kernel implementation to time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU reference timings")
    p.add_argument("--llama-layers", type=int, default=None, help="layers of the Llama-7B sweep (default 32, quick 2)")


def _gpu():
    import cupy as cp

    def sync():
        cp.cuda.Device().synchronize()

    return cp, sync


def _peak_bandwidth(cp) -> tuple[float, str]:
    """Theoretical DRAM bandwidth in GB/s: 2 (DDR) x memory clock x bus width."""
    rt = cp.cuda.runtime
    try:
        # cudaDevAttrMemoryClockRate = 36 (kHz), cudaDevAttrGlobalMemoryBusWidth = 37 (bits)
        clk = rt.deviceGetAttribute(getattr(rt, "cudaDevAttrMemoryClockRate", 36), 0)
        bus = rt.deviceGetAttribute(getattr(rt, "cudaDevAttrGlobalMemoryBusWidth", 37), 0)
        if clk and bus:
            return 2.0 * clk * 1e3 * bus / 8 / 1e9, "2 x memory clock x bus width"
    except Exception:  # noqa: BLE001
        pass
    name = rt.getDeviceProperties(0)["name"].decode()
    for key, bw in (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("A100", 2039.0)):
        if key in name:
            return bw, f"datasheet value for {name}"
    return float("nan"), "unknown"


def _time(fns: dict, sync, repeats: int) -> dict:
    wrapped = {k: (lambda f=f: (f(), sync())) for k, f in fns.items()}
    return time_interleaved(wrapped, repeats=repeats, warmup=1)


def _cpu_time(fn, repeats: int = 1, warm: bool = True) -> float:
    if warm:
        fn()  # warm-up (caches, operator construction)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def run(args) -> dict:
    import lrmath_gpu

    st = lrmath_gpu.available()
    if not st["cupy"]["ok"]:
        msg = f"bench_gpu needs CuPy on a GPU: {st['cupy']['why']}"
        print(msg)
        return {"skipped": msg}
    lrmath_gpu.set_backend(args.backend)
    cp, sync = _gpu()
    from lrmath import kashin as rk
    from lrmath import ops, rng
    from lrmath import sparsegrad as rs
    from lrmath_gpu import kashin as gk
    from lrmath_gpu import kernels as K
    from lrmath_gpu import lotr as gl
    from lrmath_gpu import sparsegrad as gs

    quick = bool(getattr(args, "quick", False))
    reps = max(5, int(args.repeats)) if not quick else 3
    do_cpu = not args.no_cpu
    peak_bw, bw_src = _peak_bandwidth(cp)
    rows: list[dict] = []
    be = args.backend

    def row(name, shape, gpu_s, *, bytes_=None, flops=None, cpu_s=None, target=None, note=""):
        r = {"kernel": name, "shape": shape, "backend": be, "gpu_ms": gpu_s * 1e3}
        if cpu_s is not None:
            r["cpu_ms"] = cpu_s * 1e3
            r["speedup_vs_cpu"] = cpu_s / gpu_s
        if bytes_ is not None:
            r["GB/s"] = bytes_ / gpu_s / 1e9
            r["%peak_bw"] = 100.0 * r["GB/s"] / peak_bw
        if flops is not None:
            r["TFLOP/s"] = flops / gpu_s / 1e12
        if target:
            r["target"] = target
        if note:
            r["note"] = note
        rows.append(r)
        print(r, flush=True)

    def guarded(name, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
            traceback.print_exc()
            rows.append({"kernel": name, "backend": be, "error": f"{type(exc).__name__}: {exc}"[:300]})

    # ---------------------------------------------------------------- roofs
    def roofs():
        n = (1 << 28) if not quick else (1 << 24)
        a = cp.empty(n, cp.float32)
        b = cp.empty_like(a)
        t = _time({"copy": lambda: b.__setitem__(Ellipsis, a)}, sync, reps)["copy"]["median"]
        row("device copy (roof)", f"{n} f32", t, bytes_=8 * n, note=f"peak {peak_bw:.0f} GB/s ({bw_src})")
        m = 8192 if not quick else 2048
        for dt in (cp.float32, cp.float16):
            A = cp.random.standard_normal((m, m), dtype=cp.float32).astype(dt)
            t = _time({"gemm": lambda: A @ A}, sync, reps)["gemm"]["median"]
            row(f"cuBLAS GEMM {cp.dtype(dt).name} (roof)", f"{m}^3", t, flops=2 * m**3)

    guarded("roofs", roofs)

    # ---------------------------------------------------------------- RNG
    def rng_row():
        n = (1 << 26) if not quick else (1 << 22)
        t = _time({"bits": lambda: K.random_bits(1, 2, n)}, sync, reps)["bits"]["median"]
        cpu = _cpu_time(lambda: rng.random_bits(1, 2, n)) if do_cpu else None
        row("rng_fill (bits)", f"{n}", t, bytes_=8 * n, cpu_s=cpu)

    guarded("rng_fill", rng_row)

    # ---------------------------------------------------------------- randomized Hadamard
    def had_rows():
        for shape in ([(176128, 256), (4096, 11008), (64, 1 << 16)] if not quick else [(8192, 256), (256, 11008)]):
            x = cp.random.standard_normal(shape, dtype=cp.float32)
            t = _time({"h": lambda: K.hadamard(x, 3)}, sync, reps)["h"]["median"]
            op = ops.orthogonal("hadamard", shape[1], 3)
            xh = cp.asnumpy(x)
            cpu = _cpu_time(lambda: op.apply(xh)) if do_cpu else None
            p = shape[1] & -shape[1]
            note = "power of two" if p == shape[1] else f"p={p}, q={shape[1] // p}: + cuBLAS q x q factor"
            row("hadamard (fwht)", f"{shape[0]}x{shape[1]}", t, bytes_=8 * x.size, cpu_s=cpu, note=note)

    guarded("hadamard", had_rows)

    # ---------------------------------------------------------------- Kashin
    out_f, in_f = (4096, 11008) if not quick else (512, 1024)
    W16 = (cp.random.standard_normal((out_f, in_f), dtype=cp.float32) * 0.02).astype(cp.float16)

    def kashin_rows():
        N = 256
        B = out_f * in_f // N
        r = W16.astype(cp.float32).reshape(B, N)
        u, v = cp.zeros_like(r), cp.zeros_like(r)
        rn2 = cp.sum(r * r, axis=1)
        t = _time({"step": lambda: K.kashin_step(r, u, v, rn2, 0, 0.25)}, sync, reps)["step"]["median"]
        row("kashin_step (fused iteration)", f"{out_f}x{in_f}, N=256", t, bytes_=24 * r.size, target=">= 50% of bandwidth")
        codes = cp.random.randint(0, 2, r.size, dtype=cp.uint8)
        scale = cp.ones(B, cp.float32)
        table = cp.asarray([-1.0, 1.0], cp.float32)
        t = _time({"c": lambda: K.centroid_code(r, scale, table, N)}, sync, reps)["c"]["median"]
        row("centroid_code", f"{r.size}", t, bytes_=5 * r.size)
        for bits in (1, 2, 3):
            cb = (codes % (1 << bits)).astype(cp.uint8)
            t = _time({"p": lambda: K.pack_bits(cb, bits)}, sync, reps)["p"]["median"]
            row(f"pack_bits b={bits}", f"{r.size}", t, bytes_=r.size + r.size * bits / 8)
            pk = K.pack_bits(cb, bits)
            t = _time({"u": lambda: K.unpack_bits(pk, bits, r.size)}, sync, reps)["u"]["median"]
            row(f"unpack_bits b={bits}", f"{r.size}", t, bytes_=r.size + r.size * bits / 8)
        # the whole 2-bit quantization (default recipe) vs the CPU reference
        t = _time({"q": lambda: gk.quantize(W16, 2)}, sync, max(1, reps // 2) if not quick else 1)["q"]["median"]
        W16h = cp.asnumpy(W16)
        cpu = _cpu_time(lambda: rk.quantize(W16h, 2), warm=False) if do_cpu else None  # minutes on CPU: one run
        row("kashin quantize 2-bit (default)", f"{out_f}x{in_f} fp16", t, cpu_s=cpu, note="split + coding + 10 sweeps + packing")
        q = gk.quantize(W16, 2)
        qr = q  # the same object decodes on the CPU
        Wd = gk.dequantize(q).astype(cp.float16)
        for tok in (1, 16, 256):
            X = cp.random.standard_normal((tok, in_f), dtype=cp.float32)
            Xh = X.astype(cp.float16)
            res = _time({"kashin": lambda: gk.linear(q, X), "dense_fp16": lambda: Xh @ Wd.T}, sync, reps)
            cpu = _cpu_time(lambda: qr.linear(cp.asnumpy(X))) if do_cpu and tok <= 16 else None
            row("kashin_matmul (dequant-multiply)", f"t={tok}, {out_f}x{in_f}", res["kashin"]["median"], cpu_s=cpu,
                bytes_=out_f * in_f * 2 / 8 + 2 * 4 * tok * in_f,
                note=f"dense fp16 cuBLAS with the decoded W: {res['dense_fp16']['median'] * 1e3:.3f} ms")

    guarded("kashin", kashin_rows)

    def llama_row():
        layers = args.llama_layers or (LLAMA_LAYERS if not quick else 2)
        nparam = 0
        sync()
        t0 = time.perf_counter()
        gen = 0.0
        for _ in range(layers):
            for (o, i), cnt in LLAMA7B:
                for _ in range(cnt):
                    g0 = time.perf_counter()
                    W = (cp.random.standard_normal((o, i), dtype=cp.float32) * 0.02).astype(cp.float16)
                    sync()
                    gen += time.perf_counter() - g0
                    gk.quantize(W, 2)
                    nparam += o * i
                    del W
        sync()
        total = time.perf_counter() - t0 - gen
        row("Llama-7B linear weights, 2-bit", f"{layers} layers, {nparam / 1e9:.2f}e9 params", total,
            target="< 60 s for 32 layers" if layers == LLAMA_LAYERS else "", note=f"random-weight generation ({gen:.1f} s) excluded")

    guarded("llama", llama_row)

    # ---------------------------------------------------------------- SparseGrad
    def sparse_rows():
        t_tok, n, m = (4096, 4096, 11008) if not quick else (1024, 512, 1024)
        dY = cp.random.standard_normal((t_tok, n), dtype=cp.float32)
        X = cp.random.standard_normal((t_tok, m), dtype=cp.float32)
        k = int(0.01 * n * m)
        idx = cp.asnumpy(cp.sort(cp.random.permutation(n * m)[:k]))
        res = _time({"sddmm": lambda: gs.sampled_product(dY, X, idx, method="sparse"),
                     "dense": lambda: dY.T @ X}, sync, reps)
        t, td = res["sddmm"]["median"], res["dense"]["median"]
        row("sddmm 1% (sampled_product)", f"t={t_tok}, {n}x{m}, nnz={k}", t, flops=2 * t_tok * k,
            target=">= 5x faster than dense GEMM", note=f"dense GEMM dY^T X: {td * 1e3:.2f} ms -> {td / t:.2f}x")
        row("dense GEMM dY^T X (fp32)", f"{t_tok}x{n}x{m}", td, flops=2 * t_tok * n * m)
        G = cp.random.standard_normal((n, m), dtype=cp.float32)
        Gh = cp.asnumpy(G)
        t = _time({"topk": lambda: gs.topk_global(G, k)}, sync, reps)["topk"]["median"]
        cpu = _cpu_time(lambda: rs.topk_global(Gh, k)) if do_cpu else None
        row("topk_global 1%", f"{n}x{m}", t, bytes_=4 * G.size * 6, cpu_s=cpu, note="~6 passes over the data (4 histogram + count + write)")
        t = _time({"tr": lambda: gs.transform(G, "hadamard", "hadamard")}, sync, reps)["tr"]["median"]
        cpu = _cpu_time(lambda: rs.transform(Gh, "hadamard", "hadamard")) if do_cpu else None
        row("sparsegrad transform (hadamard both sides)", f"{n}x{m}", t, cpu_s=cpu, bytes_=4 * G.size * 6)

    guarded("sparsegrad", sparse_rows)

    # ---------------------------------------------------------------- randomized matmul
    def randmm_rows():
        t_tok, m, s = (8192, 4096, 1024) if not quick else (1024, 512, 128)
        X = cp.random.standard_normal((t_tok, m), dtype=cp.float32)
        S = cp.asarray(rng.signs(1, 0, (t_tok, s), dtype=np.float32))
        res = _time({"sketch": lambda: K.sketch(X, s, 1, 0), "stored_S_gemm": lambda: S.T @ X}, sync, reps)
        row("sketch (S generated in kernel)", f"S^T X, {t_tok}x{m}, s={s}", res["sketch"]["median"], flops=2 * t_tok * m * s,
            note=f"cuBLAS with a stored S: {res['stored_S_gemm']['median'] * 1e3:.2f} ms")
        idx = cp.random.randint(0, t_tok, s)
        w = cp.ones(s, cp.float32)
        Xt = cp.ascontiguousarray(X.T)
        t = _time({"g": lambda: K.crs_gather(Xt, X, idx, w)}, sync, reps)["g"]["median"]
        row("crs_gather", f"{m}x{t_tok} cols + rows, c={s}", t, bytes_=2 * 2 * 4 * m * s)

    guarded("randmm", randmm_rows)

    # ---------------------------------------------------------------- LoTR
    def lotr_rows():
        L, t_tok, m, r = (32, 4096, 4096, 16) if not quick else (4, 512, 512, 8)
        X = cp.random.standard_normal((t_tok, m), dtype=cp.float32)
        A = cp.random.standard_normal((m, r), dtype=cp.float32)
        G = cp.random.standard_normal((L, r, r), dtype=cp.float32)
        B = cp.random.standard_normal((m, r), dtype=cp.float32)
        Z = X @ A
        t = _time({"core": lambda: K.lotr_core(Z, G)}, sync, reps)["core"]["median"]
        row("lotr_core (X A) G_l", f"L={L}, t={t_tok}, r={r}", t, bytes_=4 * (Z.size + L * t_tok * r), flops=2 * L * t_tok * r * r)
        t = _time({"fwd": lambda: gl.forward(X, A, G, B)}, sync, reps)["fwd"]["median"]
        row("lotr forward (shared X)", f"L={L}, t={t_tok}, m=n={m}, r={r}", t, flops=2 * t_tok * m * r + L * (2 * t_tok * r * r + 2 * t_tok * r * m))

    guarded("lotr", lotr_rows)

    meta = {"peak_bandwidth_GBps": peak_bw, "peak_bandwidth_source": bw_src, "kernel_backend": be,
            "lrmath_gpu_available": st, "quick": quick}
    try:
        meta["gpu_name"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        meta["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        meta["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
    except Exception:  # noqa: BLE001
        pass
    write_results("gpu" if be == "cupy" else f"gpu_{be}", rows, meta, device="cuda",
                  notes="Measured by benchmarks/bench_gpu.py; see its docstring for what each column means.")
    return {"rows": rows, "meta": meta}
