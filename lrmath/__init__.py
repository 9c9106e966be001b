"""lrmath: low-rank and compression math for training and shipping large neural networks.

Each method is a module with a small public API:

=====================  ===============================================================
``lrmath.runlora``     every forward/backward graph of a LoRA layer, costs, ``plan``
``lrmath.lotr``        Tucker-2 adapters shared across layers, HOSVD/HOOI
``lrmath.sparsegrad``  bases where MLP gradients are sparse, top-k, sampled products
``lrmath.kashin``      Kashin quantization: x = u + Q v, centroid coding, packed files
``lrmath.randmm``      randomized matmul for memory-efficient backprop, exact variances
``lrmath.ops``         shared orthogonal operators (Hadamard, DCT, Haar, butterfly, Kronecker)
``lrmath.rng``         counter-based randomness identical on NumPy, CuPy and Numba
``lrmath.backend``     array-API dispatch, conversion and validation
``lrmath.data``        the default model (all-MiniLM-L6-v2) and a tiny text task
``lrmath.torch``       PyTorch layers (loaded only when accessed)
=====================  ===============================================================

``import lrmath`` imports neither torch nor CuPy; method modules load on first access.
"""

from __future__ import annotations

import importlib

from . import backend, errors, ops, rng
from ._version import __version__
from .errors import (
    BackendUnavailableError,
    DeviceError,
    DTypeError,
    EmptyInputError,
    FormatError,
    LrmathError,
    NonFiniteError,
    RankError,
    ShapeError,
)

_LAZY = ("runlora", "lotr", "sparsegrad", "kashin", "randmm", "data", "eval", "finetune", "torch", "registry", "cli", "testing")

__all__ = [
    "__version__",
    "backend",
    "errors",
    "ops",
    "rng",
    *_LAZY,
    "LrmathError",
    "ShapeError",
    "RankError",
    "DTypeError",
    "NonFiniteError",
    "EmptyInputError",
    "DeviceError",
    "FormatError",
    "BackendUnavailableError",
]


def __getattr__(name: str):
    if name in _LAZY:
        mod = importlib.import_module(f".{name}", __name__)
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'lrmath' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
