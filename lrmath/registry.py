"""Plug-in registry for CLI subcommands and ``lrmath tour`` sections.

Each method registers its own commands from its own package, in a module named
``lrmath/<method>/_cli.py``; :func:`discover` imports every such module it finds, so
adding a method never edits a central file::

    # lrmath/kashin/_cli.py
    from lrmath.registry import command, tour_section

    @command("quantize", help="quantize a safetensors checkpoint")
    def _quantize_args(parser):          # receives an argparse sub-parser
        parser.add_argument("path")
        return _quantize_run               # the function called with (args, ctx)

    @tour_section("kashin", order=40, title="Kashin quantization")
    def _tour(ctx):                        # ctx: TourContext (scale, json, progress, log)
        ctx.table(rows, columns)           # printed, and collected for --json
        return {"summary": ...}            # JSON-serialisable
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["command", "tour_section", "discover", "commands", "tour_sections", "Command", "TourSection"]

log = logging.getLogger("lrmath")


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[Any], Callable]  # configure(parser) -> run(args, ctx)
    module: str = ""


@dataclass
class TourSection:
    name: str
    title: str
    order: int
    run: Callable[[Any], Any]
    module: str = ""


_COMMANDS: dict[str, Command] = {}
_SECTIONS: dict[str, TourSection] = {}
_DISCOVERED = False
_FAILED: dict[str, str] = {}


def command(name: str, *, help: str = ""):  # noqa: A002 - argparse's word
    """Decorator registering a CLI subcommand; the decorated function configures its parser."""

    def deco(fn):
        if name in _COMMANDS and _COMMANDS[name].module != fn.__module__:
            raise ValueError(f"CLI command {name!r} registered twice ({_COMMANDS[name].module}, {fn.__module__})")
        _COMMANDS[name] = Command(name, help, fn, fn.__module__)
        return fn

    return deco


def tour_section(name: str, *, order: int = 50, title: str | None = None):
    """Decorator registering a section of ``lrmath tour`` (run in ascending ``order``)."""

    def deco(fn):
        _SECTIONS[name] = TourSection(name, title or name, order, fn, fn.__module__)
        return fn

    return deco


def discover() -> dict[str, str]:
    """Import every ``lrmath.<pkg>._cli`` module; return ``{module: error}`` for those that failed."""
    global _DISCOVERED
    if _DISCOVERED:
        return dict(_FAILED)
    import lrmath

    importlib.import_module("lrmath._cli_core")
    for info in pkgutil.iter_modules(lrmath.__path__):
        if not info.ispkg:
            continue
        modname = f"lrmath.{info.name}._cli"
        if importlib.util.find_spec(modname) is None:
            continue
        try:
            importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the rest
            _FAILED[modname] = f"{type(exc).__name__}: {exc}"
            log.warning("could not load %s: %s", modname, exc)
    _DISCOVERED = True
    return dict(_FAILED)


def commands() -> dict[str, Command]:
    discover()
    return dict(sorted(_COMMANDS.items()))


def tour_sections() -> list[TourSection]:
    discover()
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))
