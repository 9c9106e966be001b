"""Built-in commands: ``lrmath info`` and ``lrmath tour``."""

from __future__ import annotations

import platform
import time

from .registry import command, tour_section, tour_sections


@command("info", help="versions, backends and devices")
def _info_args(parser):
    return _info


def _info(args, ctx):
    from ._progress import cache_dir
    from ._version import __version__
    from .backend import available_backends

    data = {
        "lrmath": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cache_dir": cache_dir(),
        "backends": available_backends(),
    }
    try:
        from . import data as _data

        data["default_model"] = str(_data.model_dir())
    except Exception as exc:  # noqa: BLE001 - the demo extra is optional
        data["default_model"] = f"unavailable ({type(exc).__name__}: {exc})"
    rows = []
    for name, b in data["backends"].items():
        extra = {k: v for k, v in b.items() if k not in ("available", "version", "reason")}
        rows.append([name, "yes" if b["available"] else "no", b.get("version", ""), b.get("reason", "") or ", ".join(f"{k}={v}" for k, v in extra.items())])
    ctx.print(f"lrmath {__version__} on Python {data['python']} ({data['platform']})")
    ctx.print(f"cache: {data['cache_dir']}\ndefault model: {data['default_model']}\n")
    ctx.table(rows, ["backend", "available", "version", "notes"])
    return data


@command("tour", help="the main job: every method on the default model (all-MiniLM-L6-v2)")
def _tour_args(parser):
    parser.add_argument("--only", action="append", default=None, help="run only these sections (repeatable)")
    parser.add_argument("--skip", action="append", default=[], help="skip these sections")
    parser.add_argument("--scale", choices=("ci", "full"), default=None, help="problem size (default $LRMATH_SCALE or ci)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    return _tour


def _tour(args, ctx):
    sections = tour_sections()
    if args.list:
        ctx.table([[s.order, s.name, s.title] for s in sections], ["order", "name", "title"])
        return {"sections": [s.name for s in sections]}
    chosen = [s for s in sections if (args.only is None or s.name in args.only) and s.name not in args.skip]
    if args.only:
        unknown = set(args.only) - {s.name for s in sections}
        if unknown:
            ctx.print(f"unknown tour section(s): {sorted(unknown)}; available: {[s.name for s in sections]}")
            return 2
    out = {}
    failed = []
    for s in chosen:
        ctx.print(f"\n## {s.title}\n")
        t0 = time.perf_counter()
        try:
            out[s.name] = s.run(ctx)
        except Exception as exc:  # noqa: BLE001 - report and carry on with the other sections
            ctx.log.exception("tour section %s failed", s.name)
            out[s.name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(s.name)
        ctx.print(f"\n({s.name}: {time.perf_counter() - t0:.1f} s)")
    if failed:
        ctx.print(f"\nsections that failed: {failed}")
    if ctx.json:
        return out
    return 1 if failed else 0


@tour_section("model", order=0, title="The default model: all-MiniLM-L6-v2")
def _tour_model(ctx):
    from . import data

    layers = data.linear_layers()
    rows = [[name, f"{o}x{i}", o * i] for name, (o, i) in layers]
    ctx.print(f"{len(layers)} linear layers, {sum(r[2] for r in rows):,} weights (torch layout: out x in)")
    ctx.table(rows, ["layer", "out x in", "weights"])
    return {"linear_layers": [{"name": n, "shape": list(s)} for n, s in layers]}
