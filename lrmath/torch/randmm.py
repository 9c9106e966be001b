"""``RandomizedLinear``: an ``nn.Linear`` whose backward estimates ``dW`` from a sketch.

Bershatsky et al., arXiv 2201.13195, eq. (5): forward computes ``Y = X W^T + b`` exactly
and saves ``S^T X`` (k, m) instead of ``X`` (t, m); backward returns the exact
``dX = dY W`` and the unbiased ``dW_hat = (S^T dY)^T (S^T X)`` (torch layout (out, in)),
``db`` exact. ``S`` comes from :mod:`lrmath.randmm` and is regenerated in backward from
``(seed, stream)``: nothing of size ``t`` is saved. For sampling sketches whose
probabilities depend on ``X`` (``probs='x'``, ``wta``) the ``k`` sampled row indices
(int64) are saved as well, and the importance weights are folded into ``S^T X``.

Decisions (decisions.md "Randomized matmul"): ``dY`` is unknown when the layer decides
what to save, so probabilities inside the layer are ``'x'`` (``p_i ~ ||x_i||``) or
``'uniform'``; ``wta`` chooses ``|D|`` by the authors' rule or a fixed int here (the
variance-minimising choice needs ``dY``). Bernoulli sampling is not offered in the layer:
its random size does not fit a fixed memory budget.

Default estimator: ``crs`` with ``p_i ~ ||x_i||``. It is the cheapest (a row gather and
one pass for the norms; no ``t x k`` random matrix, no transform) and, on the default
model's real activations (``lrmath tour --only randmm``), its variance is within a few
percent of Gaussian/Rademacher in the median over layers. SRHT without replacement
(``estimator='srht', replace=False``) has the lowest variance of the estimators a layer
can use at ``k/t >= 0.25`` there (about 0.75x of CRS at k/t = 0.25), at the price of a
transform of ``X`` and ``dY``; it is kept selectable rather than the default because its
extra time is measured in ``benchmarks/bench_randmm.py``.

Each training forward uses a new stream (a per-layer counter), so successive steps draw
independent sketches while a run stays reproducible from ``seed``.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ..errors import ArgumentTypeError, OptionError, ShapeError
from ..randmm.estimators import DATA_INDEPENDENT, check_k
from ..randmm.estimators import make_sketch as _public_make_sketch

make_sketch = _public_make_sketch.__wrapped__  # hot path inside forward: no NaN scan of activations per step
from ..backend import check_int, public
from ._compile import is_compiling
from ._inputs import layer_forward

__all__ = ["RandomizedLinear", "randomize", "LAYER_ESTIMATORS"]

#: Estimators usable inside the layer.
LAYER_ESTIMATORS = ("gaussian", "rademacher", "srht", "srdct", "crs", "wta")


def _sketch_size(t: int, ratio: float | None, k: int | None) -> int:
    if k is not None:
        return check_k(k, t)
    return max(1, min(t, int(round(ratio * t))))


def _opts(cfg) -> dict:
    opts = {}
    if cfg["kind"] in ("srht", "srdct"):
        opts["replace"] = cfg["replace"]
    if cfg["kind"] in ("crs", "wta"):
        opts["probs"] = cfg["probs"]
    if cfg["kind"] == "crs":
        opts["replace"] = cfg["replace"]
    if cfg["kind"] == "wta":
        opts["deterministic"] = cfg["deterministic"]
    return opts


def _regenerates(cfg) -> bool:
    """Backward regenerates ``S`` from ``(seed, stream)`` (else the sampled indices are saved)."""
    return cfg["kind"] in DATA_INDEPENDENT or (cfg["kind"] == "crs" and cfg["probs"] == "uniform")


def _rm_forward(x2d, weight, bias, cfg, stream):
    """``(Y, S^T X (k, m), sampled indices (k,) or None)`` for 2-D ``x2d`` (t, m)."""
    y = torch.addmm(bias, x2d, weight.t()) if bias is not None else x2d @ weight.t()
    t = x2d.shape[0]
    k = _sketch_size(t, cfg["ratio"], cfg["k"])
    data = cfg["kind"] in ("crs", "wta")
    with torch.no_grad():
        sk = make_sketch(cfg["kind"], t, k, seed=cfg["seed"], stream=stream, X=x2d.detach() if data else None,
                         **_opts(cfg))
        sx = sk.apply_x(x2d.detach(), check=False)
    idx = None if _regenerates(cfg) else torch.as_tensor(sk.indices, device=x2d.device)
    return y, sx, idx


def _rm_backward(dy, weight, sx, idx, cfg, stream, want_x, want_w, want_b):
    dx = dw = db = None
    if want_x:
        dx = dy @ weight
    if want_w:
        if idx is None:
            t = dy.shape[0]
            k = _sketch_size(t, cfg["ratio"], cfg["k"])
            sk = make_sketch(cfg["kind"], t, k, seed=cfg["seed"], stream=stream, **_opts(cfg))
            sdy = sk.apply_y(dy, check=False)
        else:
            sdy = dy.index_select(0, idx)
        dw = sdy.t() @ sx
    if want_b:
        db = dy.sum(0)
    return dx, dw, db


class _RandomizedLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias, cfg, stream):
        y, sx, idx = _rm_forward(x2d, weight, bias, cfg, stream)
        ctx.save_for_backward(weight, sx, idx)
        ctx.cfg, ctx.stream = cfg, stream
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, sx, idx = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, db = _rm_backward(dy, weight, sx, idx, ctx.cfg, ctx.stream, need[0], need[1], ctx.has_bias and need[2])
        return dx, dw, db, None, None


# ------------------------------------------------------------------ torch.compile path
# The sketch is drawn inside an opaque custom op from the counter-based lrmath.rng, keyed by
# (seed, stream); the stream is the layer's int64 buffer ``_calls``, read inside the op and
# advanced in traced code, so a compiled step draws a new sketch each call without recompiling.
def _cfg(kind, ratio, k, probs, replace, deterministic, seed) -> dict:
    det = int(deterministic) if deterministic.lstrip("-").isdigit() else deterministic
    return {"kind": kind, "ratio": ratio, "k": None if k < 0 else k, "probs": probs, "replace": replace,
            "deterministic": det, "seed": seed}


@torch.library.custom_op("lrmath::randmm_forward", mutates_args=())
def _op_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], calls: torch.Tensor, kind: str,
                ratio: float, k: int, probs: str, replace: bool, deterministic: str,
                seed: int) -> List[torch.Tensor]:
    cfg = _cfg(kind, ratio, k, probs, replace, deterministic, seed)
    y, sx, idx = _rm_forward(x, weight, bias, cfg, int(calls))
    if idx is None:
        idx = torch.empty(0, dtype=torch.int64, device=x.device)
    return [y, sx, idx, calls.clone()]


@_op_forward.register_fake
def _(x, weight, bias, calls, kind, ratio, k, probs, replace, deterministic, seed):
    cfg = _cfg(kind, ratio, k, probs, replace, deterministic, seed)
    kk = _sketch_size(x.shape[0], ratio, cfg["k"])
    n_idx = 0 if _regenerates(cfg) else kk
    return [x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(kk, x.shape[1]),
            x.new_empty(n_idx, dtype=torch.int64), calls.new_empty(calls.shape)]


@torch.library.custom_op("lrmath::randmm_backward", mutates_args=())
def _op_backward(dy: torch.Tensor, weight: torch.Tensor, sx: torch.Tensor, idx: torch.Tensor, stream: torch.Tensor,
                 kind: str, ratio: float, k: int, probs: str, replace: bool, deterministic: str, seed: int,
                 want_x: bool, want_w: bool, want_b: bool) -> List[torch.Tensor]:
    cfg = _cfg(kind, ratio, k, probs, replace, deterministic, seed)
    g = _rm_backward(dy, weight, sx, None if _regenerates(cfg) else idx, cfg, int(stream), want_x, want_w, want_b)
    return [v.contiguous() for v in g if v is not None]


@_op_backward.register_fake
def _(dy, weight, sx, idx, stream, kind, ratio, k, probs, replace, deterministic, seed, want_x, want_w, want_b):
    outs = []
    if want_x:
        outs.append(dy.new_empty(dy.shape[0], weight.shape[1]))
    if want_w:
        outs.append(dy.new_empty(weight.shape))
    if want_b:
        outs.append(dy.new_empty(dy.shape[1]))
    return outs


def _op_setup(ctx, inputs, output):
    x, weight, bias, calls, *spec = inputs
    ctx.save_for_backward(weight, output[1], output[2], output[3])
    ctx.spec = tuple(spec)
    ctx.has_bias = bias is not None


def _op_grad(ctx, grads):
    weight, sx, idx, stream = ctx.saved_tensors
    need = ctx.needs_input_grad
    want = (bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2]))
    outs = list(_op_backward(grads[0], weight, sx, idx, stream, *ctx.spec, *want))
    return tuple(outs.pop(0) if w else None for w in want) + (None,) * 8


_op_forward.register_autograd(_op_grad, setup_context=_op_setup)


@public
class RandomizedLinear(nn.Linear):
    """Drop-in ``nn.Linear`` with a sketched weight gradient (arXiv 2201.13195).

    Parameters
    ----------
    in_features, out_features, bias, device, dtype
        As ``nn.Linear``.
    ratio : float
        Sketch size as a fraction of the rows ``t`` (all leading dims flattened):
        ``k = max(1, round(ratio * t))``; ``0 < ratio <= 1``.
    k : int, optional
        Fixed sketch size instead of ``ratio`` (an error at forward if ``k > t``).
    estimator : str
        One of :data:`LAYER_ESTIMATORS`; default ``'crs'`` with ``probs='x'``.
    probs : {'x', 'uniform'}
        Probabilities of ``crs``/``wta``.
    replace : bool
        Sampling with replacement (``crs``, ``srht``, ``srdct``).
    deterministic : 'authors' or int
        ``|D|`` of ``wta``.
    seed : int
        Base seed; forward number ``j`` uses stream ``j``.

    Notes
    -----
    Saved for backward per call: ``S^T X`` (k, in) in the input dtype, plus ``k`` int64
    indices for data-dependent sampling; see :meth:`saved_bytes`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        ratio: float = 0.25,
        k: int | None = None,
        estimator: str = "crs",
        probs: str = "x",
        replace: bool = True,
        deterministic="authors",
        seed: int = 0,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if estimator not in LAYER_ESTIMATORS:
            raise OptionError(f"estimator {estimator!r} is not available in the layer; choose one of {LAYER_ESTIMATORS}")
        if probs not in ("x", "uniform"):
            raise OptionError(f"probs={probs!r}: inside the layer dY is unknown when X is saved, so only 'x' or 'uniform' (decisions.md)")
        if deterministic == "optimal":
            raise OptionError("deterministic='optimal' needs dY; inside the layer use 'authors' or an int")
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int):
                raise ArgumentTypeError(f"k must be an integer, got {k!r}")
            if k < 1:
                raise OptionError(f"sketch size k={k} must be at least 1")
        elif not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
            raise OptionError(f"ratio must be in (0, 1], got {ratio!r}")
        if estimator == "crs" and not replace and probs != "uniform":
            raise OptionError("crs without replacement needs probs='uniform'")
        self.ratio = float(ratio)
        self.k = k
        self.estimator = estimator
        self.probs = probs
        self.replace = bool(replace)
        self.deterministic = deterministic
        self.seed = check_int(seed, "seed", minimum=0, maximum=2**64 - 1)
        self._init_counter(self.weight.device)

    def _init_counter(self, device) -> None:
        # the stream counter is a (non-persistent) int64 buffer, not a Python int, so that
        # torch.compile reads and advances it inside the graph instead of guarding on its value
        self.register_buffer("_calls", torch.zeros((), dtype=torch.int64, device=device), persistent=False)

    @property
    def calls(self) -> int:
        """Number of training forwards so far; forward ``j`` draws its sketch from stream ``j``."""
        return int(self._calls)

    @calls.setter
    def calls(self, value: int) -> None:
        self._calls.fill_(int(value))

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "RandomizedLinear":
        """Wrap an existing ``nn.Linear`` (shares its weight and bias Parameters)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        tmp = cls(1, 1, bias=False, **kwargs)
        new._init_counter(linear.weight.device)
        for name in ("ratio", "k", "estimator", "probs", "replace", "deterministic", "seed", "calls"):
            setattr(new, name, getattr(tmp, name))
        return new

    def sketch_size(self, t: int) -> int:
        """``k`` used for an input with ``t`` rows."""
        return _sketch_size(t, self.ratio, self.k)

    def saved_bytes(self, t: int, dtype: torch.dtype | None = None) -> int:
        """Predicted activation bytes saved for backward at ``t`` rows (weight excluded)."""
        k = self.sketch_size(t)
        el = torch.empty((), dtype=dtype or self.weight.dtype).element_size()
        regen = self.estimator in DATA_INDEPENDENT or (self.estimator == "crs" and self.probs == "uniform")
        return k * self.in_features * el + (0 if regen else 8 * k)

    @layer_forward
    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
        if input.dim() < 1 or input.shape[-1] != self.in_features:
            raise ShapeError(f"RandomizedLinear expects inputs (..., {self.in_features}), got {tuple(input.shape)}")
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return nn.functional.linear(input, self.weight, self.bias)
        lead = input.shape[:-1]
        x2d = input.reshape(-1, self.in_features)
        if x2d.shape[0] == 0:
            return nn.functional.linear(input, self.weight, self.bias)
        if self.k is not None:
            check_k(self.k, int(x2d.shape[0]))
        if is_compiling():
            y = _op_forward(x2d, self.weight, self.bias, self._calls, self.estimator, self.ratio,
                            -1 if self.k is None else int(self.k), self.probs, self.replace, str(self.deterministic),
                            self.seed)[0]
            self._calls.add_(1)
        else:
            cfg = {"kind": self.estimator, "ratio": self.ratio, "k": self.k, "probs": self.probs,
                   "replace": self.replace, "deterministic": self.deterministic, "seed": self.seed}
            stream = self.calls
            self._calls.add_(1)
            y = _RandomizedLinearFn.apply(x2d, self.weight, self.bias, cfg, stream)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        size = f"k={self.k}" if self.k is not None else f"ratio={self.ratio:g}"
        extra = f", probs={self.probs!r}" if self.estimator in ("crs", "wta") else ""
        return f"{super().extra_repr()}, {size}, estimator={self.estimator!r}{extra}, seed={self.seed}"


@public
def randomize(
    model: nn.Module,
    ratio: float = 0.25,
    estimator: str = "crs",
    *,
    include=None,
    exclude=None,
    seed: int = 0,
    **options,
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`RandomizedLinear`.

    Parameters
    ----------
    model : nn.Module
    ratio : float
        ``k / t`` of every layer.
    estimator : str
        One of :data:`LAYER_ESTIMATORS`; ``options`` (``probs``, ``replace``, ``k``,
        ``deterministic``) go to the layer.
    include, exclude : callable(name) -> bool or iterable of substrings, optional
        Which layers to convert (qualified module names).
    seed : int
        Layer ``j`` (in ``named_modules`` order) gets seed ``seed + j``.

    Returns
    -------
    The same ``model`` (weights are shared, not copied).
    """

    def _match(spec, name):
        if spec is None:
            return None
        if callable(spec):
            return bool(spec(name))
        return any(s in name for s in ([spec] if isinstance(spec, str) else spec))

    targets = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear or (isinstance(mod, nn.Linear) and not isinstance(mod, RandomizedLinear) and type(mod).forward is nn.Linear.forward):
            if _match(include, name) is False or _match(exclude, name) is True:
                continue
            targets.append(name)
    for j, name in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        setattr(parent, child, RandomizedLinear.from_linear(old, ratio=ratio, estimator=estimator, seed=seed + j, **options))
    return model
