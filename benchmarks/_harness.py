"""Timing and reporting shared by every benchmark suite.

Timing rules (see ``../shared/decisions.md``): warm-up first, then ``repeats`` rounds in
which every candidate runs once per round in turn (interleaved, so machine noise hits
all candidates alike); report the median with min/max and the relative spread. On CUDA
each sample is timed with CUDA events after a synchronize.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["time_interleaved", "paired", "verdict", "peak_torch_memory", "peak_host_memory", "env_info", "write_results", "format_table", "RESULTS"]


def _sync(device: str | None):
    if device and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time_once(fn: Callable[[], Any], number: int, device: str | None) -> float:
    if device and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number
    # LRMATH_BENCH_CLOCK=cpu: CPU seconds of the process instead of wall time (on a shared, loaded
    # machine wall time mostly measures the other jobs; with one thread CPU time is the call's own cost)
    clock = time.process_time if os.environ.get("LRMATH_BENCH_CLOCK") == "cpu" else time.perf_counter
    t0 = clock()
    for _ in range(number):
        fn()
    return (clock() - t0) / number


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 5,
    number: int | None = None,
    warmup: int = 1,
    sync: str | None = None,
    min_time: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Median time per call of each function, measured in interleaved rounds.

    Parameters
    ----------
    fns : dict of name -> zero-argument callable
    repeats : int
        Rounds (>= 5 for claims, per decisions.md).
    number : int, optional
        Calls per sample; by default chosen so one sample takes ~``min_time`` s.
    warmup : int
        Untimed calls of each function first (compilation, caches, allocator).
    sync : str, optional
        ``'cuda'`` to time with CUDA events.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        _sync(sync)
    if number is None:
        slowest = max(_time_once(fn, 1, sync) for fn in fns.values())
        number = max(1, int(min_time / max(slowest, 1e-9)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(_time_once(fn, number, sync))
    out = {}
    for k, s in samples.items():
        med = statistics.median(s)
        out[k] = {
            "median": med,
            "min": min(s),
            "max": max(s),
            "spread": (max(s) - min(s)) / med if med > 0 else 0.0,
            "samples": s,
            "number": number,
        }
    return out


def paired(res: dict, a: str, b: str) -> dict[str, Any]:
    """Per-round ratios ``a / b`` from one :func:`time_interleaved` result (same rounds, paired).

    Returns the median, min and max ratio and ``wins``: the rounds in which ``a`` was faster
    (ratio < 1) out of ``rounds``.
    """
    ra = [x / y for x, y in zip(res[a]["samples"], res[b]["samples"])]
    return {"median": statistics.median(ra), "min": min(ra), "max": max(ra), "wins": sum(r < 1 for r in ra),
            "rounds": len(ra)}


def verdict(p: dict[str, Any], tol: float = 0.05) -> str:
    """"faster" only where the paired median and most rounds agree; "slower" past ``tol``
    (decisions.md: not more than 5% slower in the median); else "on par"."""
    if p["median"] < 1 and p["wins"] > p["rounds"] / 2:
        return "faster"
    if p["median"] > 1 + tol:
        return "slower"
    return "on par"


def fmt_paired(p: dict[str, Any]) -> str:
    """``0.97 [0.91-1.04] 9/15`` (median [min-max] rounds faster)."""
    return f"{p['median']:.3f} [{p['min']:.3f}-{p['max']:.3f}] {p['wins']}/{p['rounds']}"


def peak_torch_memory(fn: Callable[[], Any], device: str = "cpu") -> int:
    """Peak bytes of tensors alive at the same time while ``fn`` runs, excluding what existed before.

    On CUDA: the caching allocator's peak above the starting allocation. On CPU: every non-view,
    non-in-place op output is counted from its creation until its tensor is collected
    (``weakref.finalize``) under a ``TorchDispatchMode``; buffers made before ``fn`` (weights,
    stored bases) are not counted. (A replay of profiler memory events misses frees that happen
    outside an op and so approaches the *total* allocation; it is not used.)
    """
    import weakref

    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0

        def _free(self, b):
            self.live -= b

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view and not func._schema.is_mutable:
                for o in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(o, torch.Tensor) and o.layout == torch.strided:
                        b = o.untyped_storage().nbytes()
                        self.live += b
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(o, self._free, b)
            return out

    mode = _Live()
    with mode:
        fn()
    return int(mode.peak)


def peak_host_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated through Python/NumPy while ``fn`` runs (``tracemalloc``)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)


def env_info(device: str = "cpu") -> dict[str, Any]:
    """Device, driver and library versions for the JSON next to every table."""
    info: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        # the machine is shared: the load at write time tells how far absolute times are inflated
        "loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    for mod in ("numpy", "scipy", "torch", "peft", "cupy", "numba", "lrmath"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:  # noqa: BLE001
                continue
        info[mod] = getattr(m, "__version__", "?")
    if "torch" in info:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if str(device).startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
            try:
                import subprocess

                info["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            except Exception:  # noqa: BLE001
                pass
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Markdown table of ``rows`` (dicts), columns in first-seen order."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    w = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda r: "| " + " | ".join(x.ljust(n) for x, n in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (n + 2) for n in w) + "|", *map(line, cells)])


def write_results(suite: str, rows: list[dict], meta: dict | None = None, device: str = "cpu", out_dir: str | Path | None = None, notes: str = "") -> tuple[Path, Path]:
    """Print the table and write ``<suite>_<device>.md`` and ``.json`` (atomically)."""
    out = Path(out_dir or os.environ.get("LRMATH_BENCH_OUT") or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    dev = "gpu" if str(device).startswith("cuda") else str(device)
    meta = {**env_info(device), **(meta or {})}
    table = format_table(rows)
    md = f"# {suite} ({dev})\n\n" + (notes.strip() + "\n\n" if notes else "") + table + "\n\n" + "```json\n" + json.dumps(meta, indent=1, default=str) + "\n```\n"
    print(table)
    md_path, js_path = out / f"{suite}_{dev}.md", out / f"{suite}_{dev}.json"
    for path, text in ((md_path, md), (js_path, json.dumps({"suite": suite, "meta": meta, "rows": rows}, indent=1, default=str))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(f"\nwrote {md_path} and {js_path}", file=sys.stderr)
    return md_path, js_path
