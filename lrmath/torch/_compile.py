"""Helpers that let the lrmath torch layers run under ``torch.compile`` without graph breaks.

Decision (issue 17): each layer keeps a plain :class:`torch.autograd.Function` for eager
mode (lowest Python overhead) and, while Dynamo traces (``torch.compiler.is_compiling()``),
calls the same forward/backward bodies through ``torch.library.custom_op`` operators with
``register_fake`` and ``register_autograd``. The operators are opaque to Dynamo, so the
Python inside them (plan execution, counter-based RNG through NumPy, index structures) never
breaks the graph; their fake implementations run the very same torch code on fake tensors,
so output and saved-tensor shapes cannot drift from the real ones.

Non-tensor state the bodies need (RunLoRA graphs, LoTR plans, basis operators) is passed
as an ``int`` handle into :data:`_OBJECTS`, a process-wide table (a custom op's schema
admits only tensors and scalars). Handles are stable for the life of the process.

Plan choice is resolved by shape: :func:`constant` marks a pure function of Python
constants (weight shapes, flags) whose result Dynamo evaluates once while tracing and
inlines as a constant (``torch._dynamo.assume_constant_result``); the token count is only
*compared* with the returned breakpoints in traced code, which Dynamo turns into guards.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["handle", "lookup", "constant", "is_compiling"]

_OBJECTS: list = []
_IDS: dict = {}


def handle(obj, *, weak: bool = False) -> int:
    """A stable int handle for ``obj``; ``weak=True`` holds a weak reference (for modules)."""
    key = id(obj)
    h = _IDS.get(key)
    if h is not None and lookup(h) is obj:
        return h
    h = len(_OBJECTS)
    _OBJECTS.append(weakref.ref(obj) if weak else obj)
    _IDS[key] = h
    return h


def lookup(h: int):
    obj = _OBJECTS[h]
    return obj() if isinstance(obj, weakref.ref) else obj


def constant(fn):
    """Evaluate ``fn`` at trace time on constant arguments (no graph break, no tracing inside)."""
    return torch._dynamo.assume_constant_result(fn)


def is_compiling() -> bool:
    return torch.compiler.is_compiling()
