"""``objective="time"``: measure candidate graph pairs on a backend and cache the winner.

The candidates are the FLOP envelope's pair at the token count, the Pareto front (FLOPs vs
saved bytes), PEFT's pair and the paper's FLOP-best named pair: FLOPs alone do not decide
the winner (facts.md: the FLOP-best pair is slower than PEFT on some CPU shapes).  Winners
are cached as JSON in ``lrmath._progress.cache_dir("runlora")`` keyed by device, dtype,
shapes and flags; the file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import numpy as np

from .._progress import cache_dir
from ..errors import BackendUnavailableError
from ..backend import public

__all__ = ["tune", "cache_path", "measure_pair"]


@public
def cache_path() -> str:
    return os.path.join(cache_dir("runlora"), "autotune.json")


def _load() -> dict:
    try:
        with open(cache_path()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(data: dict) -> None:
    path = cache_path()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _device_name(backend: str) -> str:
    if backend.endswith("cuda"):
        import torch

        return "cuda:" + torch.cuda.get_device_name(0)
    import platform

    return f"cpu:{platform.machine()}:{os.cpu_count()}"


@public
def measure_pair(fwd, bwd, m, n, r, t, *, dtype="float32", backend="torch", repeats=5, seed=0, flags=None) -> float:
    """Median seconds of one forward + backward of the pair on random data."""
    flags = flags or {}
    rng = np.random.default_rng(seed)
    arrs = {"X": (t, m), "W": (m, n), "A": (m, r), "B": (r, n), "dY": (t, n), "b": (n,)}
    data = {k: rng.standard_normal(s).astype(np.float32) for k, s in arrs.items()}
    data["K"] = rng.random((t, m)) > 0.1
    s = 0.5
    if backend == "numpy":
        from .execute import run_backward, run_forward

        dt = np.dtype(str(dtype)) if str(dtype) in ("float32", "float64") else np.float32
        inp = {k: (v.astype(dt) if v.dtype != bool else v) for k, v in data.items()}

        def step():
            _, saved = run_forward(fwd, inp, s, keep=bwd.saved)
            run_backward(bwd, inp, saved, s)

        sync = None
    else:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover
            raise BackendUnavailableError("objective='time' with backend torch needs torch") from exc
        from .execute_torch import TorchOps, run_program

        dev = "cuda" if backend.endswith("cuda") else "cpu"
        tdt = getattr(torch, str(dtype).rsplit(".", 1)[-1])
        env0 = {k: torch.as_tensor(v, device=dev).to(tdt if v.dtype != bool else torch.bool) for k, v in data.items()}

        def step():
            env = dict(env0)
            ops = TorchOps(s, env["X"])
            run_program(fwd, env, ops, ["Y"])
            benv = dict(env0)
            for k in bwd.saved:
                tensor, flipped = fwd.made[k]
                benv["saved:" + k] = env[tensor].t() if flipped else env[tensor]
            run_program(bwd, benv, ops)

        sync = torch.cuda.synchronize if dev == "cuda" else None
    step()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@public
def tune(p, *, dtype="float32", backend=None, cache=True, repeats=5) -> None:
    """Measure the plan's candidates at its token count; set ``p.segments``/``p.measured``."""
    from .plan import Segment

    backend = str(backend or "torch")
    t = p.tokens or p.reference_tokens
    f = p.flags
    key = "|".join([_device_name(backend), backend, str(dtype).rsplit(".", 1)[-1], f"{p.m}x{p.n}x{p.r}", f"t={t}",
                    "".join(k[0] for k, v in f.items() if v)])
    cands = {}
    for c in [p.select(t).poly if p.tokens is None else p.segments[0].choice, *p.front, p.peft, p.paper_best]:
        if c is not None:
            cands.setdefault(c.name, c)
    data = _load() if cache else {}
    hit = data.get(key)
    if hit and hit.get("winner") in cands:
        p.measured = hit["seconds"]
        winner = cands[hit["winner"]]
    else:
        secs = {name: measure_pair(c.forward, c.backward, p.m, p.n, p.r, t, dtype=dtype, backend=backend,
                                   repeats=repeats, flags=f)
                for name, c in cands.items()}
        winner = cands[min(secs, key=secs.get)]
        p.measured = secs
        if cache:
            data = _load()
            data[key] = {"winner": winner.name, "seconds": secs}
            _store(data)
    p.tokens = t
    p.segments = [Segment(t, t, winner, None)]
