"""Torch executor for RunLoRA graphs with fused kernels (addmm with alpha/beta, in-place adds).

Kept apart from :mod:`lrmath.runlora.execute` so that importing lrmath never imports torch.
Arrays are in math layout (``X`` (t, m), ``W`` (m, n), ``A`` (m, r), ``B`` (r, n)); the
torch layer passes transposed *views* of PyTorch's (out, in) parameters, no copies.
"""

from __future__ import annotations

from collections import Counter

import torch
from ..backend import public

__all__ = ["TorchOps", "run_program", "live_steps"]


class TorchOps:
    """``mm``/``addmm`` with the LoRA scale as the GEMM's alpha; no extra passes."""

    def __init__(self, s: float, like: torch.Tensor):
        self.s = float(s)
        self._zero = torch.zeros(1, dtype=like.dtype, device=like.device)

    def mm(self, a, b, alpha):
        if alpha:  # beta = 0: the input is ignored, the scale rides in the GEMM epilogue
            return torch.addmm(self._zero, a, b, beta=0, alpha=self.s)
        return torch.mm(a, b)

    def addmm(self, c, a, b, alpha, inplace=False):
        al = self.s if alpha else 1
        if inplace:
            return c.addmm_(a, b, alpha=al)
        return torch.addmm(c, a, b, alpha=al)

    def scale(self, x):
        return x * self.s

    def add(self, x, y, inplace=False):
        return x.add_(y) if inplace else x + y

    def mask(self, x, k):
        return x * k

    def colsum(self, x):
        return x.sum(0)


@public
def live_steps(graph, outputs) -> list:
    """Steps needed for ``outputs`` (dead-code elimination, e.g. ``db`` for a frozen bias)."""
    need = {graph.outputs[o][0] for o in outputs}
    keep = []
    for st in reversed(graph.steps):
        if st.out in need:
            keep.append(st)
            need.update(a for a, _ in st.args)
    return keep[::-1]


def run_program(graph, env: dict, ops: TorchOps, outputs=None, keep_alive=()) -> dict:
    """Run ``graph`` on the tensors in ``env``; temporaries used once are updated in place."""
    outputs = list(graph.outputs) if outputs is None else list(outputs)
    steps = live_steps(graph, outputs)
    uses = Counter(a for st in steps for a, _ in st.args)
    for o in outputs:
        uses[graph.outputs[o][0]] += 1
    protected = set(keep_alive)

    def get(ref):
        x = env[ref[0]]
        return x.t() if ref[1] else x

    for st in steps:
        args = [get(a) for a in st.args]
        first = st.args[0][0]
        inplace = first.startswith("%") and uses[first] == 1 and first not in protected
        if st.op == "mm":
            env[st.out] = ops.mm(args[0], args[1], st.alpha)
        elif st.op == "addmm":
            c = args[0]
            inplace = inplace and c.dim() == 2
            env[st.out] = ops.addmm(c, args[1], args[2], st.alpha, inplace=inplace)
        elif st.op == "add":
            env[st.out] = ops.add(args[0], args[1], inplace=inplace and args[0].dim() == 2)
        else:
            env[st.out] = getattr(ops, st.op)(*args)
    return {o: get(graph.outputs[o]) for o in outputs}
