"""The ``lrmath`` command line (also ``python -m lrmath``).

Subcommands come from the registry (:mod:`lrmath.registry`): ``info`` and ``tour``
are built in; each method package adds its own (``plan``, ``quantize``, ...).
Global options: ``-q/--quiet``, ``-v/--verbose``, ``--json`` (machine-readable output
on stdout; tables and logs go to stderr then).

Errors (decisions.md, "Errors and the CLI"): every failure prints one line
``lrmath: error: <message>`` on stderr and no traceback (``-v`` adds it). Exit status 2 is a
usage error (argparse errors, and :class:`OptionError` / :class:`ArgumentTypeError` /
:class:`RankError`: a bad value given on the command line); 1 is any other failure (a
missing or corrupt file, NaN in the data, a missing backend). No command writes over one of
its inputs unless ``--overwrite`` says so (:func:`check_output`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from . import registry
from .backend import public
from ._progress import progress, set_verbosity

__all__ = ["main", "Context", "check_output", "USAGE_ERRORS"]


class _UsageError(Exception):
    """argparse found a bad command line (raised instead of argparse's exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D401 - argparse's hook
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _usage_errors():
    from .errors import ArgumentTypeError, OptionError, RankError

    return (OptionError, ArgumentTypeError, RankError)


USAGE_ERRORS = ("OptionError", "ArgumentTypeError", "RankError")


@public(finite=False, result=False)
def check_output(output, inputs=(), *, overwrite: bool = False, name: str = "output"):
    """Validate an output file path before any work: refuse to write over an input.

    ``output`` must not be a directory and its folder must exist; it must not be the same
    file as any of ``inputs`` (after resolving links: ``os.path.samefile``) unless
    ``overwrite``. Raises :class:`OptionError` (usage) or ``IsADirectoryError`` /
    ``FileNotFoundError`` (failures).
    """
    import os

    from .errors import ArgumentTypeError, OptionError

    if not isinstance(output, (str, os.PathLike)) or isinstance(inputs, (str, bytes, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a path and inputs a list of paths, got {output!r}, {inputs!r}")
    out = os.fspath(output)
    if not out:
        raise OptionError(f"{name} path is empty")
    if os.path.isdir(out):
        raise IsADirectoryError(f"{name} {out!r} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of {name} {out!r} does not exist ({folder})")
    if os.path.exists(out):
        for src in inputs:
            try:
                same = os.path.samefile(out, os.fspath(src))
            except OSError:
                same = False
            if same and not overwrite:
                raise OptionError(f"{name} {out!r} is the input file {os.fspath(src)!r}; refusing to overwrite it (pass --overwrite to replace it)")
    return out


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
            from .errors import OptionError

            raise OptionError(f"LRMATH_SCALE must be 'ci' or 'full', got {self.scale!r}")
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
    parser = _Parser(prog="lrmath", description="Low-rank and compression math for large neural networks.")
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


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
        msg = f"{msg}: {exc.filename}"
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrmath`` console script; returns the exit status.

    0 success, 1 failure, 2 usage error, 130 interrupted; errors print one line on stderr.
    """
    import traceback

    from .errors import LrmathError

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        parser, runners = build_parser()
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"lrmath: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    set_verbosity(0 if args.quiet else 2 if args.verbose else 1)
    if args.version:
        from ._version import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        ctx = Context(json_mode=args.json, scale=getattr(args, "scale", None))
        result = runners[args.command](args, ctx)
    except KeyboardInterrupt:
        print("lrmath: error: interrupted", file=sys.stderr)
        return 130
    except (LrmathError, OSError, MemoryError, Exception) as exc:  # noqa: BLE001 - one line, never a traceback
        if verbose:
            traceback.print_exc()
        if isinstance(exc, _usage_errors()):
            code = 2
        else:
            code = 1
        internal = "" if isinstance(exc, (LrmathError, OSError)) else f"internal error ({type(exc).__name__}; -v shows the traceback): "
        print(f"lrmath: error: {args.command}: {internal}{_one_line(exc)}", file=sys.stderr)
        return code
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    if args.json:
        print(json.dumps(result, default=_default, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
