"""``lrmath quantize`` / ``lrmath dequantize`` and the Kashin section of ``lrmath tour``."""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..registry import command, tour_section

DEFAULT_EXCLUDE = ("*embed*", "*head*", "*classifier*", "*pooler*")


# ----------------------------------------------------------------------------- reading checkpoints
def checkpoint_files(path) -> dict[str, Path]:
    """``{tensor name: file}`` of a checkpoint: one ``.safetensors`` file, a folder, or an index.

    A folder is read through ``model.safetensors.index.json`` when present (sharded checkpoints),
    else every ``*.safetensors`` file in it.
    """
    p = Path(path)
    if p.is_dir():
        idx = p / "model.safetensors.index.json"
        if idx.is_file():
            p = idx
        else:
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"input folder {str(path)!r} holds no *.safetensors file")
            return {k: f for f in files for k in _keys(f)}
    if not p.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    if p.suffix == ".json":
        try:
            weight_map = json.loads(p.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FormatError(f"{p}: not a safetensors index (no 'weight_map')") from exc
        out = {}
        for name, fname in weight_map.items():
            f = p.parent / fname
            if not f.is_file():
                raise FormatError(f"{p}: shard {fname} of tensor {name!r} is missing")
            out[name] = f
        return out
    return {k: p for k in _keys(p)}


def _keys(f: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="numpy") as h:
            return list(h.keys())
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{f}: not a readable safetensors file ({exc})") from exc


def _read_tensor(f: Path, name: str):
    """One tensor, memory-mapped (torch when available: it reads bfloat16 too)."""
    from safetensors import safe_open

    try:
        import torch  # noqa: F401

        with safe_open(str(f), framework="pt") as h:
            return h.get_tensor(name)
    except ImportError:
        with safe_open(str(f), framework="numpy") as h:
            return h.get_tensor(name)


def _is_float2d(t) -> bool:
    return len(t.shape) == 2 and "float" in str(t.dtype)


def _selected(name: str, include, exclude) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


# ----------------------------------------------------------------------------- quantize
@command("quantize", help="Kashin-quantize the 2-D weights of a safetensors checkpoint")
def _quantize_args(parser):
    parser.add_argument("input", help="a .safetensors file, a folder, or model.safetensors.index.json (sharded)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors file (FORMAT.md)")
    parser.add_argument("--bits", type=int, default=2, help="code bits per weight, 2..8 (default 2)")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--basis", default="hadamard", help="hadamard, rdct, dct, haar, butterfly, identity")
    parser.add_argument("--method", default="default", choices=("default", "greedy", "truncation"))
    parser.add_argument("--iters", type=int, default=None, help="alternating sweeps (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--include", action="append", default=None, help="fnmatch pattern of tensors to quantize (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], help="fnmatch pattern of tensors to keep dense (repeatable)")
    parser.add_argument("--no-default-exclude", action="store_true", help=f"do not exclude {DEFAULT_EXCLUDE} by default")
    parser.add_argument("--no-compare", action="store_true", help="skip the RTN comparison column")
    parser.add_argument("--overwrite", action="store_true", help="allow OUTPUT to be the input file (replaced atomically)")
    return _quantize_run


def _quantize_run(args, ctx):
    from .baselines import rtn_quantize
    from .format import write_checkpoint
    from ..cli import check_output
    from .quantize import check_options, quantize

    # bad options fail before any reading, a bad output before any work
    check_options(args.bits, block=args.block, basis=args.basis, method=args.method, iters=args.iters, seed=args.seed)
    files = checkpoint_files(args.input)
    inputs = set(files.values()) | ({Path(args.input)} if Path(args.input).is_file() else set())
    check_output(args.output, sorted(inputs), overwrite=args.overwrite)
    exclude = list(args.exclude) + ([] if args.no_default_exclude else list(DEFAULT_EXCLUDE))
    entries, plain, rows = {}, {}, []
    t0 = time.perf_counter()
    for name in ctx.progress(list(files), desc="quantize"):
        t = _read_tensor(files[name], name)
        if not (_is_float2d(t) and _selected(name, args.include, exclude)):
            plain[name] = t
            continue
        W = t.float().numpy() if hasattr(t, "float") else np.asarray(t, dtype=np.float32)
        q = quantize(W, args.bits, block=args.block, basis=args.basis, method=args.method, iters=args.iters, seed=args.seed)
        q.dtype = str(t.dtype).rsplit(".", 1)[-1]
        entries[name] = {"meta": q.meta(), "tensors": q.tensors()}
        row = {"tensor": name, "shape": "x".join(map(str, W.shape)), "bpw": round(q.bits_per_weight, 4),
               "rel. error": round(q.relative_error(W), 4)}
        if not args.no_compare:
            r = rtn_quantize(W, args.bits, args.block)
            row.update({"RTN bpw": round(r.bits_per_weight, 4), "RTN rel. error": round(r.relative_error(W), 4)})
        rows.append(row)
        del W, t
    if not entries:
        ctx.print("no tensor matched: nothing quantized (check --include/--exclude)")
    write_checkpoint(args.output, entries, plain)
    ctx.table(rows, title=f"Kashin quantization, {args.bits} bits, N = {args.block}, basis {args.basis}")
    n_w = sum(int(np.prod(e["meta"]["shape"])) for e in entries.values())
    n_b = sum(sum(a.nbytes for a in e["tensors"].values()) for e in entries.values())
    summary = {"output": str(args.output), "quantized": len(entries), "plain": len(plain),
               "bits_per_weight": 8 * n_b / n_w if n_w else None, "seconds": time.perf_counter() - t0, "tensors": rows}
    ctx.print(f"\n{len(entries)} tensors quantized ({summary['bits_per_weight'] or 0:.4f} bits per weight), "
              f"{len(plain)} kept dense -> {args.output} ({summary['seconds']:.1f} s)")
    return summary if ctx.json else 0


# ----------------------------------------------------------------------------- dequantize
@command("dequantize", help="write a dense safetensors checkpoint back from a Kashin-quantized one")
def _dequantize_args(parser):
    parser.add_argument("input", help="a file written by 'lrmath quantize'")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--dtype", default=None, choices=_FLOAT_DTYPES,
                        help="output dtype of dequantized tensors (default: the original)")
    parser.add_argument("--overwrite", action="store_true", help="allow OUTPUT to be the input file (replaced atomically)")
    return _dequantize_run


_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _dequantize_run(args, ctx):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..backend import check_path
    from ..cli import check_output
    from .format import atomic_write, read_header
    from .quantize import load_entries

    check_path(args.input, "input")
    check_output(args.output, [args.input], overwrite=args.overwrite)
    entries = load_entries(args.input)
    header, keys = read_header(args.input)
    out = {}
    with safe_open(str(args.input), framework="pt") as h:
        for k in keys:
            if ".kashin." not in k:
                out[k] = h.get_tensor(k)
    for name, q in ctx.progress(list(entries.items()), desc="dequantize"):
        name_dt = args.dtype or q.dtype
        if name_dt not in _FLOAT_DTYPES:  # a quantized weight decodes to real numbers: no integer output
            raise FormatError(f"{args.input}: entry {name!r} records dtype {name_dt!r}; expected one of {_FLOAT_DTYPES}")
        dt = getattr(torch, name_dt)
        out[name] = torch.from_numpy(q.dequantize(np.float32)).to(dt).contiguous()
    atomic_write(args.output, lambda tmp: save_file(out, tmp))
    ctx.print(f"{len(entries)} tensors dequantized, {len(out) - len(entries)} copied -> {args.output}")
    return {"output": str(args.output), "dequantized": sorted(entries)} if ctx.json else 0


# ----------------------------------------------------------------------------- tour
_CI_LAYERS = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.0.intermediate.dense.weight",
              "encoder.layer.3.output.dense.weight", "encoder.layer.5.attention.output.dense.weight")


@tour_section("kashin", order=40, title="Kashin quantization (2 bits per weight)")
def _tour(ctx):
    from .. import data
    from .baselines import hqq_available, hqq_quantize, rtn_quantize
    from .quantize import quantize

    names = [f"{n}.weight" for n, _ in data.linear_layers()]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in DEFAULT_EXCLUDE)]
    if ctx.scale == "ci":
        names = [n for n in _CI_LAYERS if n in names] or names[:4]
    weights = data.load_weights(names)
    has_hqq, why = hqq_available()
    rows = []
    for name in ctx.progress(names, desc="kashin"):
        W = np.asarray(weights[name], dtype=np.float32)
        t = time.perf_counter()
        q = quantize(W, 2)
        secs = time.perf_counter() - t
        g = quantize(W, 2, method="greedy")
        r256 = rtn_quantize(W, 2, 256)
        r64 = rtn_quantize(W, 2, 64)
        row = {"matrix": name.replace("encoder.layer.", "L").replace(".weight", ""), "shape": f"{W.shape[0]}x{W.shape[1]}",
               "Kashin": round(q.relative_error(W), 4), "bpw": round(q.bits_per_weight, 3),
               "paper (greedy)": round(g.relative_error(W), 4),
               "RTN g256 (2.125)": round(r256.relative_error(W), 4), "RTN g64 (2.5)": round(r64.relative_error(W), 4)}
        if has_hqq:
            Wh, _ = hqq_quantize(W, 2, 64)
            row["HQQ g64 (2.5)"] = round(float(np.linalg.norm(Wh - W) / np.linalg.norm(W)), 4)
        row["s"] = round(secs, 2)
        rows.append(row)
    ctx.table(rows, title="relative Frobenius error ||W - W_hat|| / ||W||, lower is better")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("matrix", "shape", "s")}
    wins = sum(r["Kashin"] < min(r["RTN g256 (2.125)"], r["RTN g64 (2.5)"]) for r in rows)
    ctx.print(f"\nmean over {len(rows)} matrices: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    ctx.print(f"Kashin (default recipe, 2.125 bpw) beats RTN at 2.125 and 2.5 bpw on {wins}/{len(rows)} matrices"
              + ("" if has_hqq else f"; HQQ skipped ({why})"))
    return {"scale": ctx.scale, "rows": rows, "mean": mean, "wins_vs_rtn": wins, "hqq": has_hqq}
