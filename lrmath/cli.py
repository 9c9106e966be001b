"""The ``lrmath`` command line (also ``python -m lrmath``).

Subcommands come from the registry (:mod:`lrmath.registry`): ``info`` and ``tour``
are built in; each method package adds its own (``plan``, ``quantize``, ...).
Global options: ``-q/--quiet``, ``-v/--verbose``, ``--json`` (machine-readable output
on stdout; tables and logs go to stderr then).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from . import registry
from ._progress import progress, set_verbosity

__all__ = ["main", "Context"]


class Context:
    """What a command or tour section gets besides its arguments.

    Attributes
    ----------
    json : bool
        ``--json`` was given: print tables to stderr, return data for stdout.
    scale : str
        ``'ci'`` (small and fast) or ``'full'``; from ``--scale`` or ``LRMATH_SCALE``.
    log : logging.Logger
    """

    def __init__(self, json_mode: bool = False, scale: str | None = None):
        import os

        self.json = json_mode
        self.scale = scale or os.environ.get("LRMATH_SCALE", "ci")
        if self.scale not in ("ci", "full"):
            raise SystemExit(f"LRMATH_SCALE must be 'ci' or 'full', got {self.scale!r}")
        self.log = logging.getLogger("lrmath")
        self.progress = progress

    @property
    def out(self):
        return sys.stderr if self.json else sys.stdout

    def print(self, *args: Any) -> None:
        print(*args, file=self.out)

    def table(self, rows: Sequence[Sequence[Any]] | Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None) -> list[dict]:
        """Print a markdown table; return the rows as dicts (for ``--json``)."""
        rows = list(rows)
        if rows and isinstance(rows[0], dict):
            columns = list(columns or rows[0].keys())
            cells = [[r.get(c, "") for c in columns] for r in rows]
        else:
            columns = list(columns or [])
            cells = [list(r) for r in rows]
        if title:
            self.print(f"\n### {title}\n")
        self.print(format_table(cells, columns))
        return [dict(zip(columns, r)) for r in cells]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> str:
    """A markdown table with aligned columns."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(str(h))] + [len(r[i]) for r in cells]) for i, h in enumerate(columns)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="lrmath", description="Low-rank and compression math for large neural networks.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name, cmd in registry.commands().items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        runners[name] = cmd.configure(p)
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrmath`` console script; returns the exit status."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    set_verbosity(0 if args.quiet else 2 if args.verbose else 1)
    if args.version:
        from ._version import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    ctx = Context(json_mode=args.json, scale=getattr(args, "scale", None))
    from .errors import LrmathError

    try:
        result = runners[args.command](args, ctx)
    except LrmathError as exc:
        print(f"lrmath {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    if args.json:
        print(json.dumps(result, default=_default, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
