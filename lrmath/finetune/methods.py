"""The fine-tuning methods of the table, each a function that adapts a fresh encoder.

Every method gets a copy of the same pretrained encoder (a transformers ``BertModel``) and
a :class:`Classifier` (mean pooling over the attention mask, then a linear head; the head
is trainable in every method). Method names and what they train:

=====================  ===================================================================
``full``               every parameter (embeddings included)
``peft-lora-qv``       PEFT LoRA r=8, alpha=16, on ``query``/``value``
``peft-lora-all``      PEFT LoRA r=8 on every encoder linear (q, k, v, attention output, MLP)
``lrmath-lora-qv``     ``peft-lora-qv`` with :func:`lrmath.torch.convert_peft` (RunLoRA graphs)
``lotr-eq``            :func:`lrmath.torch.apply_lotr` on query/value (one shared A, B for the
                       12 equal-shape matrices), rank chosen by :func:`lotr_rank` to match
                       LoRA-qv's count: 53 on MiniLM (74,412 parameters vs 73,728)
``lotr-quarter``       the same at 1/4 of LoRA-qv's count: rank 19 (18,924 vs 18,432)
``sparsegrad``         :func:`lrmath.torch.sparsegrad_mlp` on the 12 MLP linears with
                       ``nnz = 8 (in + out)`` per matrix (density 2.6%) + PEFT LoRA r=8 on the
                       attention linears -- exactly the trainable count of ``peft-lora-all``
                       (the paper pairs SparseGrad on MLP with LoRA on attention at equal memory)
``meprop``             MeProp (Sun et al., 2017) on the MLP linears: the weight is trained from
                       the top-``k`` entries of each token's output gradient (k = 2.6% of the
                       outputs, the SparseGrad density) + the same LoRA on attention
``randbp-0.5`` ...     full fine-tuning with :func:`lrmath.torch.randomize` (CRS, ``k/t`` =
                       0.5, 0.25, 0.1) on every encoder linear
=====================  ===================================================================

LoRA dropout is 0 in every LoRA method so that ``peft-lora-qv`` and ``lrmath-lora-qv``
compute the same function from the same seed (the comparison the issue asks for).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from ..backend import public

__all__ = ["METHODS", "MethodSpec", "Classifier", "MePropLinear", "meprop_mlp", "build"]

_ATTN = r".*encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"
_ALL = r".*encoder\.layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense)|intermediate\.dense|output\.dense)"
_MLP_PATTERNS = ("*intermediate.dense", "*layer.*.output.dense")


@dataclass(frozen=True)
class MethodSpec:
    """``kind`` selects the builder; ``lrs`` is the 3-value learning-rate grid of the method."""

    kind: str
    lrs: tuple[float, float, float]
    options: dict = field(default_factory=dict)

    @property
    def default_lr(self) -> float:
        """The rate ``lrmath finetune`` uses without ``--lr``: the grid's largest, which the
        committed table chose by validation accuracy for every method on both tasks at 150 steps
        (``benchmarks/results/finetune_cpu.md``)."""
        return self.lrs[-1]


_FULL_LRS = (2e-5, 5e-5, 1e-4)
_ADAPTER_LRS = (5e-4, 1e-3, 2e-3)
METHODS: dict[str, MethodSpec] = {
    "full": MethodSpec("full", _FULL_LRS),
    "peft-lora-qv": MethodSpec("lora", _ADAPTER_LRS, {"target": r".*\.(query|value)", "r": 8}),
    "peft-lora-all": MethodSpec("lora", _ADAPTER_LRS, {"target": _ALL, "r": 8}),
    "lrmath-lora-qv": MethodSpec("lora", _ADAPTER_LRS, {"target": r".*\.(query|value)", "r": 8, "convert": True}),
    "lotr-eq": MethodSpec("lotr", (1e-3, 2e-3, 5e-3), {"share": 1.0}),
    "lotr-quarter": MethodSpec("lotr", (1e-3, 2e-3, 5e-3), {"share": 0.25}),
    "sparsegrad": MethodSpec("sparsegrad", (2e-4, 5e-4, 1e-3), {"r": 8, "nnz_per": "lora", "warmup_steps": 8}),
    "meprop": MethodSpec("meprop", (2e-5, 5e-5, 1e-4), {"r": 8, "density": 8 * (384 + 1536) / (384 * 1536)}),
    "randbp-0.5": MethodSpec("randbp", _FULL_LRS, {"ratio": 0.5}),
    "randbp-0.25": MethodSpec("randbp", _FULL_LRS, {"ratio": 0.25}),
    "randbp-0.1": MethodSpec("randbp", _FULL_LRS, {"ratio": 0.1}),
}


def _torch():
    import torch

    return torch


class _MePropFn:
    """Built lazily (torch is imported only when a model is built)."""

    fn = None

    @classmethod
    def get(cls):
        if cls.fn is None:
            torch = _torch()

            class Fn(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x, weight, bias, k):
                    ctx.save_for_backward(x, weight)
                    ctx.k = k
                    ctx.has_bias = bias is not None
                    return torch.nn.functional.linear(x, weight, bias)

                @staticmethod
                def backward(ctx, dy):
                    x, weight = ctx.saved_tensors
                    # keep the k largest |dy| of each row (token), zero the rest (Sun et al., 2017, eq. 3)
                    _, top = dy.abs().topk(ctx.k, dim=-1)
                    dys = torch.zeros_like(dy).scatter_(-1, top, dy.gather(-1, top))
                    gx = dys @ weight if ctx.needs_input_grad[0] else None
                    gw = dys.t() @ x if ctx.needs_input_grad[1] else None
                    gb = dys.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
                    return gx, gw, gb, None

            cls.fn = Fn
        return cls.fn


def _meprop_class():
    torch = _torch()

    class MePropLinear(torch.nn.Linear):
        """``nn.Linear`` whose backward uses only the top-``k`` entries of each row of ``dY``
        (MePropLinear(in, out, k=...)); forward is unchanged. Shapes: ``x (..., in)``."""

        def __init__(self, in_features, out_features, bias=True, *, k: int = 1, device=None, dtype=None):
            super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
            if not 1 <= int(k) <= out_features:
                raise ValueError(f"k must be in [1, {out_features}], got {k}")
            self.k = int(k)

        @classmethod
        def from_linear(cls, lin, k):
            new = cls(lin.in_features, lin.out_features, lin.bias is not None, k=k, device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight = lin.weight
            new.bias = lin.bias
            return new

        def forward(self, x):
            lead = x.shape[:-1]
            y = _MePropFn.get().apply(x.reshape(-1, self.in_features), self.weight, self.bias, self.k)
            return y.reshape(*lead, self.out_features)

        def extra_repr(self):
            return super().extra_repr() + f", k={self.k}"

    return public(MePropLinear)


_MEPROP_CLS = None


def __getattr__(name):
    global _MEPROP_CLS
    if name == "MePropLinear":
        if _MEPROP_CLS is None:
            _MEPROP_CLS = _meprop_class()
        return _MEPROP_CLS
    raise AttributeError(name)


@public
def meprop_mlp(model, density: float, patterns=_MLP_PATTERNS, exclude=("*attention*",)) -> list[str]:
    """Replace the MLP linears of ``model`` by MePropLinear with ``k = ceil(density * out)``; in place."""
    import fnmatch
    import math

    torch = _torch()
    cls = __getattr__("MePropLinear")
    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear
             and any(fnmatch.fnmatchcase(n, p) for p in patterns) and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    for n in names:
        parent_name, _, attr = n.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, attr)
        setattr(parent, attr, cls.from_linear(lin, max(1, math.ceil(density * lin.out_features))))
    return names


def _classifier_class():
    torch = _torch()

    class Classifier(torch.nn.Module):
        """``logits = head(mean_pool(encoder(ids, mask)))``; ``head`` is ``Linear(hidden, C)``."""

        def __init__(self, encoder, n_classes: int, seed: int = 0):
            super().__init__()
            self.encoder = encoder
            hidden = encoder.config.hidden_size
            g = torch.Generator().manual_seed(int(seed))
            self.head = torch.nn.Linear(hidden, n_classes)
            with torch.no_grad():  # seeded init, independent of the global RNG
                bound = 1.0 / np.sqrt(hidden)
                self.head.weight.copy_(torch.rand(n_classes, hidden, generator=g) * 2 * bound - bound)
                self.head.bias.zero_()

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))

    return Classifier


@public
def Classifier(encoder, n_classes: int, seed: int = 0):  # noqa: N802 - a class built lazily
    return _classifier_class()(encoder, n_classes, seed)


def lotr_rank(layers: int, n: int, m: int, target: float) -> int:
    """The LoTR rank ``r <= min(n, m)`` whose parameter count ``r (n + m) + layers r^2`` (one
    shared pair A, B and a core per layer) is closest to ``target``."""
    rs = np.arange(1, min(n, m) + 1)
    return int(rs[np.argmin(np.abs(rs * (n + m) + layers * rs**2 - target))])


def _peft(encoder, target: str, r: int):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=target, bias="none")
    return get_peft_model(encoder, cfg)


@public
def build(method: str, encoder, n_classes: int, *, seed: int = 0, warmup: Callable[[Any], Any] | None = None):
    """A :class:`Classifier` around ``encoder`` (modified in place) adapted for ``method``.

    ``warmup(model) -> loss`` is called by ``sparsegrad`` to collect warm-up gradients of the
    MLP linears (no update). Returns ``(model, info)`` with ``info`` a dict of settings.
    """
    torch = _torch()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    spec = METHODS[method]
    o = spec.options
    torch.manual_seed(seed)  # LoRA / LoTR initialisation
    info: dict[str, Any] = {}
    if spec.kind == "full":
        enc = encoder
        enc.requires_grad_(True)
    elif spec.kind == "randbp":
        from ..torch import randomize

        enc = randomize(encoder, ratio=o["ratio"], include=lambda n: n.startswith("encoder."), seed=seed)
        enc.requires_grad_(True)
        info["ratio"] = o["ratio"]
    elif spec.kind == "lora":
        enc = _peft(encoder, o["target"], o["r"])
        if o.get("convert"):
            from ..torch import convert_peft

            convert_peft(enc)
    elif spec.kind == "lotr":
        from ..torch import apply_lotr

        h, L = encoder.config.hidden_size, encoder.config.num_hidden_layers
        rank = lotr_rank(2 * L, h, h, o["share"] * 2 * L * 8 * 2 * h)
        apply_lotr(encoder, ["query", "value"], rank, seed=seed)
        enc = encoder
        info["rank"] = rank
    elif spec.kind in ("sparsegrad", "meprop"):
        if spec.kind == "sparsegrad":
            from ..torch import sparsegrad_mlp

            inter = encoder.config.intermediate_size
            hid = encoder.config.hidden_size
            density = o["r"] * (inter + hid) / (inter * hid)
            model_for_warm = Classifier(encoder, n_classes, seed)
            layers = sparsegrad_mlp(encoder, density=density, warmup=lambda _e: warmup(model_for_warm),
                                    steps=o["warmup_steps"], patterns=_MLP_PATTERNS)
            info.update(density=density, basis="learned", warmup_steps=o["warmup_steps"])
            trainable = [lay.delta for lay in layers.values()]
        else:
            density = o["density"]
            names = meprop_mlp(encoder, density)
            mods = dict(encoder.named_modules())
            trainable = [p for n in names for p in mods[n].parameters()]
            info["density"] = density
        enc = _peft(encoder, _ATTN, o["r"])  # freezes everything but LoRA
        for p in trainable:
            p.requires_grad_(True)
    else:  # pragma: no cover - METHODS is closed
        raise AssertionError(spec.kind)
    model = Classifier(enc, n_classes, seed)
    model.head.requires_grad_(True)
    return model, info


def fresh_encoder(base):
    """A deep copy of the base encoder (every run starts from the same weights)."""
    return copy.deepcopy(base)
