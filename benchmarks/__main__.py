"""``python -m benchmarks`` lists the suites; ``python -m benchmarks NAME [options]`` runs one.

A suite is a module ``benchmarks/bench_<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> dict``. Every suite takes ``--quick`` (a small subset for CPU / smoke runs),
``--device`` (cpu or cuda) and ``--out`` (results folder, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path


def suites() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    out = {}
    for m in pkgutil.iter_modules([str(here)]):
        if m.name.startswith("bench_"):
            mod = importlib.import_module(f"benchmarks.{m.name}")
            out[m.name[len("bench_"):]] = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = suites()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("benchmark suites (python -m benchmarks NAME [--quick] [--device cpu|cuda] [--out DIR]):")
        for k, v in available.items():
            print(f"  {k:<12} {v}")
        return 0
    name = argv.pop(0)
    if name not in available:
        print(f"unknown suite {name!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"benchmarks.bench_{name}")
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=mod.__doc__, conflict_handler="resolve")
    p.add_argument("--quick", action="store_true", help="small subset (CPU / smoke run)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(p)
    args = p.parse_args(argv)
    if args.out:
        import os

        os.environ["LRMATH_BENCH_OUT"] = args.out
    mod.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
