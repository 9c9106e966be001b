"""Progress bars and logging for long loops (tqdm when installed, quiet otherwise)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["progress", "set_verbosity", "cache_dir"]

_VERBOSITY = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    """0 = quiet (no progress bars, warnings only), 1 = normal, 2 = verbose (debug logging)."""
    global _VERBOSITY
    _VERBOSITY = int(level)
    logging.getLogger("lrmath").setLevel({0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG))


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Wrap a long loop in a progress bar on stderr (only on a terminal or when verbose).

    Set ``LRMATH_PROGRESS=0`` to silence bars everywhere, ``=1`` to force them.
    """
    env = os.environ.get("LRMATH_PROGRESS")
    if enabled is None:
        enabled = _VERBOSITY > 0 and (env == "1" or (env != "0" and sys.stderr.isatty()))
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the demo extra
        items = list(iterable)
        for i, item in enumerate(items, 1):
            print(f"\r{desc} {i}/{len(items)}", end="", file=sys.stderr, flush=True)
            yield item
        print(file=sys.stderr)
        return
    yield from tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


def cache_dir(sub: str = "") -> str:
    """lrmath's cache folder: ``$LRMATH_CACHE_DIR``, else ``$XDG_CACHE_HOME/lrmath``, else ``~/.cache/lrmath``."""
    base = os.environ.get("LRMATH_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "lrmath")
    path = os.path.join(base, sub) if sub else base
    os.makedirs(path, exist_ok=True)
    return path
