"""SparseGrad: sparse step (fwd + bwd + AdamW) vs dense full fine-tuning of one linear layer.

For each shape (in m x out n: 384x1536 -- MiniLM's MLP -- and 768x3072, plus 4096x11008
with --full) and density 1%:

* ``dense``: ``nn.Linear`` with a trainable weight, AdamW over the weight;
* ``sparse/learned (MiniLM gradients)`` (384x1536 only): the real learned basis and fixed
  index set, fitted (:class:`~lrmath.sparsegrad.GramAccumulator`, paper-style plain sum, and
  :class:`~lrmath.sparsegrad.IndexSelector`) on real gradients of MiniLM's
  ``encoder.layer.2.intermediate.dense`` from a short AdamW run;
* ``sparse/learned stand-in`` (other shapes, where no real gradients exist): NOT a learned
  basis -- seeded orthonormal leading columns with an index set shaped like the measured one
  (inside the leading ~10.5% rows x ~31% columns, ``ROW_FRAC``); its time depends only on
  that structure, so it stands in for the learned basis's cost, not its values;
* ``sparse/<basis>`` for DCT / Hadamard / random
  (index sets that scatter over all rows and columns, as facts.md measures on real
  gradients: those bases do not sparsify them).

Columns: median step time over interleaved repeats (spread), ratio to dense; bytes of
gradient + optimizer state *measured* from the live tensors after a step (``.grad`` and
``optimizer.state``), ratio to dense; peak bytes of tensors alive at once during a step
(harness ``peak_torch_memory``: dispatch-mode tracking with frees); bytes of the stored basis columns (none on
a side that takes the fast-transform route); the route each side took (``route="auto"``:
per side, the cheaper by flops of dense touched columns ``2 n |I|`` per row and the
operator's fast transform ``U.flops``); and the flop count of the step on the route
taken and with dense basis columns (the ``columns`` route) for comparison.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from benchmarks._harness import peak_torch_memory, time_interleaved, write_results

SHAPES_QUICK = [(384, 1536), (768, 3072)]
SHAPES_FULL = [(384, 1536), (768, 3072), (4096, 11008)]
#: Shape (in, out) with real gradients: MiniLM's MLP up-projection, captured by ``_real_learned``.
REAL_SHAPE = (384, 1536)


def add_arguments(p):
    p.add_argument("--full", action="store_true", help="also 4096x11008")
    p.add_argument("--tokens", type=int, default=512, help="rows t of X per step")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bases", nargs="*", default=["learned", "dct", "hadamard", "random"])


def _state_bytes(params, opt):
    b = 0
    for p in params:
        if p.grad is not None:
            b += p.grad.numel() * p.grad.element_size()
        for v in opt.state.get(p, {}).values():
            if hasattr(v, "numel") and v.dim() > 0:
                b += v.numel() * v.element_size()
    return b


class _LeadingColumns:
    """Stand-in for a learned basis in *timing* runs: orthonormal leading columns ``Q_r (n, r)``
    (QR of a seeded Gaussian). The layer only ever stores and multiplies the touched columns
    ``U[:, I]``, so step time depends on ``|I|``, ``|J|`` and nnz, not on the values; this
    avoids an ``eigh`` of an 11008 x 11008 Gram matrix just to time a step."""

    kind = "learned"

    def __init__(self, n, r, seed):
        self.n = n
        self.Qr = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, r)))[0].astype(np.float32)

    @property
    def flops(self):
        return 2 * self.n * self.n

    def apply(self, x, axis=0):
        r = self.Qr.shape[1]
        if axis != 0 or np.any(x[r:] != 0):
            raise ValueError("_LeadingColumns only yields its leading columns")
        return self.Qr @ x[:r]

    def apply_t(self, x, axis=0):
        raise NotImplementedError("timing stand-in: no full transform")


# Fixed 1% index sets on real MiniLM gradients (learned basis, 5 fit steps, 1536x384 MLP
# layers) touch ~10.5% of the rows and ~31% of the columns, all among the leading basis
# vectors, and fill ~30% of that block (measured with lrmath.sparsegrad._study; see the
# report). The benchmark keeps those proportions at every shape.
ROW_FRAC, COL_FRAC = 0.105, 0.31


def _learned_index_set(n, m, k, seed=0):
    ni = max(1, int(round(ROW_FRAC * n)))
    nj = max(1, int(round(COL_FRAC * m)))
    while ni * nj < k:
        ni, nj = min(n, ni + 1), min(m, nj + 1)
    r = np.random.default_rng(seed)
    local = np.sort(r.choice(ni * nj, k, replace=False))
    idx = np.sort((local // nj) * m + (local % nj))
    return _LeadingColumns(n, ni, seed), _LeadingColumns(m, nj, seed + 1), idx


def _real_learned(density, steps=12, layer=2):
    """Learned ``(U, V, idx)`` of MiniLM's ``encoder.layer.{layer}.intermediate.dense`` from
    ``steps`` real AdamW-step gradients (paper-style plain Gram sum; the fixed index set of
    the accumulated transformed energy)."""
    from lrmath.sparsegrad import GramAccumulator, IndexSelector, transform
    from lrmath.sparsegrad._study import capture_mlp_grads

    name = f"encoder.layer.{layer}.intermediate.dense"
    grads = capture_mlp_grads(steps, blocks=(layer,))[name]
    n, m = grads[0].shape
    acc = GramAccumulator(n, m, normalize=False, decay=1.0)
    for g in grads:
        acc.update(g)
    U, V = acc.bases(dtype=np.float32)
    sel = IndexSelector((n, m), density=density, pool=None, decay=1.0)
    for g in grads:
        sel.update(transform(np.asarray(g, dtype=np.float64), U, V))
    return U, V, sel.select()


def _step_flops(layer, t, n, m, columns=False):
    """Flops of one step on the routes the layer took (``columns=True``: as if both sides
    used dense basis columns)."""
    nnz = layer.nnz
    I, J = layer.rows_touched, layer.cols_touched
    core = 2 * t * n * m * 2  # forward X W0^T and dX = dY W0
    ru, rv = ("columns", "columns") if columns else layer.routes
    # per side, fwd + bwd: X V_J and the back-projection through V_J^T (likewise dY U_I, P U_I^T)
    tr = 2 * (t * layer.U.flops if ru == "transform" else 2 * t * n * I)
    tr += 2 * (t * layer.V.flops if rv == "transform" else 2 * t * m * J)
    mid = (2 * t * I * J if layer._dense else 2 * t * nnz) * 3  # forward S, d delta, dX through S
    return core + tr + mid + 12 * nnz


def run(args):
    import torch
    from torch import nn

    import lrmath.sparsegrad as sg
    from lrmath.torch import SparseGradLinear

    torch.manual_seed(0)
    shapes = SHAPES_FULL if args.full else SHAPES_QUICK
    rows = []
    t = args.tokens
    for m, n in shapes:
        k = sg.k_for_density((n, m), args.density)
        x = torch.randn(t, m)
        dy = torch.randn(t, n) / math.sqrt(n)
        dense = nn.Linear(m, n)
        dense.bias.requires_grad_(False)
        d_opt = torch.optim.AdamW([dense.weight], lr=1e-4)
        cands, layers = {}, {}

        def make_step(mod, opt):
            xx = x.clone().requires_grad_(True)

            def step():
                opt.zero_grad(set_to_none=False)
                xx.grad = None
                mod(xx).backward(dy)
                opt.step()

            return step

        cands["dense"] = make_step(dense, d_opt)
        for b in args.bases:
            t0 = time.perf_counter()
            if b == "learned" and (m, n) == REAL_SHAPE:
                U, V, idx = _real_learned(args.density)
                b = "learned (MiniLM gradients)"
            elif b == "learned":
                U, V, idx = _learned_index_set(n, m, k)
                b = "learned stand-in"
            else:
                U, V = sg.basis(b, n), sg.basis(b, m)
                idx = np.sort(np.random.default_rng(1).choice(n * m, k, replace=False))
            lay = SparseGradLinear(dense.weight.detach(), dense.bias.detach(), U, V, idx)
            lay.setup_s = time.perf_counter() - t0
            opt = torch.optim.AdamW([lay.delta], lr=1e-4)
            layers[b] = (lay, opt)
            cands[f"sparse/{b}"] = make_step(lay, opt)
        times = time_interleaved(cands, repeats=args.repeats, warmup=2)
        d_bytes = _state_bytes([dense.weight], d_opt)
        d_peak = peak_torch_memory(cands["dense"])
        d_flops = 2 * t * n * m * 3 + 12 * n * m
        rows.append({"shape (in x out)": f"{m}x{n}", "t": t, "method": "dense", "nnz": n * m, "rows x cols touched": f"{n}x{m}",
                     "step ms": times["dense"]["median"] * 1e3, "spread": times["dense"]["spread"], "time / dense": 1.0,
                     "grad+state MB": d_bytes / 2**20, "state / dense": 1.0, "peak step MB": d_peak / 2**20,
                     "route (U, V)": "", "basis MB": 0.0, "GFLOP/step": d_flops / 1e9, "GFLOP columns route": d_flops / 1e9})
        for b, (lay, opt) in layers.items():
            key = f"sparse/{b}"
            sb = _state_bytes([lay.delta], opt)
            peak = peak_torch_memory(cands[key])
            basis_b = sum(c.numel() * c.element_size() for c in (lay.UI, lay.VJ) if c is not None)
            rows.append({"shape (in x out)": f"{m}x{n}", "t": t, "method": key, "nnz": lay.nnz,
                         "rows x cols touched": f"{lay.rows_touched}x{lay.cols_touched}",
                         "step ms": times[key]["median"] * 1e3, "spread": times[key]["spread"],
                         "time / dense": times[key]["median"] / times["dense"]["median"],
                         "grad+state MB": sb / 2**20, "state / dense": sb / d_bytes, "peak step MB": peak / 2**20,
                         "route (U, V)": "/".join(lay.routes),
                         "basis MB": basis_b / 2**20, "GFLOP/step": _step_flops(lay, t, n, m) / 1e9,
                         "GFLOP columns route": _step_flops(lay, t, n, m, columns=True) / 1e9})
        # route check for the sampled product: GEMM on a filled block vs gather-reduce
        A = torch.randn(t, 256)
        B = torch.randn(t, 256)
        blk = np.arange(256 * 256)
        rt = time_interleaved({"dense": lambda: sg.sampled_product(A, B, blk, method="dense"),
                               "sparse": lambda: sg.sampled_product(A, B, blk, method="sparse")}, repeats=args.repeats)
        speed = rt["sparse"]["median"] / rt["dense"]["median"]
        rows.append({"shape (in x out)": "256x256 block", "t": t, "method": "route: gather / GEMM time", "nnz": 256 * 256,
                     "step ms": rt["sparse"]["median"] * 1e3, "time / dense": speed})
    clock = "CPU seconds of the process" if os.environ.get("LRMATH_BENCH_CLOCK") == "cpu" else "wall seconds"
    notes = (f"density {args.density:g}, t = {t} tokens, float32, torch threads = {torch.get_num_threads()}, times in {clock}. "
             "Targets (issue #5): grad+state <= 3% of dense; step time <= 1.1x dense. 'state / dense' is measured "
             "from the live .grad and AdamW state tensors; 'peak step MB' is the peak of simultaneously alive tensors "
             "created in the step (dispatch-mode tracking with frees; excludes pre-made buffers such as 'basis MB'); "
             "'basis MB' is the stored basis columns U_I, V_J (not gradient or optimizer state; none on a side that takes "
             "the fast-transform route). 'GFLOP/step' counts the route taken, 'GFLOP columns route' the same step with "
             "dense basis columns on both sides. 'sparse/learned (MiniLM gradients)' is the real learned basis and "
             "index set fitted on 12 real gradients of MiniLM's layer-2 MLP up-projection; 'sparse/learned stand-in' "
             "(shapes without real gradients) is seeded orthonormal leading columns with the measured index-set "
             "structure, not a learned basis. The 'route' rows time the sampled product's two routes on a fully "
             "filled 256x256 block (gather time / GEMM time); the route choice itself is calibrated per machine, "
             "see sparsegrad_route_cpu.md.")
    meta = {"shapes": shapes, "density": args.density, "tokens": t, "loadavg_at_end": os.getloadavg()}
    write_results("sparsegrad", rows, meta, device="cpu", notes=notes)
    return {"rows": rows}
