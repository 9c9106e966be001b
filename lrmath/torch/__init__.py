"""PyTorch layers of lrmath, one file per method, each loaded on first access.

================================  =====================  ===========================
name                              file                   issue
================================  =====================  ===========================
``LoRALinear``, ``convert_peft``  ``runlora.py``         RunLoRA
``LoTR``, ``apply_lotr``          ``lotr.py``            LoTR
``SparseGradLinear``,             ``sparsegrad.py``      SparseGrad
``sparsegrad_mlp``
``RandomizedLinear``,             ``randmm.py``          randomized matmul
``randomize``
``KashinLinear``,                 ``kashin.py``          Kashin quantization
``quantize_model``,
``distill_floats``
``MiniLM``                        ``model.py``           the default model
``kashin_hook``,                  ``kashin_comm.py``     Kashin gradient compression
``KashinHookState``
================================  =====================  ===========================

Any other public name of a submodule (its ``__all__``) is also found here.
"""

from __future__ import annotations

import importlib
import pkgutil

_SUBMODULES = ("runlora", "lotr", "sparsegrad", "randmm", "kashin", "kashin_comm", "model")
_KNOWN = {
    "LoRALinear": "runlora",
    "convert_peft": "runlora",
    "LoTR": "lotr",
    "apply_lotr": "lotr",
    "SparseGradLinear": "sparsegrad",
    "sparsegrad_mlp": "sparsegrad",
    "RandomizedLinear": "randmm",
    "randomize": "randmm",
    "KashinLinear": "kashin",
    "quantize_model": "kashin",
    "distill_floats": "kashin",
    "MiniLM": "model",
    "kashin_hook": "kashin_comm",
    "KashinHookState": "kashin_comm",
}

__all__ = list(_KNOWN)


def _submodules():
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def __getattr__(name: str):
    if name in _SUBMODULES or name in _submodules():
        mod = importlib.import_module(f".{name}", __name__)
        globals()[name] = mod
        return mod
    if name in _KNOWN:
        mod = importlib.import_module(f".{_KNOWN[name]}", __name__)
        return getattr(mod, name)
    for sub in _submodules():
        mod = importlib.import_module(f".{sub}", __name__)
        if name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module 'lrmath.torch' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
