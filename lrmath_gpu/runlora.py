"""RunLoRA on the GPU: plans executed by cuBLAS through CuPy, and the time-based autotuner.

RunLoRA's graphs are chains of GEMMs; the fastest kernel for them is the vendor GEMM, so
there is no custom kernel here. :func:`run_forward`, :func:`run_backward` and
:func:`run_pair` hand CuPy arrays (converted from any input kind, results returned as the
caller's kind) to the reference executor of :mod:`lrmath.runlora`, whose every ``matmul``
is then a cuBLAS GEMM. :func:`measure_pair` times a forward+backward pair with CUDA events
and :func:`tune` picks the fastest candidate of a plan by those timings (the reference's
``tune`` measures through torch; this one through CuPy).
"""

from __future__ import annotations

import statistics

import numpy as np

from lrmath.runlora import execute as _ex

from ._device import resolve, to_caller, to_work, work_xp

__all__ = ["run_forward", "run_backward", "run_pair", "measure_pair", "tune"]


def _dev_inputs(inputs: dict, xp):
    return {k: (to_work(v, xp) if v is not None else None) for k, v in inputs.items()}


def run_forward(graph, inputs: dict, s: float, *, keep=(), ops=None):
    """:func:`lrmath.runlora.run_forward` on the GPU (cuBLAS via CuPy); returns the caller's kind."""
    xp = work_xp(resolve("cupy"))
    ref = inputs["X"]
    Y, saved = _ex.run_forward(graph, _dev_inputs(inputs, xp), s, keep=keep, ops=ops)
    return to_caller(Y, ref), {k: to_caller(v, ref) for k, v in saved.items()}


def run_backward(graph, inputs: dict, saved: dict, s: float, *, ops=None) -> dict:
    """:func:`lrmath.runlora.run_backward` on the GPU."""
    xp = work_xp(resolve("cupy"))
    ref = inputs["dY"]
    out = _ex.run_backward(graph, _dev_inputs(inputs, xp), _dev_inputs(saved, xp), s, ops=ops)
    return {k: to_caller(v, ref) for k, v in out.items()}


def run_pair(fwd, bwd, inputs: dict, s: float, *, count: bool = False):
    """:func:`lrmath.runlora.run_pair` on the GPU."""
    xp = work_xp(resolve("cupy"))
    ref = inputs["X"]
    Y, grads, ops = _ex.run_pair(fwd, bwd, _dev_inputs(inputs, xp), s, count=count)
    return to_caller(Y, ref), {k: to_caller(v, ref) for k, v in grads.items()}, ops


def measure_pair(fwd, bwd, m, n, r, t, *, dtype="float32", repeats=5, seed=0) -> float:
    """Median seconds (CUDA events) of one forward + backward of the pair on random CuPy data."""
    resolve("cupy")
    import cupy as cp

    rng = np.random.default_rng(seed)
    shapes = {"X": (t, m), "W": (m, n), "A": (m, r), "B": (r, n), "dY": (t, n), "b": (n,)}
    dt = getattr(cp, str(dtype).rsplit(".", 1)[-1])
    env = {k: cp.asarray(rng.standard_normal(sh).astype(np.float32)).astype(dt) for k, sh in shapes.items()}
    env["K"] = cp.asarray(rng.random((t, m)) > 0.1)
    s = 0.5

    def step():
        _, saved = _ex.run_forward(fwd, env, s, keep=bwd.saved)
        _ex.run_backward(bwd, env, saved, s)

    step()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(int(repeats)):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(times)


def tune(p, *, dtype="float32", repeats=5) -> dict:
    """Time the plan's candidates (its pick, Pareto front, PEFT's pair, the paper's best) on the GPU
    and make the fastest the plan's single segment. Returns ``{name: seconds}``."""
    from lrmath.runlora.plan import Segment

    t = p.tokens or p.reference_tokens
    cands = {}
    for c in [p.select(t) if p.tokens is None else p.segments[0].choice, *p.front, p.peft, p.paper_best]:
        if c is not None:
            cands.setdefault(c.name, c)
    secs = {name: measure_pair(c.forward, c.backward, p.m, p.n, p.r, t, dtype=dtype, repeats=repeats)
            for name, c in cands.items()}
    winner = cands[min(secs, key=secs.get)]
    p.measured = secs
    p.tokens = t
    p.segments = [Segment(t, t, winner, None)]
    return secs
