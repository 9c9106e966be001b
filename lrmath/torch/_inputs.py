"""The dtype policy at the entry of every lrmath torch layer's ``forward`` (issue 18).

``@layer_forward`` wraps a ``forward(self, x, ...)``: a non-tensor input raises
:class:`ArgumentTypeError`, an integer/bool/complex input :class:`DTypeError` (a linear layer
of real weights has no meaning for them); a floating input of another dtype than the layer's
parameters is computed in the parameters' dtype and the result cast back to the input's dtype
(bfloat16/float16 inputs of a float32 layer are storage types: computed in float32, as the
README says; a float64 input of a float32 layer is computed in float32). NaN/Inf inputs are not
scanned (that would force a device sync every step): like ``nn.Linear`` the layers propagate
them. Under autocast the
input passes unchanged (autocast chooses the dtypes). The wrapper is a plain function with
static dtype tests, so ``torch.compile`` traces through it.
"""

from __future__ import annotations

import functools

import torch

from ..errors import ArgumentTypeError, DTypeError, ShapeError


def _param_dtype(module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_layer_input(x, name: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DTypeError(f"{name} must be a floating tensor (float32/float64/float16/bfloat16), got {x.dtype}")
    if x.dim() == 0:
        raise ShapeError(f"{name} must have a feature axis (shape (..., in_features)), got a 0-d tensor")


def layer_forward(fn):
    """Decorator for ``forward(self, x, ...)`` implementing the module docstring's policy."""

    @functools.wraps(fn)
    def forward(self, x, *args, **kwargs):
        check_layer_input(x, f"{type(self).__name__} input")
        if torch.is_autocast_enabled(x.device.type):
            return fn(self, x, *args, **kwargs)
        dt = _param_dtype(self)
        if dt is None or x.dtype == dt:
            return fn(self, x, *args, **kwargs)
        y = fn(self, x.to(dt), *args, **kwargs)
        return y.to(x.dtype) if isinstance(y, torch.Tensor) and y.is_floating_point() else y

    return forward
